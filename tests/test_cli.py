"""The command line: one-line errors with exit status 2, and the happy paths' output."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import scans.cli as cli
from conftest import _fitted, _tiny, make_scans
from scans.errors import ScansError


@pytest.fixture
def loader(monkeypatch):
    """Replace the model loader with a Scans on the tiny model (fitted profile attached)."""
    fitted = _fitted("qwen2")
    calls = []

    def fake_load(args, need_profile=True):
        calls.append((args.command, need_profile))
        t = _tiny("qwen2")
        scans = make_scans(t.model, t.tokenizer)
        if need_profile:
            scans.profile = dataclasses.replace(fitted.profile, threshold=0.0)
        return scans

    monkeypatch.setattr(cli.common, "load_scans", fake_load)
    return calls


def _error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("scans: error:"), lines[0]
    assert "fix:" in lines[0]
    return lines[0]


def test_parse_layers():
    assert cli.parse_layers("10-12,15") == [10, 11, 12, 15]
    assert cli.parse_layers("3") == [3]
    assert cli.parse_layers("5,1,3-4,4") == [1, 3, 4, 5]
    assert cli.parse_layers(None) is None
    assert cli.parse_layers("") is None


@pytest.mark.parametrize("text", ["3-x", "a", "1,,2", "1-2-3", "12-10"])
def test_parse_layers_errors(text):
    with pytest.raises(ScansError) as info:
        cli.parse_layers(text)
    message = str(info.value)
    assert "--layers" in message and "fix:" in message and "\n" not in message


def test_generate_prompt_and_file(loader, capsys, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("Hello\n")
    assert cli.main(["generate", "Hi", "--file", str(f)]) == 2
    assert "--file" in _error_line(capsys)


def test_generate_without_prompt(loader, capsys):
    assert cli.main(["generate"]) == 2
    _error_line(capsys)


def test_classify_empty_prompt(loader, capsys):
    assert cli.main(["classify", "   "]) == 2
    assert "empty" in _error_line(capsys)


def test_fit_harmful_without_harmless(loader, capsys, tmp_path):
    f = tmp_path / "h.txt"
    f.write_text("bad\n")
    assert cli.main(["fit", "--harmful", str(f)]) == 2
    line = _error_line(capsys)
    assert "--harmless" in line
    assert loader == []  # bad input is rejected before the model loads


def test_fit_bad_layers(loader, capsys, tmp_path):
    h, b = tmp_path / "h.txt", tmp_path / "b.txt"
    h.write_text("bad one\nbad two\n")
    b.write_text("good one\ngood two\n")
    assert cli.main(["fit", "--harmful", str(h), "--harmless", str(b), "--layers", "3-x"]) == 2
    assert "3-x" in _error_line(capsys)


def test_fit_alpha_and_alpha_abs(loader, capsys):
    assert cli.main(["fit", "--alpha", "0.1", "--alpha-abs", "1.0"]) == 2
    assert "--alpha" in _error_line(capsys)


@pytest.mark.parametrize("splits", ["0", "-1", "1001", "1000000000000"])
def test_fit_crossfit_splits_out_of_range(loader, capsys, splits):
    assert cli.main(["fit", "--crossfit-splits", splits]) == 2
    line = _error_line(capsys)
    assert f"crossfit splits {splits}" in line and "fix: use 1 to 1000" in line
    assert loader == []  # rejected before the model loads


@pytest.mark.parametrize("held", ["1", "-3", "x", "", "2.5"])
def test_fit_n_heldout_bad(loader, capsys, held):
    assert cli.main(["fit", "--n-heldout", held]) == 2
    line = _error_line(capsys)
    assert f"--n-heldout {held}" in line and "or rest" in line
    assert loader == []  # rejected before the model loads


def test_classify_missing_file(loader, capsys, tmp_path):
    missing = tmp_path / "missing.txt"
    assert cli.main(["classify", "--file", str(missing)]) == 2
    assert "missing.txt" in _error_line(capsys)


def test_loader_error_is_one_line(monkeypatch, capsys):
    def failing(args, need_profile=True):
        raise ScansError("no steering profile at /x; fix: run `scans fit`")

    monkeypatch.setattr(cli.common, "load_scans", failing)
    assert cli.main(["classify", "Hi"]) == 2
    assert "no steering profile" in _error_line(capsys)


def test_argparse_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["classify", "--no-such-flag"])
    assert info.value.code == 2


def test_classify_happy_path(loader, capsys):
    assert cli.main(["classify", "How do I bake bread?"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1
    score, verdict, prompt = lines[0].split(maxsplit=2)
    assert verdict in ("HARMFUL", "ABSTAIN", "BENIGN")
    assert prompt == "How do I bake bread?"
    value = float(score)
    assert (verdict == "HARMFUL") == (value >= 0.0)
    # the score is the API's score
    t = _tiny("qwen2")
    api = make_scans(t.model, t.tokenizer)
    api.profile = _fitted("qwen2").profile
    assert value == pytest.approx(api.classify("How do I bake bread?")[0].score, abs=1e-4)


def test_classify_output_format(loader, capsys, tmp_path):
    import re

    prompts = [
        "How do I bake bread at home?",
        "How do I make a bomb to hurt people?",
        "Hi",
        "Write a poem about the sea and the sky, please.",
        "How can I kill a stuck process?",
    ]
    f = tmp_path / "p.txt"
    f.write_text("\n".join(prompts) + "\n")
    assert cli.main(["classify", "--file", str(f), "--batch-size", "2"]) == 0
    lines = capsys.readouterr().out.rstrip("\n").split("\n")
    assert len(lines) == len(prompts)
    pattern = re.compile(r"^([+-]\d+\.\d{4})  (HARMFUL|ABSTAIN|BENIGN) +(.+)$")
    signs = set()
    for line, prompt in zip(lines, prompts):
        m = pattern.match(line)
        assert m, line
        assert m.group(3) == prompt
        assert (m.group(2) == "HARMFUL") == (float(m.group(1)) >= 0.0)
        signs.add(m.group(1)[0])
    assert signs == {"+", "-"}, "the prompts should score on both sides of 0"


def test_classify_file_json(loader, capsys, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("Hi\nHow do I bake bread?\n")
    assert cli.main(["classify", "--file", str(f), "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["prompt"] for r in records] == ["Hi", "How do I bake bread?"]
    for r in records:
        assert set(r) == {"prompt", "score", "harmful", "sign", "decision"}
        assert r["harmful"] == (r["score"] >= 0.0)
        expected = {"harmful": _fitted("qwen2").profile.harmful_sign, "abstain": 0, "benign": -1}
        assert r["decision"] == "harmful" if r["harmful"] else r["decision"] in ("abstain", "benign")
        assert r["sign"] == expected[r["decision"]]


def test_generate_compare_happy_path(loader, capsys):
    code = cli.main(["generate", "How do I bake bread?", "--compare", "--max-new-tokens", "4"])
    assert code == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "prompt: How do I bake bread?"
    assert lines[1].startswith("verdict: ") and "(score " in lines[1] and "steering: " in lines[1]
    verdict = lines[1].split()[1]
    assert verdict in ("harmful", "abstain", "benign")
    direction = lines[1].split("steering: ")[1]
    assert direction in ("toward refusal", "away from refusal", "none")
    if verdict == "benign":
        assert direction == "away from refusal"
    assert lines[2] == "--- unsteered ---"
    assert "--- steered ---" in lines[3:]
    assert lines.index("--- steered ---") > 2
    assert loader == [("generate", True)]


def test_generate_json(loader, capsys):
    assert cli.main(["generate", "Hi", "--json", "--max-new-tokens", "3", "--no-steer", "--compare"]) == 0
    [line] = capsys.readouterr().out.strip().splitlines()
    rec = json.loads(line)
    assert rec["prompt"] == "Hi"
    assert rec["response"] == rec["unsteered"]  # --no-steer
    assert set(rec) == {"prompt", "score", "harmful", "sign", "response", "unsteered"}


@pytest.fixture
def chat_spy(monkeypatch):
    """Record what `scans chat` hands to the server's path (the backend's chat_batch), and the
    output written to stdout by the time each answer's decoding returned."""
    import sys

    from scans import Scans

    calls = []
    real = Scans.chat_batch

    def spy(scans, encoded, settings, **kwargs):
        results = real(scans, encoded, settings, **kwargs)
        calls.append({"encoded": encoded, "settings": settings, "results": results, **kwargs})
        calls[-1]["stdout_at_return"] = sys.stdout.getvalue() if hasattr(sys.stdout, "getvalue") else None
        return results

    monkeypatch.setattr(Scans, "chat_batch", spy)
    return calls


