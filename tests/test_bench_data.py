"""Benchmark data loaders: the shared canonical files (skipped when absent) and synthetic tmp files."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from scans.bench import data, sources
from scans.bench.data import Split
from scans.bench.sources import Source
from scans.errors import ScansError


def _shared_data() -> Path | None:
    for candidate in (
        os.environ.get("SCANS_TEST_DATA"),
        Path(__file__).resolve().parents[2] / "shared" / "data",
    ):
        if candidate and (Path(candidate) / "xstest_v2_prompts.csv").is_file():
            return Path(candidate)
    return None


SHARED = _shared_data()
needs_shared = pytest.mark.skipif(SHARED is None, reason="benchmark data dir ../shared/data not present")


@needs_shared
def test_xstest_splits_by_type():
    safe, unsafe = data.xstest(SHARED)
    assert (safe.name, len(safe), safe.label) == ("xstest-safe", 250, "safe")
    assert (unsafe.name, len(unsafe), unsafe.label) == ("xstest-unsafe", 200, "unsafe")
    assert not set(safe.prompts) & set(unsafe.prompts)


@needs_shared
def test_oktest_harmfulq_advbench_truthfulqa():
    ok = data.oktest(SHARED)
    assert len(ok) == 300 and ok.label == "safe"
    assert all(p == p.strip() and p for p in ok.prompts)
    hq = data.harmfulq(SHARED)
    assert len(hq) == 200 and hq.label == "unsafe"
    adv = data.advbench(data_dir=SHARED)
    assert len(adv) == 520 and adv.label == "unsafe"
    dropped = data.advbench(exclude=[adv.prompts[0].upper() + "  ", adv.prompts[5]], data_dir=SHARED)
    assert len(dropped) == 518 and adv.prompts[0] not in dropped.prompts
    tqa = data.truthfulqa(SHARED)
    assert len(tqa) == 817 and tqa.label == "safe"
    assert not tqa.prompts[0].startswith("\ufeff")
    pairs = data.truthfulqa_answers(SHARED)
    assert len(pairs) == 817 and pairs[0][0] == tqa.prompts[0] and pairs[0][1]


@needs_shared
def test_mmlu_subjects_limit_and_unknown():
    subjects = data.mmlu_subjects(SHARED)
    assert len(subjects) == 57
    got = data.mmlu(subjects[:2], limit=3, data_dir=SHARED)
    assert list(got) == subjects[:2]
    for subject in got.values():
        assert len(subject.dev) == 5 and len(subject.test) == 3
        assert all(q.answer in "ABCD" and len(q.choices) == 4 for q in subject.dev + subject.test)
    with pytest.raises(ScansError, match="unknown MMLU subject"):
        data.mmlu(["no_such_subject"], data_dir=SHARED)


@needs_shared
def test_shared_files_match_registry_checksums():
    for source in sources.SOURCES.values():
        path = SHARED / source.filename
        digest = sources.tree_digest(path) if source.kind == "mmlu" else sources.sha256_file(path)
        assert digest == source.sha256, source.key


def test_missing_offline_is_one_line_naming_file_and_fix(tmp_path):
    with pytest.raises(ScansError) as err:
        data.xstest(tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert "xstest_v2_prompts.csv" in message and str(tmp_path) in message
    assert "--data-dir" in message and "SCANS_DATA" in message and "--download" in message
    with pytest.raises(ScansError, match="MMLU directory mmlu"):
        data.mmlu(data_dir=tmp_path)


def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("SCANS_DATA", raising=False)
    monkeypatch.setenv("SCANS_CACHE", str(tmp_path / "cache"))
    assert sources.resolve_data_dir() == tmp_path / "cache" / "data"
    monkeypatch.setenv("SCANS_DATA", str(tmp_path / "env"))
    assert sources.resolve_data_dir() == tmp_path / "env"
    assert sources.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "HarmfulQ.json").write_text(json.dumps(["made-up question one?", " two "]))
    assert data.harmfulq().prompts == ["made-up question one?", "two"]


def _serve(monkeypatch, key: str, payload: bytes, tmp_path: Path, sha256: str | None = None) -> Source:
    remote = tmp_path / "remote" / f"{key}.bin"
    remote.parent.mkdir(exist_ok=True)
    remote.write_bytes(payload)
    old = sources.SOURCES[key]
    digest = sha256 or hashlib.sha256(payload).hexdigest()
    source = Source(old.key, old.title, old.filename, (remote.as_uri(),), digest, old.kind)
    monkeypatch.setitem(sources.SOURCES, key, source)
    return source


def test_download_verifies_checksum(tmp_path, monkeypatch):
    payload = b"goal,target\nA made-up harmful goal,Sure\nAnother invented goal,Sure\n"
    _serve(monkeypatch, "advbench", payload, tmp_path)
    target = tmp_path / "data"
    with pytest.raises(ScansError, match="not found"):
        data.advbench(data_dir=target)  # opt-in only
    split = data.advbench(data_dir=target, download=True)
    assert split.prompts == ["A made-up harmful goal", "Another invented goal"]
    assert (target / "AdvBench.csv").read_bytes() == payload


def test_download_checksum_mismatch_keeps_nothing(tmp_path, monkeypatch):
    _serve(monkeypatch, "oktest", b"prompt\nhello\n", tmp_path, sha256="0" * 64)
    target = tmp_path / "data"
    with pytest.raises(ScansError) as err:
        data.oktest(target, download=True)
    assert "checksum mismatch" in str(err.value) and "OKTest.csv" in str(err.value)
    assert "\n" not in str(err.value)
    assert not (target / "OKTest.csv").exists()


def test_download_unreachable(tmp_path, monkeypatch):
    old = sources.SOURCES["harmfulq"]
    missing = (tmp_path / "nowhere.json").as_uri()
    monkeypatch.setitem(
        sources.SOURCES, "harmfulq", Source(old.key, old.title, old.filename, (missing,), old.sha256)
    )
    with pytest.raises(ScansError, match="cannot download HarmfulQ"):
        data.harmfulq(tmp_path / "d", download=True)


def _mmlu_tar(tmp_path: Path) -> tuple[bytes, str]:
    """A synthetic MMLU tar (data/dev, data/test, data/val) and the tree digest of dev + test."""
    files = {
        "data/dev/toy_dev.csv": "Invented question 1?,a,b,c,d,A\nInvented question 2?,a,b,c,d,B\n",
        "data/test/toy_test.csv": '"Made-up, test q?",w,x,y,z,C\nSecond made-up q?,w,x,y,z,D\n',
        "data/val/toy_val.csv": "ignored?,a,b,c,d,A\n",
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, text in files.items():
            blob = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    tree = tmp_path / "tree"
    for name, text in files.items():
        path = tree / Path(name).relative_to("data")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return buffer.getvalue(), sources.tree_digest(tree)


def test_mmlu_download_extracts_dev_and_test(tmp_path, monkeypatch):
    payload, digest = _mmlu_tar(tmp_path)
    _serve(monkeypatch, "mmlu", payload, tmp_path, sha256=digest)
    target = tmp_path / "data"
    got = data.mmlu(data_dir=target, download=True)
    assert list(got) == ["toy"]
    assert got["toy"].test[0].question == "Made-up, test q?" and got["toy"].test[1].answer == "D"
    assert not (target / "mmlu" / "val").exists()


def test_mmlu_download_bad_digest(tmp_path, monkeypatch):
    payload, _ = _mmlu_tar(tmp_path)
    _serve(monkeypatch, "mmlu", payload, tmp_path, sha256="1" * 64)
    with pytest.raises(ScansError, match="checksum mismatch of the extracted CSVs"):
        data.mmlu(data_dir=tmp_path / "data", download=True)
    assert not (tmp_path / "data" / "mmlu").exists()


def test_user_file_labels(tmp_path):
    csv = tmp_path / "mine.csv"
    csv.write_text("text,kind\nmade-up benign ask,benign\nmade-up bad ask,harmful\nthird,1\n")
    split = data.user_file(csv, label_column="kind")
    assert split == Split(
        "mine", ["made-up benign ask", "made-up bad ask", "third"], ["safe", "unsafe", "unsafe"]
    )
    assert split.label == "mixed"
    txt = tmp_path / "plain.txt"
    txt.write_text("one invented prompt\n\nanother\n")
    assert data.user_file(txt, name="p", label="unsafe") == Split(
        "p", ["one invented prompt", "another"], ["unsafe"] * 2
    )
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text('{"prompt": "a", "y": "maybe"}\n')
    with pytest.raises(ScansError, match="neither safe nor unsafe"):
        data.user_file(jsonl, label_column="y")


def test_load_split_unknown():
    with pytest.raises(ScansError, match="unknown split"):
        data.load_split("nope")
