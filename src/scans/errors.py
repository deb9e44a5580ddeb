"""User-facing errors: one line naming the problem and the fix."""

from __future__ import annotations


class ScansError(Exception):
    """An error caused by input or environment; the CLI prints it as one line."""
