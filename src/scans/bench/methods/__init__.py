"""Benchmark methods: each one small unit (one file) compared on the same prompts.

A method says which prefill it needs (system prompt, hooks active for the whole pass),
decides a steering sign per row from the probe-pass activations, and turns signs into a
steering plan. Methods with the same ``group`` share one prefill (and the probe pass);
rows a method leaves unsteered (sign 0, no hooks) reuse the group's unsteered answer.
"""

from __future__ import annotations

from ...errors import ScansError
from .ablate import Ablate
from .base import Decision, Method
from .prompt import PromptMethod
from .scans_methods import AlwaysAway, Original, ScansAway, ScansMethod, ScansPaper, ScansV1

METHODS: dict[str, type[Method]] = {
    m.name: m
    for m in (Original, ScansMethod, ScansAway, ScansV1, ScansPaper, AlwaysAway, Ablate, PromptMethod)
}
DEFAULT_METHODS = tuple(METHODS)


def get_methods(names: str | list[str] | tuple[str, ...]) -> list[type[Method]]:
    """Method classes by name ('all' or a comma-separated list)."""
    if isinstance(names, str):
        names = (
            list(METHODS) if names.strip() == "all" else [n.strip() for n in names.split(",") if n.strip()]
        )
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise ScansError(
            f"unknown method(s) {', '.join(unknown) or '(none)'}; fix: use 'all' or some of {', '.join(METHODS)}"
        )
    return [METHODS[n] for n in names]


__all__ = ["METHODS", "DEFAULT_METHODS", "Decision", "Method", "get_methods"]