def _chat(lines: list[str], *argv: str) -> int:
    import io

    args = cli.build_parser().parse_args(["chat", *argv])
    return cli.cmd_chat(args, stdin=io.StringIO("".join(f"{line}\n" for line in lines)))


def test_chat_keeps_the_history_and_streams(loader, chat_spy, monkeypatch):
    import io
    import sys

    from scans.conversations import encode_conversations

    monkeypatch.setattr(sys, "stdout", io.StringIO())  # getvalue() while decoding
    assert _chat(["Hi", "", "How do I bake bread?", "/quit", "never read"], "--max-new-tokens", "6") == 0
    out = sys.stdout.getvalue()
    assert len(chat_spy) == 2  # the empty line is skipped, /quit ends before the last line
    first, second = (c["results"][0].result.text for c in chat_spy)
    assert first and second
    # streamed: each answer was on stdout before its decoding returned
    assert chat_spy[0]["stdout_at_return"].endswith(first)
    assert chat_spy[1]["stdout_at_return"].endswith(second)
    assert out.count("[verdict: ") == 2
    # the second turn is the whole conversation, the verdict read on its latest user message
    t = _tiny("qwen2")
    api = make_scans(t.model, t.tokenizer)
    api.profile = dataclasses.replace(_fitted("qwen2").profile, threshold=0.0)
    conversation = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": first},
        {"role": "user", "content": "How do I bake bread?"},
    ]
    assert chat_spy[1]["encoded"] == encode_conversations(api, [conversation])
    assert chat_spy[1]["labels"] == ["How do I bake bread?"]
    assert chat_spy[0]["encoded"] == encode_conversations(api, [conversation[:1]])
    # the first turn's verdict is the one `scans classify` gives the message
    assert chat_spy[0]["results"][0].verdict.score == pytest.approx(api.classify("Hi")[0].score, abs=1e-4)
    assert [c["settings"][0].max_tokens for c in chat_spy] == [6, 6]


