"""Reading a ``scans bench`` run directory into :class:`RunData` (missing or malformed files become notes)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import ScansError
from .. import metrics as M

METHOD_ORDER = ("original", "scans", "scans-paper", "always-away", "ablate", "prompt")
SPLIT_ORDER = ("xstest-safe", "xstest-unsafe", "oktest", "harmfulq", "advbench", "truthfulqa", "jailbreak")
JAILBREAK = "jailbreak"  # the packaged split of harmful requests in attack templates


@dataclass
class RunData:
    """Everything read from a run directory; ``notes`` lists what was skipped or missing."""

    path: Path
    meta: dict[str, Any]
    records: list[dict[str, Any]]
    capability: dict[str, Any] | None = None
    lens: dict[str, Any] | None = None
    profile: dict[str, Any] | None = None
    timings: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    humaneval: list[dict[str, Any]] = field(default_factory=list)  # humaneval.jsonl records
    humaneval_summary: dict[str, Any] | None = None  # humaneval.json (settings, wall time)

    @property
    def methods(self) -> list[str]:
        return ordered(self.meta.get("methods") or [], [r["method"] for r in self.records], METHOD_ORDER)

    @property
    def splits(self) -> list[str]:
        return ordered(list(self.meta.get("splits") or {}), [r["split"] for r in self.records], SPLIT_ORDER)


def ordered(declared: list[str], seen: list[str], preferred: tuple[str, ...]) -> list[str]:
    out = list(dict.fromkeys(declared))
    extra = [x for x in dict.fromkeys(seen) if x not in out]
    extra.sort(key=lambda x: (preferred.index(x) if x in preferred else len(preferred), x))
    return out + extra


def read_generations(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Records of ``generations.jsonl`` (last one per (method, split, id)) and notes on skipped lines."""
    notes: list[str] = []
    if not path.is_file():
        return [], notes
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    records = []
    bad = []
    required = ("method", "split", "id")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad.append(number)
            continue
        if not isinstance(record, dict) or any(k not in record for k in required):
            bad.append(number)
            continue
        records.append(record)
    last = max((i for i, line in enumerate(lines, start=1) if line.strip()), default=0)
    if bad == [last]:
        notes.append(f"{path.name}: skipped the truncated last line {last} (a killed run)")
    elif bad:
        shown = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
        notes.append(f"{path.name}: skipped {len(bad)} unreadable line(s): {shown}")
    return M.dedupe(records), notes


def read_json(path: Path, notes: list[str]) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        notes.append(f"{path.name}: unreadable ({' '.join(str(exc).split())}), ignored")
        return None


def load_run(run_dir: str | Path) -> RunData:
    """Read a run directory; ScansError when it is not one."""
    path = Path(run_dir)
    if not path.is_dir():
        raise ScansError(
            f"run directory {path} does not exist; fix: pass the directory written by scans bench"
        )
    notes: list[str] = []
    meta = read_json(path / "meta.json", notes)
    records, gen_notes = read_generations(path / "generations.jsonl")
    notes += gen_notes
    if meta is None and not records:
        raise ScansError(
            f"{path} is not a scans run directory (no meta.json and no generations in generations.jsonl); "
            f"fix: pass the directory written by scans bench"
        )
    if not isinstance(meta, dict):
        notes.append("meta.json missing: model and settings unknown")
        meta = {}
    profile = read_json(path / "profile" / "profile.json", notes)
    humaneval, he_notes = read_generations(path / "humaneval.jsonl")
    notes += he_notes
    return RunData(
        path=path,
        meta=meta,
        records=records,
        capability=read_json(path / "capability.json", notes),
        lens=read_json(path / "lens.json", notes),
        profile=profile if isinstance(profile, dict) else None,
        timings=read_json(path / "timings.json", notes),
        notes=notes,
        humaneval=humaneval,
        humaneval_summary=read_json(path / "humaneval.json", notes),
    )
