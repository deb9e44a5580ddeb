"""The uvicorn server for the app: a deadline for each request's headers, keep-alive and
connection limits, and a first SIGTERM/SIGINT that drains before exiting."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI

from .app import Drain, create_app
from .config import ServeConfig


def _protocol(header_timeout: float) -> type:
    """uvicorn's h11 protocol with a deadline for each request's headers: a connection that
    opens and sends nothing, or sends headers too slowly, is closed after ``header_timeout``."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(header_timeout, self._head_timeout)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return GuardedH11Protocol


def make_server(app: FastAPI, config: ServeConfig, log_level: str = "info") -> Any:
    """The uvicorn server for ``app``: header/keep-alive timeouts, a connection limit, and a
    first SIGTERM/SIGINT that drains (``Drain``) before exiting; a second one exits at once."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        drain_requested = False

        def handle_exit(self, sig: int, frame: Any) -> None:
            drain: Drain = app.state.drain
            if self.drain_requested or self.should_exit or drain.timeout <= 0:
                super().handle_exit(sig, frame)
                return
            self.drain_requested = True
            drain.begin(lambda: setattr(self, "should_exit", True))

    uv_config = uvicorn.Config(app, host=config.host, port=config.port, log_level=log_level,
                               http=_protocol(config.header_timeout_s), timeout_keep_alive=config.keep_alive_s,
                               limit_concurrency=config.max_connections, timeout_graceful_shutdown=5)  # fmt: skip
    return DrainingServer(uv_config)


def run_server(scans: Any, config: ServeConfig, log_level: str = "info") -> None:
    """Serve until interrupted (uvicorn, one process, one model worker thread)."""
    make_server(create_app(scans, config), config, log_level).run()
