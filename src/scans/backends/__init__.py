"""Inference backends behind one protocol (:class:`scans.backend.Backend`), and the one factory
that maps a backend's name to its class. Importing this package imports neither torch nor vLLM
(the CLI reads ``BACKENDS`` for its options)."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from ..errors import ScansError

if TYPE_CHECKING:
    from ..backend import Backend

BACKENDS = ("transformers", "vllm")

__all__ = ["BACKENDS", "backend_class", "create_backend"]


def backend_class(name: str) -> Any:
    """The class of the backend called ``name`` (imported when asked for: vLLM is optional)."""
    if name == "transformers":
        from ..api import Scans

        return Scans
    if name == "vllm":
        from .vllm import VLLMScans

        return VLLMScans
    raise ScansError(f"backend {name!r}; fix: use one of {', '.join(BACKENDS)}")


def create_backend(name: str, model: str | None = None, **options: Any) -> Backend:
    """Load ``model`` on the backend called ``name``; options the backend does not take
    (another backend's engine settings) are left out."""
    cls = backend_class(name)
    accepted = inspect.signature(cls.from_pretrained).parameters
    return cls.from_pretrained(model, **{k: v for k, v in options.items() if k in accepted})
