"""What ``scans bench`` runs: the options, the splits and the methods, shared by both backends'
runners (:mod:`scans.bench.suite`, :mod:`scans.bench.vllm_runner`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..api import Scans, prompt_key
from ..errors import ScansError
from . import data
from .methods import Method, get_methods
from .runner import BenchConfig

DEFAULT_SPLITS = ("xstest-safe", "xstest-unsafe", "oktest", "harmfulq")


@dataclass
class SuiteOptions:
    """What ``scans bench`` runs."""

    splits: Sequence[str] = DEFAULT_SPLITS
    files: Sequence[str] = ()
    text_column: str | None = None
    label_column: str | None = None
    methods: str | Sequence[str] = "all"
    limit: int | None = None  # prompts per split (a quick subset)
    data_dir: str | None = None
    download: bool = False
    mmlu_limit: int = 10  # questions per subject; 0 skips MMLU
    mmlu_subjects: Sequence[str] | None = None
    ppl_texts: int = 200  # TruthfulQA best answers; 0 skips perplexity
    capability_methods: str | Sequence[str] = ("original", "scans")
    humaneval_limit: int = 0  # first N HumanEval problems; 0 skips HumanEval
    humaneval_max_new_tokens: int = 384
    humaneval_timeout: float = 10.0  # seconds per program in the sandbox
    config: BenchConfig = field(default_factory=BenchConfig)


def load_splits(
    opts: SuiteOptions, exclude_keys: set[str] | frozenset[str] = frozenset()
) -> list[data.Split]:
    """The splits to run; prompts whose key is in ``exclude_keys`` (the profile's anchors) are left out."""
    splits = [data.load_split(name, opts.data_dir, opts.download) for name in opts.splits]
    splits += [
        data.user_file(path, text_column=opts.text_column, label_column=opts.label_column)
        for path in opts.files
    ]
    if exclude_keys:
        splits = [
            s.subset(i for i, p in enumerate(s.prompts) if prompt_key(p) not in exclude_keys) for s in splits
        ]
    if opts.limit is not None:
        if opts.limit < 1:
            raise ScansError(f"--limit {opts.limit}; fix: pass a positive number of prompts per split")
        splits = [s.subset(range(min(opts.limit, len(s)))) for s in splits]
    names = [s.name for s in splits]
    if len(set(names)) != len(names):
        raise ScansError(f"two splits are named alike ({', '.join(names)}); fix: rename one of the files")
    capability_only = opts.capability_methods and (opts.mmlu_limit or opts.ppl_texts or opts.humaneval_limit)
    if not splits and not capability_only:
        raise ScansError("no splits to run; fix: pass --splits or --file")
    return splits


def build_methods(scans: Scans, names: str | Sequence[str]) -> list[Method]:
    """The named methods (``"all"`` or comma-separated) on ``scans``'s profile."""
    profile = scans.require_profile()
    return [cls(profile, scans.n_layers, scans.layers_path) for cls in get_methods(names)]  # type: ignore[arg-type]
