"""``scans serve``: the OpenAI-compatible server (options and start-up live in ``scans.serve.options``)."""

from __future__ import annotations

import argparse

from . import common
from .common import add_backend_args, add_model_args, add_profile_arg


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    """``scans serve``: the model options here, the server's in ``scans.serve.options``."""
    serve = sub.add_parser("serve", help="OpenAI-compatible HTTP server applying SCANS to every request")
    add_model_args(serve)
    add_profile_arg(serve)
    add_backend_args(serve)
    from ..serve.options import add_serve_args

    add_serve_args(serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from ..serve.options import serve_main

    return serve_main(args, common.load_scans)