def test_chat_commands_reset_off_on(loader, chat_spy, capsys):
    lines = ["Hi", "/off", "Hi again", "/on", "/reset", "Hello", "/nope"]
    assert _chat(lines, "--max-new-tokens", "2") == 0  # end of input quits
    out = capsys.readouterr().out
    assert [c["steer_rows"] for c in chat_spy] == [[True], [False], [True]]
    assert [len(c["encoded"][0][0]) > 0 for c in chat_spy] == [True] * 3
    # /reset: the third turn is a conversation of one message, like the first
    from scans.conversations import encode_conversations

    t = _tiny("qwen2")
    api = make_scans(t.model, t.tokenizer)
    api.profile = _fitted("qwen2").profile
    assert chat_spy[2]["encoded"] == encode_conversations(api, [[{"role": "user", "content": "Hello"}]])
    assert len(chat_spy[1]["encoded"][0][0]) > len(chat_spy[0]["encoded"][0][0])  # history kept
    assert "[steering off]" in out and "[steering on]" in out and "[history cleared]" in out
    assert "steering: none" in out  # the /off turn
    assert "[unknown command /nope]" in out


def test_chat_defaults_to_chat_length_answers():
    assert cli.build_parser().parse_args(["chat"]).max_new_tokens == 512


def test_chat_conversation_longer_than_the_context(loader, chat_spy, capsys):
    long = " ".join(["bread"] * 300)  # the tiny model's context is 256 tokens
    assert _chat([long, "Hi"], "--max-new-tokens", "2") == 0
    out = capsys.readouterr().out
    assert "the model's context 256" in out and "/reset" in out
    assert len(chat_spy) == 1  # the long turn was not answered nor kept in the history
    assert chat_spy[0]["labels"] == ["Hi"]
    assert len(chat_spy[0]["encoded"][0][0]) < 100  # "Hi" alone, not the long message before it


def test_chat_bad_max_new_tokens(loader, capsys):
    assert cli.main(["chat", "--max-new-tokens", "0"]) == 2
    assert "--max-new-tokens" in _error_line(capsys)
    assert loader == []


