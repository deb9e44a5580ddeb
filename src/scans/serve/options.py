"""``scans serve`` command-line options and start-up (importable without the serve extra)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

from ..errors import ScansError
from .config import ServeConfig

API_KEY_ENV = "SCANS_API_KEY"


def add_serve_args(p: argparse.ArgumentParser) -> None:
    """The server flags (model and profile flags come from the CLI's shared groups)."""
    d = ServeConfig()
    g = p.add_argument_group("server")
    g.add_argument("--host", default=d.host, help="bind address (default 127.0.0.1: this machine only)")
    g.add_argument("--port", type=int, default=d.port)
    g.add_argument(
        "--api-key", default=None, help=f"require 'Authorization: Bearer KEY' (or env {API_KEY_ENV})"
    )
    g.add_argument("--served-model-name", default=None, help="model id reported by /v1/models")
    g.add_argument("--max-batch-size", type=int, default=d.max_batch_size, help="rows decoded together")
    g.add_argument("--max-queue", type=int, default=d.max_queue,
                   help="requests waiting for a batch slot before 429 (independent of --max-batch-size)")  # fmt: skip
    g.add_argument("--batch-window-ms", type=float, default=d.batch_window_ms,
                   help="how long an idle server waits for more requests to start a batch with")  # fmt: skip
    g.add_argument("--batching", choices=("continuous", "closed"), default=d.batching,
                   help="continuous: requests join the running batch at every step; closed: one batch at a time")  # fmt: skip
    g.add_argument("--drain-timeout", type=float, default=d.drain_timeout_s,
                   help="on SIGTERM/SIGINT, seconds to finish accepted requests before failing them")  # fmt: skip
    g.add_argument("--metrics-public", action="store_true",
                   help="serve /metrics and the /health details without the API key")  # fmt: skip
    g.add_argument("--allow-special-tokens", action="store_true",
                   help="parse special-token text in message contents as control tokens (default: plain text)")  # fmt: skip
    g.add_argument("--header-timeout", type=float, default=d.header_timeout_s,
                   help="seconds a connection may take to send a request's headers (idle ones included)")  # fmt: skip
    g.add_argument("--body-timeout", type=float, default=d.body_timeout_s,
                   help="seconds a client may take to send a request body (408 after)")  # fmt: skip
    g.add_argument("--max-connections", type=int, default=d.max_connections,
                   help="open connections before new requests get 503")  # fmt: skip
    g.add_argument("--max-prompt-tokens", type=int, default=d.max_prompt_tokens)
    g.add_argument(
        "--max-tokens-limit", type=int, default=d.max_tokens_limit, help="largest max_tokens accepted"
    )
    g.add_argument("--default-max-tokens", type=int, default=d.default_max_tokens,
                   help="max_tokens when a request gives none")  # fmt: skip
    g.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    g.add_argument("--request-timeout", type=float, default=d.request_timeout_s, help="seconds (504 after)")


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """Validate the flags (before any model loads)."""
    for flag, value in (
        ("--max-batch-size", args.max_batch_size), ("--max-queue", args.max_queue),
        ("--max-prompt-tokens", args.max_prompt_tokens), ("--max-tokens-limit", args.max_tokens_limit),
        ("--default-max-tokens", args.default_max_tokens), ("--max-body-bytes", args.max_body_bytes),
        ("--max-connections", args.max_connections),
    ):  # fmt: skip
        if value < 1:
            raise ScansError(f"{flag} {value}; fix: pass a number of at least 1")
    if not 0 <= args.port <= 65535:
        raise ScansError(f"--port {args.port}; fix: pass a port in 0..65535")
    if args.request_timeout <= 0 or args.batch_window_ms < 0:
        raise ScansError(
            "--request-timeout must be > 0 and --batch-window-ms >= 0; fix: pass positive numbers"
        )
    if args.drain_timeout < 0 or args.header_timeout <= 0 or args.body_timeout <= 0:
        raise ScansError(
            "--drain-timeout must be >= 0, --header-timeout and --body-timeout > 0; fix: pass positive numbers"
        )
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    return ServeConfig(
        host=args.host, port=args.port, api_key=api_key, max_batch_size=args.max_batch_size,
        max_queue=args.max_queue, batch_window_ms=args.batch_window_ms,
        max_prompt_tokens=args.max_prompt_tokens, max_tokens_limit=args.max_tokens_limit,
        default_max_tokens=min(args.default_max_tokens, args.max_tokens_limit),
        max_body_bytes=args.max_body_bytes, request_timeout_s=args.request_timeout,
        served_model_name=args.served_model_name, batching=args.batching, drain_timeout_s=args.drain_timeout,
        metrics_public=args.metrics_public, allow_special_tokens=args.allow_special_tokens,
        header_timeout_s=args.header_timeout, body_timeout_s=args.body_timeout,
        max_connections=args.max_connections,
    )  # fmt: skip


def _check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ScansError(
                f"cannot listen on {host}:{port} ({exc.strerror}); fix: pass another --port or --host"
            ) from None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve_main(args: argparse.Namespace, load: Callable[..., Any]) -> int:
    """``scans serve``: check flags and dependencies, load model and profile, serve."""
    config = config_from_args(args)
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ScansError(f"scans serve needs {exc.name}; fix: pip install 'scans[serve]'") from None
    _check_port(config.host, config.port)
    if not _is_loopback(config.host) and not config.api_key:
        print(f"scans: warning: listening on {config.host} without an API key; anyone who can reach "
              f"it can use the model (pass --api-key or set {API_KEY_ENV})", file=sys.stderr)  # fmt: skip
    scans = load(args, need_profile=False)
    if args.profile:
        scans.load(args.profile)
    else:
        try:
            scans.load()
        except ScansError:
            raise ScansError(
                f"no --profile given and no cached profile for {scans.name} at {scans.default_profile_path}; "
                "fix: run `scans fit` with the same --model first, or pass --profile DIR"
            ) from None
    from .server import run_server

    shown = "0.0.0.0" if config.host in ("", "0.0.0.0") else config.host
    print(f"scans serve: {config.served_model_name or scans.name} at http://{shown}:{config.port}/v1 "
          f"({config.batching} batching of {config.max_batch_size}, queue {config.max_queue}, "
          f"{'API key required' if config.api_key else 'no API key'})", flush=True)  # fmt: skip
    run_server(scans, config, log_level="warning" if args.quiet else "info")
    return 0
