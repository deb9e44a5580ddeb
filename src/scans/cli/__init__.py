"""The ``scans`` command line: fit, classify, generate, chat, demo, bench, serve, info, report, judge-eval.

This module assembles the parser and runs a command (:func:`main`, :func:`run`); the commands live in
``fit`` (fit, info), ``generate`` (classify, generate, demo), ``chat``, ``bench`` (bench, report),
``judge_eval`` and ``serve``, and what they share (model options, loading) in ``common``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import ScansError
from ..progress import interactive, no_bars
from . import common
from .bench import DEFAULT_JUDGE, add_bench_parser, add_report_parser, cmd_bench, cmd_report
from .chat import add_chat_parser, cmd_chat
from .common import batch_size_arg, parse_layers, shrinkage_arg
from .fit import add_fit_parser, add_info_parser, cmd_fit, cmd_info
from .generate import (
    DEMO_PROMPTS,
    add_classify_parser,
    add_demo_parser,
    add_generate_parser,
    cmd_classify,
    cmd_demo,
    cmd_generate,
)
from .judge_eval import add_judge_eval_parser, cmd_judge_eval
from .serve import add_serve_parser, cmd_serve

__all__ = [
    "DEFAULT_JUDGE",
    "DEMO_PROMPTS",
    "ScansError",
    "batch_size_arg",
    "build_parser",
    "cmd_chat",
    "main",
    "parse_layers",
    "run",
    "shrinkage_arg",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scans", description="Safety-Conscious Activation Steering for chat LLMs (no training)."
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)
    add_fit_parser(sub)
    add_classify_parser(sub)
    add_generate_parser(sub)
    add_chat_parser(sub)
    add_demo_parser(sub)
    add_bench_parser(sub)
    add_serve_parser(sub)
    add_info_parser(sub)
    add_report_parser(sub)
    add_judge_eval_parser(sub)
    # `scans bench ... --quiet` works as well as `scans --quiet bench ...`
    for command in sub.choices.values():
        command.add_argument(
            "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars"
        )
    return parser


COMMANDS = {
    "bench": cmd_bench,
    "fit": cmd_fit,
    "classify": cmd_classify,
    "generate": cmd_generate,
    "chat": cmd_chat,
    "demo": cmd_demo,
    "info": cmd_info,
    "serve": cmd_serve,
    "report": cmd_report,
    "judge-eval": cmd_judge_eval,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; every ScansError becomes one line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    if args.quiet:
        import os

        os.environ["TQDM_DISABLE"] = "1"
    if args.quiet or not interactive():  # transformers' loading bar too (see scans.progress)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        if args.quiet:
            with no_bars():
                return COMMANDS[args.command](args)
        return COMMANDS[args.command](args)
    except ScansError as exc:
        print(f"scans: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("scans: interrupted", file=sys.stderr)
        return 130


def run() -> None:
    """Console entry point: :func:`main`, then exit without tearing the interpreter down.

    Unloading torch and transformers module by module takes 1.5-2 s after every command;
    the work is done and the files are written and closed, so the process ends at once
    (output flushed first) and the OS frees its memory. Exceptions propagate as usual.
    One command per process also lets ``common.load_scans`` freeze the loaded objects out of the
    garbage collector's sight.
    """
    import logging
    import os

    common.ONE_SHOT = True
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)
