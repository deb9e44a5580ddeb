"""Reports from a synthetic run directory: Markdown, HTML, partial runs, the CLI, headless Chromium."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from scans.bench import metrics as M
from scans.bench import report as R
from scans.bench.judges import SubstringJudge, XSTestJudge
from scans.cli import main
from scans.errors import ScansError

REFUSE = "I'm sorry, but I can't help with that."
PARTIAL = "I can't help with that. However, I can suggest a safer way to think about it."
COMPLY = "Sure, here is an invented answer with three short steps.\n1. First.\n2. Second."
SPLITS = {
    "xstest-safe": (20, "safe"),
    "xstest-unsafe": (16, "unsafe"),
    "oktest": (12, "safe"),
    "harmfulq": (10, "unsafe"),
}
METHODS = ["original", "scans", "always-away"]
# refusal probability per (method, label)
P_REFUSE = {
    ("original", "safe"): 0.5,
    ("original", "unsafe"): 0.85,
    ("scans", "safe"): 0.15,
    ("scans", "unsafe"): 0.8,
    ("always-away", "safe"): 0.05,
    ("always-away", "unsafe"): 0.2,
}
THRESHOLD = 0.25


def _record(method: str, split: str, i: int, label: str, rng: random.Random) -> dict:
    prompt = f"synthetic {label} prompt {i} of {split}"
    if i == 0 and split == "xstest-safe":
        prompt = "<script>alert('x')</script> & a made-up question?"
    roll = rng.random()
    p = P_REFUSE[(method, label)]
    response = REFUSE if roll < p * 0.8 else PARTIAL if roll < p else COMPLY
    if prompt.startswith("<script>"):  # a disagreement shown among the examples, with markup to escape
        response = REFUSE if method == "original" else "<b>Sure</b>: an invented answer."
    score = rng.gauss(1.0 if label == "unsafe" else -0.6, 0.6)
    uses_score = method == "scans"
    return {
        "method": method,
        "split": split,
        "id": i,
        "prompt": prompt,
        "label": label,
        "response": response,
        "judges": {
            "substring": SubstringJudge().judge(prompt, response),
            "xstest": XSTestJudge().judge(prompt, response),
        },
        "score": score if uses_score else None,
        "flagged": (score >= THRESHOLD) if uses_score else None,
        "sign": (0 if score >= THRESHOLD else -1) if uses_score else None,
        "new_tokens": rng.randint(10, 64),
        "seconds": 0.05,
        "max_new_tokens": 64,
    }


def make_run(path: Path, full: bool = True) -> Path:
    """A realistic run directory; ``full=False``: meta and a few generations only."""
    rng = random.Random(0)
    path.mkdir(parents=True, exist_ok=True)
    meta = {
        "model": "tiny-test-model",
        "fingerprint": "abc123",
        "scans_version": "0.1.0",
        "max_new_tokens": 64,
        "batch_size": 8,
        "methods": METHODS + ["ablate"],
        "command": "scans bench --out run",
        "started": "2026-01-01T00:00:00",
        "threshold": THRESHOLD,
        "splits": {name: {"n": n, "label": label} for name, (n, label) in SPLITS.items()},
    }
    (path / "meta.json").write_text(json.dumps(meta))
    lines = []
    for method in METHODS if full else ["original"]:
        for split, (n, label) in SPLITS.items():
            if method == "always-away" and split == "harmfulq":
                continue  # missing cell
            if method == "scans" and split == "oktest":
                n = 8  # partial cell
            if not full:
                n = 3
            lines += [json.dumps(_record(method, split, i, label, rng)) for i in range(n)]
    if full:
        dup = _record("original", "xstest-safe", 1, "safe", rng)
        dup["response"] = "Replaced answer: a duplicate key keeps the last line."
        dup["judges"] = {"substring": "compliance", "xstest": "full_compliance"}
        lines.append(json.dumps(dup))
        lines.append('{"method": "scans", "split": "oktest", "id": 9, "pro')  # killed mid-write
    (path / "generations.jsonl").write_text("\n".join(lines) + "\n")
    if not full:
        return path
    layers = list(range(12))
    tokens = [" sorry", " cannot", " illegal", " Sure", " Title", " impossible"]
    values = [[rng.random() * (1 + (4 <= layer <= 7)) for _ in tokens] for layer in layers]
    (path / "lens.json").write_text(
        json.dumps(
            {"layers": layers, "tokens": tokens, "values": values, "band": [4, 7], "metric": "probability"}
        )
    )
    capability = {
        "mmlu": {
            m: {"accuracy": acc, "n": 570, "per_subject": {"toy": {"accuracy": acc, "n": 10}}}
            for m, acc in (("original", 0.45), ("scans", 0.44))
        },
        "perplexity": {
            "original": {"ppl": 12.5, "n_tokens": 4000, "n_texts": 200},
            "scans": {"ppl": 12.9, "n_tokens": 4000, "n_texts": 200},
        },
    }
    (path / "capability.json").write_text(json.dumps(capability))
    (path / "timings.json").write_text(json.dumps({m: {"seconds": 12.0, "rows": 50} for m in METHODS}))
    (path / "profile").mkdir()
    profile = {
        "threshold": THRESHOLD,
        "steer_layers": [4, 5, 6, 7],
        "calibration": {"auprc": 0.9},
        "layer_evidence": [
            {
                "layer": layer,
                "lens_score": rng.random(),
                "top_tokens": tokens[:3],
                "norm": 5.0,
                "band_effect": None,
            }
            for layer in layers
        ],
        "extra": {
            "heldout_scores": {
                "harmful": [rng.gauss(1, 0.5) for _ in range(8)],
                "harmless": [rng.gauss(-1, 0.5) for _ in range(4)],
                "borderline": [rng.gauss(-0.3, 0.5) for _ in range(4)],
            }
        },
    }
    (path / "profile" / "profile.json").write_text(json.dumps(profile))
    return path


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return make_run(tmp_path / "run")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Path, Path, Path]:
    """The full synthetic run rendered once: (output dir, report.md, report.html)."""
    root = tmp_path_factory.mktemp("rendered")
    md, page = R.write_report(make_run(root / "run"), out=root / "out")
    return root / "out", md, page


CHARTS = ("refusal-bars", "lens-heatmap", "score-hist", "pr-curve")
CELL = re.compile(r"\d+\.\d% \[\d+\.\d, \d+\.\d\]")


def test_read_generations_skips_truncated_line_and_keeps_last(run_dir):
    records, notes = R.read_generations(run_dir / "generations.jsonl")
    assert any("truncated last line" in n for n in notes)
    keyed = {(r["method"], r["split"], r["id"]): r for r in records}
    assert len(keyed) == len(records)
    assert keyed[("original", "xstest-safe", 1)]["response"].startswith("Replaced answer")


def test_refusal_rates_and_recomputed_judge(run_dir):
    records, _ = R.read_generations(run_dir / "generations.jsonl")
    rates = M.refusal_rates(records)
    assert rates[("scans", "oktest")].n == 8 and ("always-away", "harmfulq") not in rates
    r = rates[("original", "xstest-safe")]
    assert r.n == 20 and r.lo <= r.rate <= r.hi
    for record in records:
        record["judges"].pop("xstest")
    assert M.refusal_rates(records, judge="xstest")[("original", "xstest-safe")].n == 20


def test_report_markdown_and_html(rendered):
    out, md_path, html_path = rendered
    md = md_path.read_text()
    page = html_path.read_text()
    assert len(CELL.findall(md)) >= 10
    assert "(8/12 done)" in md
    assert "no generations for method always-away on harmfulq" in md
    assert "no generations for method ablate" in md  # declared in meta, never ran
    assert "truncated last line" in md
    for name in CHARTS:
        assert f'data-chart="{name}"' in page and f'id="chart-{name}"' in page
        assert (out / "charts" / f"{name}.png").stat().st_size > 1000
        assert f"charts/{name}.png" in md
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<b>Sure</b>" not in page and "&lt;b&gt;Sure&lt;/b&gt;" in page
    assert "<script>" not in md
    assert "http://" not in page and "https://" not in page  # self-contained
    assert "MMLU accuracy" in page and "12.900" in page and "+3.2%" in page
    assert "Judge agreement" in page and "substring vs xstest" in page
    assert "Examples where methods disagree" in page
    assert "tiny-test-model" in page


def test_report_partial_run_lists_missing(tmp_path):
    run = make_run(tmp_path / "partial", full=False)
    md_path, html_path = R.write_report(run)
    md = md_path.read_text()
    assert md_path.parent == run
    for needle in ("capability.json is missing", "No lens.json and no profile", "classifier scores"):
        assert needle in md
    assert 'data-chart="refusal-bars"' in html_path.read_text()


def test_report_without_meta_and_with_xstest_judge(run_dir, tmp_path):
    (run_dir / "meta.json").unlink()
    (run_dir / "lens.json").unlink()
    md_path, html_path = R.write_report(run_dir, out=tmp_path / "o", judge="xstest")
    md = md_path.read_text()
    assert "meta.json missing" in md and "lens.json (per-token heat map)" in md
    assert 'data-chart="lens-heatmap"' in html_path.read_text()  # profile fallback


def test_not_a_run_dir(tmp_path):
    with pytest.raises(ScansError, match="does not exist"):
        R.load_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScansError, match="not a scans run directory"):
        R.load_run(tmp_path / "empty")


def test_cli_report(run_dir, tmp_path, capsys):
    assert main(["report", str(run_dir), "--out", str(tmp_path / "cli")]) == 0
    assert "report.html" in capsys.readouterr().out
    assert main(["report", str(run_dir), "--judge", "gpt"]) == 2
    assert "scans: error: unknown judge" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "scans: error:" in capsys.readouterr().err


def _chromium() -> str | None:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_html_renders_in_headless_chromium(rendered, tmp_path):
    from PIL import Image, ImageStat

    page = rendered[2]
    shot = tmp_path / "shot.png"
    base = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--window-size=1200,3000",
    ]
    url = page.resolve().as_uri()
    run = subprocess.run(
        [*base, f"--user-data-dir={tmp_path / 'profile-a'}", f"--screenshot={shot}", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.is_file(), run.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == (1200, 3000)
        stat = ImageStat.Stat(image.convert("L"))
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert stat.stddev[0] > 10, "screenshot is blank"
    assert colours is None or len(colours) > 50, "screenshot has almost no content"
    dom = subprocess.run(
        [*base, f"--user-data-dir={tmp_path / 'profile-b'}", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    for name in CHARTS:
        assert re.search(rf'<img[^>]*data-chart="{name}"[^>]*src="data:image/png;base64,', dom), name
    assert "Refusal rates" in dom


def test_malformed_optional_files_do_not_sink_the_report(run_dir, tmp_path):
    (run_dir / "capability.json").write_text(json.dumps({"mmlu": [1, 2], "perplexity": "x"}))
    (run_dir / "lens.json").write_text("{not json")
    md = R.write_report(run_dir, out=tmp_path / "m")[0].read_text()
    assert "section capability failed" in md and "lens.json: unreadable" in md
    assert "Refusal rates" in md and "Examples where methods disagree" in md


def test_anchor_scores_are_named_by_how_they_were_calibrated(run_dir, tmp_path):
    md = R.write_report(run_dir, out=tmp_path / "held")[0].read_text()
    assert "held-out anchors (profile)" in md
    path = run_dir / "profile" / "profile.json"
    profile = json.loads(path.read_text())
    profile["extra"]["calibration_mode"] = "crossfit"
    path.write_text(json.dumps(profile))
    md = R.write_report(run_dir, out=tmp_path / "cross")[0].read_text()
    assert "anchors, out-of-fold (profile)" in md and "held-out anchors (profile)" not in md


def test_unlocked_section_counts_and_lists_every_unlocked_prompt(tmp_path):
    from scans.bench.judges import refused

    data = R.load_run(make_run(tmp_path / "run"))
    [section] = [s for s in R.Report(data, judge="substring").sections if s.anchor == "unlocked"]
    by: dict = {}
    for r in data.records:
        by.setdefault((r["split"], r["id"]), {})[r["method"]] = r
    expected = sorted(
        (m, key[0], per[m]["prompt"])
        for key, per in by.items()
        for m in ("scans", "always-away")
        if m in per
        and "original" in per
        and per["original"]["label"] == "unsafe"
        and refused(per["original"]["judges"]["substring"])
        and not refused(per[m]["judges"]["substring"])
    )
    assert expected  # the synthetic run unlocks some prompts (always-away answers most)
    listed = section.blocks[2].rows
    assert sorted((row[0], row[1], row[4]) for row in listed) == expected
    for row in section.blocks[1].rows:
        for split, cell in zip(["harmfulq", "xstest-unsafe"], row[1:]):
            assert cell.startswith(f"{sum(1 for e in expected if e[0] == row[0] and e[1] == split)} of ")
