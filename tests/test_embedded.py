"""The embedded model's one-time build: processes (or threads) that first use it at the same
time build it once, and none reads a half-built cache."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import scans.embedded as embedded


def test_concurrent_first_use_builds_once(tmp_path, monkeypatch):
    monkeypatch.setattr(embedded, "cache_dir", lambda: tmp_path)
    calls: list[int] = []

    def slow_build(spec, root: Path, final: Path, progress: bool) -> Path:
        calls.append(1)
        time.sleep(0.3)  # a second caller arrives while the first builds
        final.mkdir(parents=True)
        (final / "config.json").write_text("{}")
        (final / "scans-sha256.txt").write_text(spec.sha256)
        return final

    monkeypatch.setattr(embedded, "_build", slow_build)
    got: list[Path] = []
    threads = [threading.Thread(target=lambda: got.append(embedded.embedded_model_dir(progress=False)))
               for _ in range(3)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert got == [tmp_path / "models" / embedded.DEFAULT.name] * 3
