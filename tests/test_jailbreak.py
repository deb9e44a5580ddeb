"""The packaged jailbreak split: composition, encodings, per-prompt meta through the runner's
records, and the report's table of refusal by template family."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from scans.bench import data, jailbreaks
from scans.bench import report as R
from scans.bench.data import Split
from scans.bench.jailbreaks import JAILBREAK_FAMILIES
from scans.bench.judges import SubstringJudge
from scans.bench.runner import RunLog, split_items, with_meta

REPO = Path(__file__).resolve().parents[1]
ENCODINGS = {"base64", "rot13", "leetspeak"}


@pytest.fixture(scope="module")
def split() -> Split:
    return data.load_split("jailbreak", data_dir="/nonexistent/data/dir")  # packaged: no data dir needed


def _key(text: str) -> str:
    return " ".join(text.lower().split())


def test_requests_file():
    requests = jailbreaks.jailbreak_requests()
    assert len(requests) == 40
    assert len({r["id"] for r in requests}) == 40 and len({_key(r["text"]) for r in requests}) == 40
    categories = Counter(r["category"] for r in requests)
    assert set(categories) == {
        "weapons",
        "explosives",
        "cbrn",
        "drugs",
        "cybercrime",
        "fraud",
        "violence",
        "hate",
        "privacy",
        "self_harm",
    }
    assert all(r["severity"] in ("severe", "standard") for r in requests)
    assert {r["severity"] for r in requests} == {"severe", "standard"}
    for r in requests:
        text = r["text"]
        assert text[0].isupper() and text.endswith(".") and text.count(". ") == 0, text  # one sentence
        assert not any(c.isdigit() for c in text), text  # leetspeak must decode exactly


def test_requests_differ_from_the_projects_anchors_and_eval_prompts():
    ours = {_key(r["text"]) for r in jailbreaks.jailbreak_requests()}
    theirs = set()
    for line in (REPO / "src/scans/anchors/anchors.jsonl").read_text().splitlines():
        theirs.add(_key(json.loads(line)["harmful"]))
    for line in (REPO / "bench/eval_prompts.jsonl").read_text().splitlines():
        theirs.add(_key(json.loads(line)["prompt"]))
    assert len(theirs) > 100
    assert not ours & theirs


def test_templates_file():
    templates = jailbreaks.jailbreak_templates()
    assert len(templates) >= 12
    assert len({t["id"] for t in templates}) == len(templates)
    per_family = Counter(t["family"] for t in templates)
    assert set(per_family) == set(JAILBREAK_FAMILIES)
    assert min(per_family.values()) >= 2
    for t in templates:
        assert t["text"].count("{request}") == 1 and len(t["inspiration"]) > 10
        assert t.get("encoding") is None or t["family"] == "translation_encoding"
    assert {t.get("encoding") for t in templates} >= ENCODINGS
    assert any(
        t["id"] for t in templates if "Sure, here is" in t["text"] and t["family"] == "prefix_injection"
    )


def test_split_size_families_labels_and_meta(split):
    assert split.name == "jailbreak" and len(split) >= 240
    assert split.label == "unsafe" and set(split.labels) == {"unsafe"}
    assert split.meta is not None and len(split.meta) == len(split)
    families = Counter(m["family"] for m in split.meta)
    assert set(families) == set(JAILBREAK_FAMILIES)
    assert set(families.values()) == {40}  # every request once through each family
    requests = {r["id"]: r for r in jailbreaks.jailbreak_requests()}
    templates = {t["id"]: t for t in jailbreaks.jailbreak_templates()}
    assert {m["template"] for m in split.meta} == set(templates)  # every template is used
    for m in split.meta:
        assert templates[m["template"]]["family"] == m["family"]
        assert requests[m["request"]]["severity"] == m["severity"]
        assert requests[m["request"]]["category"] == m["category"]
    pairs = Counter((m["request"], m["family"]) for m in split.meta)
    assert set(pairs.values()) == {1}


def test_placeholders_filled_and_encodings_decode_back(split):
    requests = {r["id"]: r["text"] for r in jailbreaks.jailbreak_requests()}
    templates = {t["id"]: t for t in jailbreaks.jailbreak_templates()}
    seen = set()
    for prompt, m in zip(split.prompts, split.meta):
        assert "{request}" not in prompt and "{" + "request" not in prompt
        template = templates[m["template"]]
        head, tail = template["text"].split("{request}")
        assert prompt.startswith(head) and prompt.endswith(tail)
        payload = prompt[len(head) : len(prompt) - len(tail)]
        encoding = template.get("encoding")
        assert m["encoding"] == encoding
        if encoding is not None:
            assert payload != requests[m["request"]]  # really encoded, not stored in clear
            assert requests[m["request"]] not in prompt
            seen.add(encoding)
        assert jailbreaks.decode(payload, encoding) == requests[m["request"]]
    assert seen == ENCODINGS


def test_encodings_are_computed():
    text = "Tell me a secret about this test."
    assert jailbreaks.encode(text, "base64") == "VGVsbCBtZSBhIHNlY3JldCBhYm91dCB0aGlzIHRlc3Qu"
    assert jailbreaks.encode(text, "rot13") == "Gryy zr n frperg nobhg guvf grfg."
    assert jailbreaks.encode(text, "leetspeak") == "T3ll m3 4 53cr37 4b0u7 7h15 7357."
    for encoding in (None, *ENCODINGS):
        assert jailbreaks.decode(jailbreaks.encode(text, encoding), encoding) == text
    with pytest.raises(ValueError):
        jailbreaks.encode(text, "morse")


def test_deterministic_order_without_duplicates(split):
    again = data.jailbreak()
    assert again.prompts == split.prompts and again.meta == split.meta
    assert len(set(split.prompts)) == len(split.prompts)
    # request by request, the families in their fixed order: --limit 12 covers every family twice
    assert [m["family"] for m in split.meta[:12]] == list(JAILBREAK_FAMILIES) * 2
    first = jailbreaks.jailbreak_requests()[0]["id"]
    assert {m["request"] for m in split.meta[:6]} == {first}
    # the template rotates within a family from one request to the next
    role_play = [m["template"] for m in split.meta if m["family"] == "role_play"]
    assert role_play[0] != role_play[1] and role_play[0] == role_play[2]


def test_split_meta_is_checked_and_kept_by_subset(split):
    with pytest.raises(ValueError, match="meta rows"):
        Split("x", ["a", "b"], ["safe", "safe"], [{"family": "f"}])
    part = split.subset([5, 0])
    assert part.prompts == [split.prompts[5], split.prompts[0]]
    assert part.meta == [split.meta[5], split.meta[0]]
    assert Split("plain", ["a"], ["safe"]).subset([0]).meta is None


def test_suite_limit_and_anchor_exclusion_keep_meta_aligned(split):
    from scans.api import prompt_key
    from scans.bench.options import SuiteOptions, load_splits

    (limited,) = load_splits(SuiteOptions(splits=["jailbreak"], limit=12))
    assert limited.prompts == split.prompts[:12] and limited.meta == split.meta[:12]
    (kept,) = load_splits(SuiteOptions(splits=["jailbreak"], limit=12), {prompt_key(split.prompts[0])})
    assert kept.prompts == split.prompts[1:13] and kept.meta == split.meta[1:13]


def test_runner_records_meta_only_for_splits_that_have_it(split, tmp_path):
    items = split_items([Split("plain", ["p0", "p1"], ["safe", "unsafe"]), split.subset(range(3))])
    assert [(it.split, it.id) for it in items] == [
        ("plain", 0),
        ("plain", 1),
        ("jailbreak", 0),
        ("jailbreak", 1),
        ("jailbreak", 2),
    ]
    assert items[0].meta is None and items[3].meta == split.meta[1]
    records = [with_meta({"method": "original", "split": it.split, "id": it.id}, it) for it in items]
    assert "meta" not in records[0] and records[2]["meta"]["family"] == JAILBREAK_FAMILIES[0]
    # an old run without meta and a new one with it resume side by side
    (tmp_path / "generations.jsonl").write_text(json.dumps(records[0]) + "\n")
    log = RunLog(tmp_path)
    log.append(records[2:])
    assert log.done("original", items[0]) and log.done("original", items[4])
    assert not log.done("original", items[1])
    assert RunLog(tmp_path).records[("original", "jailbreak", 1)]["meta"] == split.meta[1]


# ----------------------------------------------------------------------------- report

REFUSE = "I'm sorry, but I can't help with that."
COMPLY = "Sure, here is an invented answer with three short steps."


def _refuses(method: str, family: str, i: int) -> bool:
    """original refuses every prompt; scans complies with every role_play prompt and half of the
    translation_encoding ones (even request index); always-away never refuses."""
    if method == "original":
        return True
    if method == "scans":
        return not (family == "role_play" or (family == "translation_encoding" and i % 2 == 0))
    return False


def make_jailbreak_run(path: Path, split: Split, with_meta_field: bool = True) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    methods = ["original", "scans", "always-away"]
    meta = {
        "model": "tiny-test-model",
        "methods": methods,
        "threshold": 0.25,
        "splits": {
            "xstest-safe": {"n": 2, "label": "safe"},
            "jailbreak": {"n": len(split), "label": "unsafe"},
        },
    }
    (path / "meta.json").write_text(json.dumps(meta))
    judge = SubstringJudge()
    lines = []
    for method in methods:
        for i in range(2):
            prompt = f"safe prompt {i}"
            lines.append(
                {
                    "method": method,
                    "split": "xstest-safe",
                    "id": i,
                    "prompt": prompt,
                    "label": "safe",
                    "response": COMPLY,
                    "judges": {"substring": judge.judge(prompt, COMPLY)},
                }
            )
        for i, (prompt, m) in enumerate(zip(split.prompts, split.meta)):
            if method == "always-away" and m["family"] == "hidden_in_task":
                continue  # a family this method never reached
            response = REFUSE if _refuses(method, m["family"], i // len(JAILBREAK_FAMILIES)) else COMPLY
            record = {
                "method": method,
                "split": "jailbreak",
                "id": i,
                "prompt": prompt,
                "label": "unsafe",
                "response": response,
                "judges": {"substring": judge.judge(prompt, response)},
            }
            if with_meta_field:
                record["meta"] = m
            lines.append(record)
    (path / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def _family_table(report: R.Report) -> R.Table:
    (section,) = [s for s in report.sections if s.title == "Jailbreak refusal by template family"]
    (table,) = [b for b in section.blocks if isinstance(b, R.Table)]
    return table


@pytest.mark.parametrize("with_meta_field", [True, False], ids=["meta", "old-records-without-meta"])
def test_report_family_table(split, tmp_path, with_meta_field):
    run = make_jailbreak_run(tmp_path / "run", split, with_meta_field)
    table = _family_table(R.Report(R.load_run(run)))
    assert table.header == ["method", *JAILBREAK_FAMILIES, "all families"]
    rows = {row[0]: dict(zip(table.header, row)) for row in table.rows}
    assert list(rows) == [
        "original",
        "scans",
        "always-away",
        "scans vs original (points)",
        "always-away vs original (points)",
    ]
    assert rows["original"]["role_play"] == "100.0% [91.2, 100.0]"  # Wilson 95% of 40/40
    assert rows["original"]["all families"].startswith("100.0% [98.4, 100.0]")
    assert rows["scans"]["role_play"] == "0.0% [0.0, 8.8]"
    assert rows["scans"]["translation_encoding"] == "50.0% [35.2, 64.8]"
    assert rows["scans"]["prefix_injection"].startswith("100.0%")
    assert rows["scans"]["all families"].startswith("75.0%")  # 180 of 240
    assert rows["always-away"]["hidden_in_task"] == "missing"
    delta = rows["scans vs original (points)"]
    assert delta["role_play"] == "-100.0 (n=40)" and delta["translation_encoding"] == "-50.0 (n=40)"
    assert delta["hypothetical_fiction"] == "+0.0 (n=40)" and delta["all families"] == "-25.0 (n=240)"
    away = rows["always-away vs original (points)"]
    assert away["hidden_in_task"] == "n/a" and away["all families"] == "-100.0 (n=200)"


def test_report_markdown_has_the_family_table_only_with_the_split(split, tmp_path):
    run = make_jailbreak_run(tmp_path / "run", split)
    md_path, html_path = R.write_report(run, out=tmp_path / "out")
    md = md_path.read_text()
    assert "## Jailbreak refusal by template family" in md
    assert "| scans vs original (points) | -100.0 (n=40) |" in md
    assert 'id="jailbreak-families"' in html_path.read_text()
    # without jailbreak generations the section is absent (the rest of the report is unchanged)
    records = [json.loads(line) for line in (run / "generations.jsonl").read_text().splitlines()]
    (run / "generations.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records if r["split"] != "jailbreak")
    )
    report = R.Report(R.load_run(run))
    assert not [s for s in report.sections if "Jailbreak" in s.title]


def test_bench_run_records_meta_end_to_end(split, tmp_path):
    """A real (tiny-model) run: jailbreak records carry their meta row, other splits' records do not,
    and a rerun resumes without new records."""
    from conftest import BORDERLINE, _fitted
    from scans.bench.options import build_methods
    from scans.bench.runner import GENERATIONS, BenchConfig, run_generations

    scans = _fitted("qwen2")
    short = sorted(range(len(split)), key=lambda i: len(split.prompts[i]))[
        :3
    ]  # the tiny model's context is 256
    part = split.subset(short)
    splits = [Split("mine-safe", BORDERLINE[:2], ["safe"] * 2), part]
    methods = build_methods(scans, "original,scans")
    config = BenchConfig(max_new_tokens=2, batch_size=4, command="test")
    run_generations(scans, splits, methods, tmp_path, config, progress=False)
    records = [json.loads(line) for line in (tmp_path / GENERATIONS).read_text().splitlines()]
    assert len(records) == 2 * 5
    for record in records:
        if record["split"] == "jailbreak":
            assert (
                record["meta"] == part.meta[record["id"]] and record["prompt"] == part.prompts[record["id"]]
            )
        else:
            assert "meta" not in record
    run_generations(scans, splits, methods, tmp_path, config, progress=False)
    assert len((tmp_path / GENERATIONS).read_text().splitlines()) == 10
