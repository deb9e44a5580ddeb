"""What a SCANS session needs of an inference engine: the :class:`Backend` protocol and the
:class:`Capabilities` a front end asks about instead of a backend's name.

Two backends implement it: :class:`scans.Scans` (transformers, in this process) and
:class:`scans.backends.vllm.VLLMScans` (a vLLM engine with the worker extension). Both own a
profile and read their verdicts through ``scans.verdict.decide``; the CLI, the bench suite and
the server take any backend and branch only on its capabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from .profile import Profile
from .verdict import Verdict


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do beyond classify / generate / chat_batch."""

    fit: bool  # fit a profile (block outputs of any prompt, steered forward passes, in this process)
    logits: bool  # next-token logits under steering: MMLU, perplexity, HumanEval in `scans bench`
    row_batching: bool  # rows join and leave between decoding steps (the server's continuous batching)
    engine_batching: bool  # the engine schedules requests itself: the bench hands it every request at once


@runtime_checkable
class Backend(Protocol):
    """A model with its tokenizer and (after ``fit`` or ``load``) a steering profile."""

    backend: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    name: str
    fingerprint: str
    tokenizer: Any
    profile: Profile | None
    n_layers: int

    @property
    def dtype(self) -> str: ...

    @property
    def max_model_len(self) -> int: ...

    @property
    def default_profile_path(self) -> Path: ...

    def load(self, path: str | Path | None = None) -> Profile: ...

    def classify(self, prompts: str | Sequence[str], **kwargs: Any) -> list[Verdict]: ...

    def generate(self, prompts: str | Sequence[str], **kwargs: Any) -> list[Any]: ...

    def chat_batch(
        self,
        encoded: Sequence[tuple[list[int], int]],
        settings: Sequence[Any],
        *,
        steer_rows: Sequence[bool] | None = None,
        labels: Sequence[str] | None = None,
        on_verdicts: Callable[[list[Verdict], list[int]], None] | None = None,
        on_forward: Callable[[int], None] | None = None,
        isolate_errors: bool = False,
        conversations: Sequence[Sequence[dict[str, str]]] | None = None,
    ) -> list[Any]: ...
