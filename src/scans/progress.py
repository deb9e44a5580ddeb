"""Transient progress bars (fit stages, generation batches, MMLU, perplexity).

A bar is drawn only on a terminal (or in a notebook): elsewhere (a pipe, a log file, CI) its
carriage-return redraws and the blanks that erase it would stay behind as empty lines. When
done, the bar erases itself.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def interactive() -> bool:
    """True when stderr is a terminal or this runs in a Jupyter kernel."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty is not None and isatty()) or "ipykernel" in sys.modules


def progress_bar(iterable: Iterable[T], desc: str, enabled: bool = True, **kwargs: Any) -> Iterable[T]:
    """``iterable`` wrapped in a bar that erases itself, shown when ``enabled`` and interactive."""
    return tqdm(iterable, desc=desc, disable=not (enabled and interactive()), leave=False, **kwargs)
