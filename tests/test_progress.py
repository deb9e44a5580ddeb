"""Transient progress bars: drawn on a terminal only, and erased when done."""

from __future__ import annotations

import io
import sys

from scans.progress import interactive, progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_on_a_terminal_erases_itself(monkeypatch):
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert interactive()
    assert list(progress_bar(range(3), "work")) == [0, 1, 2]
    out = term.getvalue()
    assert "work" in out and "\n" not in out
    assert out.endswith("\r") and out.rsplit("\r", 2)[-2].strip() == ""  # last draw: blanks


def test_no_bar_off_a_terminal_or_when_not_asked(monkeypatch):
    pipe = io.StringIO()
    monkeypatch.setattr(sys, "stderr", pipe)
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    assert not interactive()
    assert list(progress_bar(range(3), "work")) == [0, 1, 2]
    assert pipe.getvalue() == ""
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert list(progress_bar(range(3), "work", enabled=False)) == [0, 1, 2]
    assert term.getvalue() == ""
