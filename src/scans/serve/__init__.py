"""``scans serve``: an OpenAI-compatible HTTP server that applies SCANS to every request.

Needs the ``serve`` extra: ``pip install 'scans[serve]'`` (FastAPI, uvicorn, prometheus-client).
``ServeConfig`` and the command-line options import without it.
"""

from __future__ import annotations

from typing import Any

from .config import ServeConfig

__all__ = ["ServeConfig", "create_app", "run_server"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "run_server":
        from .server import run_server

        return run_server
    raise AttributeError(name)
