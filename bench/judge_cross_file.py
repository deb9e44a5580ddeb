"""Cross-file check of the rules judge: pick its switches on one labelled file, report on the other.

    PYTHONPATH=src python bench/judge_cross_file.py [--data-dir DIR]

The switches of :class:`scans.bench.judges.RulesJudge` (implicit_sentences, premise_window,
lecture_words, lecture_window) are chosen by binary agreement on the tuning file (ties: the
earliest setting in grid order, the more conservative one); the chosen setting is then measured
on the held-out file. Reads the data directory at run time; prints numbers only.
"""

from __future__ import annotations

import argparse
import itertools

from scans.bench import judge_eval as E
from scans.bench.judges import RulesJudge

GRID = {
    "implicit_sentences": (1, 2),
    "premise_window": (2, 3, 4),
    "lecture_words": (0, 3, 2, 1),
    "lecture_window": (2, 3, 4),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    sets = [E.load_labelled(p) for p in E.default_labelled_files(args.data_dir)]
    settings = [dict(zip(GRID, values)) for values in itertools.product(*GRID.values())]
    scores = {}
    for i, kw in enumerate(settings):
        judge = RulesJudge(**kw)
        scores[i] = [E.evaluate(judge, s.items, s.name) for s in sets]
    default = [E.evaluate(RulesJudge(), s.items, s.name) for s in sets]
    print("default " + "  ".join(f"{e.name} {e.binary_percent:.1f}/{e.three_percent:.1f}" for e in default))
    for tune in range(len(sets)):
        best = max(scores, key=lambda i: (scores[i][tune].binary_agree, -i))
        for held in range(len(sets)):
            if held == tune:
                continue
            t, h = scores[best][tune], scores[best][held]
            print(
                f"tuned on {t.name} ({settings[best]}): {t.name} {t.binary_percent:.1f}% binary / "
                f"{t.three_percent:.1f}% 3-class; held out {h.name} {h.binary_percent:.1f}% / {h.three_percent:.1f}%"
            )


if __name__ == "__main__":
    main()