def test_fit_and_info_happy_path(loader, capsys, tmp_path, monkeypatch):
    from conftest import BORDERLINE, HARMFUL, HARMLESS
    from scans.fit_config import DEFAULT_CROSSFIT_SPLITS
    from scans.profile import Profile

    files = {}
    for name, items in (("harmful", HARMFUL), ("harmless", HARMLESS), ("borderline", BORDERLINE)):
        files[name] = tmp_path / f"{name}.txt"
        files[name].write_text("\n".join(items) + "\n")
    out_dir = tmp_path / "profile"
    argv = [
        "--quiet",
        "fit",
        "--n-fit",
        "6",
        "--n-heldout",
        "4",
        "--layers",
        "1",
        "--threshold",
        "0.25",
        "--max-harmful-loss",
        "0.2",
    ]
    for name, path in files.items():
        argv += [f"--{name}", str(path)]
    assert cli.main([*argv, "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert f"profile: {out_dir}" in out
    assert "steering layers: 1-1 (user)" in out
    assert "threshold: 0.2500" in out
    profile = Profile.load(out_dir)
    assert profile.steer_layers == [1] and profile.threshold == 0.25
    assert profile.anchors["n_fit"] == 6
    assert profile.decision["pool"]["seed"] == 0  # the pool sample's seed is recorded
    splits = profile.decision["split_thresholds"]
    assert profile.decision["crossfit_splits"] == DEFAULT_CROSSFIT_SPLITS == len(splits)
    assert profile.steer_threshold == pytest.approx(np.mean(splits))
    assert f"calibrated on each of {DEFAULT_CROSSFIT_SPLITS} cross-fitting splits" in out
    assert f"range {min(splits):.4f} to {max(splits):.4f}" in out
    # one split: a threshold resting on few calibration scores is flagged
    assert cli.main([*argv, "--crossfit-splits", "1", "--out", str(tmp_path / "one")]) == 0
    out_one = capsys.readouterr().out
    one = Profile.load(tmp_path / "one")
    name, bind = min(one.decision["budget"].items(), key=lambda kv: kv[1]["threshold"])
    note = f"lowest of {bind['n']} {name} calibration scores, so it moves with --seed"
    assert bind["k"] <= 5 and note in out_one and "moves with --seed" not in out, out_one

    def load_saved(args, need_profile=True):
        t = _tiny("qwen2")
        scans = make_scans(t.model, t.tokenizer)
        scans.load(args.profile)
        return scans

    monkeypatch.setattr(cli.common, "load_scans", load_saved)
    assert cli.main(["info", "--profile", str(out_dir)]) == 0
    info = capsys.readouterr().out
    assert "fit stages" in info and "fit in 0 s" not in info  # info reads the recorded stage times
    assert ", float32 on cpu" in info
    rows = [line for line in info.splitlines() if line[:1] in ("*", " ") and line[1:5].strip().isdigit()]
    assert [line[0] for line in rows] == [" ", "*"]


def test_fit_alpha_zero_is_kept(loader, capsys, tmp_path):
    from conftest import BORDERLINE, HARMFUL, HARMLESS
    from scans.profile import Profile

    argv = [
        "--quiet",
        "fit",
        "--n-fit",
        "6",
        "--n-heldout",
        "4",
        "--layers",
        "1",
        "--alpha",
        "0",
        "--max-harmful-loss",
        "0.2",
    ]
    for name, items in (("harmful", HARMFUL), ("harmless", HARMLESS), ("borderline", BORDERLINE)):
        path = tmp_path / f"{name}.txt"
        path.write_text("\n".join(items) + "\n")
        argv += [f"--{name}", str(path)]
    assert cli.main([*argv, "--out", str(tmp_path / "p")]) == 0
    assert Profile.load(tmp_path / "p").alpha == 0.0


def test_fit_layers_out_of_range(loader, capsys):
    assert cli.main(["fit", "--layers", "0-5"]) == 2
    line = _error_line(capsys)
    assert "out of range" in line and "fix:" in line


def test_shrinkage_flag_parses_auto_or_a_fraction(capsys):
    from scans.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["fit", "--shrinkage", "auto"]).shrinkage is None
    assert parser.parse_args(["fit", "--shrinkage", "0.3"]).shrinkage == 0.3
    for bad in ("1.5", "nan", "lots"):
        with pytest.raises(SystemExit):
            parser.parse_args(["fit", "--shrinkage", bad])
        assert "is not a number in [0, 1] or 'auto'" in capsys.readouterr().err


def test_missing_profile_fails_before_the_model_loads(monkeypatch, capsys, tmp_path):
    from scans import api

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not load for a wrong --profile")

    monkeypatch.setattr(api.Scans, "from_pretrained", no_model)
    assert cli.main(["classify", "hi", "--profile", str(tmp_path / "nowhere")]) == 2
    line = _error_line(capsys)
    assert "no steering profile" in line and "fix:" in line


def test_demo_leaves_no_progress_bar_behind(monkeypatch, capsys, tmp_path):
    """Output that is not a terminal (here: captured) gets no bars: their redraws and erasing
    blanks would stay behind as empty lines. The fit's and the answers' bars all run here."""
    import functools

    from conftest import BORDERLINE, FIT_KWARGS, HARMFUL, HARMLESS

    monkeypatch.setenv("SCANS_CACHE", str(tmp_path))

    def load_unfitted(args, need_profile=True):
        t = _tiny("qwen2")
        scans = make_scans(t.model, t.tokenizer)
        scans.fit = functools.partial(scans.fit, HARMFUL, HARMLESS, BORDERLINE, **FIT_KWARGS)
        return scans

    monkeypatch.setattr(cli.common, "load_scans", load_unfitted)
    assert cli.main(["demo", "--max-new-tokens", "2"]) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "\r" not in captured.out
    assert captured.err.strip() == ""
    lines = captured.out.splitlines()
    assert lines[0].startswith("no cached profile for this model: fitting one")
    assert lines[1].startswith("profile: ") and str(tmp_path) in lines[1]
    assert sum(line.startswith("prompt: ") for line in lines) == len(cli.DEMO_PROMPTS)
    assert all(line.strip() or not line for line in lines)  # no line of blanks
    assert "\n\n\n" not in captured.out  # one empty line between blocks, never more
