"""Transient progress bars (fit stages, generation batches, MMLU, perplexity).

A bar is drawn only on a terminal (or in a notebook): elsewhere (a pipe, a log file, CI) its
carriage-return redraws and the blanks that erase it would stay behind as empty lines. When
done, the bar erases itself.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
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


@contextmanager
def no_bars() -> Iterator[None]:
    """Every tqdm bar off inside the block, other libraries' too (transformers' GGUF
    dequantisation bar heeds neither its own switch nor a ``TQDM_DISABLE`` set after tqdm's
    import). Restored on exit."""
    from tqdm import std

    init = vars(std.tqdm)["__init__"]  # the descriptor itself, restored exactly
    std.tqdm.__init__ = functools.partialmethod(init, disable=True)  # type: ignore[method-assign]
    try:
        yield
    finally:
        std.tqdm.__init__ = init  # type: ignore[method-assign]
