"""``scans serve``: an OpenAI-compatible HTTP server that applies SCANS to every request.

Needs the ``serve`` extra: ``pip install 'scans[serve]'`` (FastAPI, uvicorn, prometheus-client).
``ServeConfig`` and the command-line options import without it.
"""

from __future__ import annotations

from typing import Any

from .config import ServeConfig

__all__ = ["ServeConfig", "create_app", "run_server"]


def __getattr__(name: str) -> Any:
    if name in ("create_app", "run_server"):
        from . import app

        return getattr(app, name)
    raise AttributeError(name)
