"""``scans judge-eval``: the refusal judges against human-labelled completions (no model)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import ScansError


def add_judge_eval_parser(sub: argparse._SubParsersAction) -> None:
    """``scans judge-eval``."""
    jev = sub.add_parser(
        "judge-eval", help="measure the refusal judges against human-labelled completions (no model)"
    )
    jev.add_argument(
        "files",
        nargs="*",
        metavar="FILE",
        help="labelled CSV (prompt, completion, final_label); default: the XSTest labelled files "
        "xstest_labelled/xs_gpt4.csv and xs_mistralinstruct.csv in the data directory",
    )
    jev.add_argument(
        "--judge", default="all", help="judge name or comma list (default all: substring, xstest, rules)"
    )
    jev.add_argument(
        "--data-dir", default=None, help="benchmark data directory (default: $SCANS_DATA, else the cache)"
    )
    jev.add_argument(
        "--show-misses",
        type=int,
        default=0,
        metavar="N",
        help="also list the first N disagreements with the human labels per judge and file",
    )
    jev.add_argument("--json", action="store_true", help="one JSON object instead of tables")
    jev.add_argument(
        "--save",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="write the agreement (no texts) to PATH, default <scans cache>/judge_eval.json; "
        "scans report quotes it",
    )


def _clip(text: str, n: int = 240) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= n else flat[: n - 3] + "..."


def cmd_judge_eval(args: argparse.Namespace) -> int:
    from ..bench import judge_eval as E
    from ..bench.judges import JUDGES, get_judge

    if args.show_misses < 0:
        raise ScansError(f"--show-misses {args.show_misses}; fix: pass 0 or a positive number")
    names = (
        list(JUDGES)
        if args.judge.strip() == "all"
        else [n.strip() for n in args.judge.split(",") if n.strip()]
    )
    judges = [get_judge(name) for name in names]  # unknown names fail before any reading
    paths = args.files or E.default_labelled_files(args.data_dir)
    sets = [E.load_labelled(path) for path in paths]
    results = {j.name: E.evaluate_sets(j, sets) for j in judges}
    saved = None
    if args.save is not None:
        saved = E.save(results, sets, args.save or E.saved_path())
    if args.json:
        out: dict[str, Any] = {
            "files": [
                {"name": s.name, "path": str(s.path), "n": len(s), "labels": E.counts(s.items)} for s in sets
            ],
            "results": [e.summary() for evals in results.values() for e in evals],
        }
        if args.show_misses:
            out["misses"] = [
                {
                    "judge": name,
                    "file": m.file,
                    "id": m.id,
                    "type": m.type,
                    "human": m.gold,
                    "judge_label": m.predicted,
                    "binary": m.binary,
                }
                for name, evals in results.items()
                for e in evals
                if e.name != "all"
                for m in _first_misses(e.misses, args.show_misses)
            ]
        if saved is not None:
            out["saved"] = str(saved)
        print(json.dumps(out))
        return 0
    for s in sets:
        c = E.counts(s.items)
        print(f"{s.name}: {len(s)} completions ({', '.join(f'{k} {v}' for k, v in c.items())}), {s.path}")
    print(f"\n{'judge':<11}{'file':<24}{'n':>5}{'binary':>9}{'kappa':>8}{'3-class':>9}")
    for name, evals in results.items():
        for e in evals:
            three = e.three_percent
            print(
                f"{name:<11}{e.name:<24}{e.n:>5}{e.binary_percent:>8.1f}%{e.kappa:>8.3f}"
                f"{'-' if three is None else f'{three:.1f}%':>9}"
            )
    print("\nbinary: refusal = full or partial refusal; 3-class: judges with three-way labels only")
    for name, evals in results.items():
        e = evals[-1]
        columns = [p for p in dict.fromkeys(p for row in e.confusion.values() for p in row)]
        columns = sorted(
            columns,
            key=lambda p: (
                p not in E.XSTEST_LABELS,
                E.XSTEST_LABELS.index(p) if p in E.XSTEST_LABELS else 0,
                p,
            ),
        )
        print(f"\nconfusion of {name} ({e.name}): rows human label, columns judge label")
        print(f"{'':<17}" + "".join(f"{p:>17}" for p in columns))
        for g, row in e.confusion.items():
            print(f"{g:<17}" + "".join(f"{row.get(p, 0):>17}" for p in columns))
    if args.show_misses:
        for name, evals in results.items():
            for e in evals:
                if e.name == "all":
                    continue
                shown = _first_misses(e.misses, args.show_misses)
                print(
                    f"\n{name} on {e.name}: {len(e.misses)} disagreements "
                    f"({sum(m.binary for m in e.misses)} binary), {len(shown)} shown"
                )
                for m in shown:
                    print(
                        f"- [{m.id} {m.type}] human {m.gold}, judge {m.predicted}{' (binary)' if m.binary else ''}"
                    )
                    print(f"  prompt: {_clip(m.prompt, 120)}\n  answer: {_clip(m.completion)}")
    if saved is not None:
        print(f"\nsaved: {saved}")
    return 0


def _first_misses(misses: list[Any], n: int) -> list[Any]:
    """The first ``n`` disagreements, binary ones (refusal verdict differs) first."""
    return sorted(misses, key=lambda m: not m.binary)[:n]
