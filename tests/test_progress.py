"""Transient progress bars: drawn on a terminal only, and erased when done."""

from __future__ import annotations

import io
import sys

from scans.progress import interactive, no_bars, progress_bar


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


def test_no_bars_silences_other_libraries_bars_and_restores_them(monkeypatch):
    from tqdm import std
    from tqdm.auto import tqdm  # a library's own bar, imported before the switch

    init = vars(std.tqdm)["__init__"]
    # without the test session's TQDM_DISABLE default, so that a bar is drawn outside the block
    monkeypatch.setattr(std.tqdm, "__init__", getattr(init, "func", init))
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert list(tqdm(range(3), desc="before", file=term)) == [0, 1, 2]
    assert "before" in term.getvalue()
    term.seek(0)
    term.truncate()
    with no_bars():
        assert list(tqdm(range(3), desc="dequantising", file=term)) == [0, 1, 2]
    assert term.getvalue() == ""
    assert list(tqdm(range(3), desc="dequantising", file=term)) == [0, 1, 2]
    assert "dequantising" in term.getvalue()
