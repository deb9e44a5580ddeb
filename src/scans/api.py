"""The Python API: ``Scans.fit / classify / generate / save / load``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from .backend import Capabilities
from .conversations import chat_batch
from .decode import RowSettings, generate_from
from .embedded import cache_dir
from .engine import Prefill, prefill, probe_pass
from .errors import ScansError
from .fit import fit_profile
from .fit_config import FitConfig
from .fit_data import prompt_key as prompt_key  # re-exported (bench options, tests)
from .guard import Guard, resolve_guard, rule_acts
from .models import LoadedModel, dtype_name, find_layers, load_model, model_fingerprint
from .profile import Profile
from .progress import progress_bar
from .prompts import build_batch, context_length, encode_chat
from .refusal import first_token_refuses
from .steering import SteeringPlan
from .verdict import Verdict, decide


@dataclass
class Generation:
    """One answer: the verdict, the (steered) response and optionally the unsteered one."""

    prompt: str
    verdict: Verdict
    response: str
    unsteered: str | None = None


def default_profile_dir(name: str, fingerprint: str) -> Path:
    """Where ``fit`` saves and ``generate`` looks by default: one profile per model."""
    slug = "".join(c if c.isalnum() or c in "-._" else "-" for c in name).strip("-")
    return cache_dir() / "profiles" / f"{slug}-{fingerprint}"


class Scans:
    """A model with its tokenizer and (after ``fit`` or ``load``) a steering profile: the
    transformers backend (:class:`scans.backend.Backend`)."""

    backend: ClassVar[str] = "transformers"
    capabilities: ClassVar[Capabilities] = Capabilities(
        fit=True, logits=True, row_batching=True, engine_batching=False
    )

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        name: str = "model",
        profile: Profile | None = None,
        layers_path: str | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.layers_path = layers_path
        self.n_layers = len(find_layers(model, layers_path))
        self.fingerprint = model_fingerprint(model)
        self.profile = profile
        self.guard: Guard | None = None  # the model a guard profile's classifiers read
        self.load_options: dict[str, Any] = {}  # how from_pretrained loaded the model (for a guard)

    @classmethod
    def from_pretrained(
        cls,
        model: str | None = None,
        *,
        profile: str | Path | None = None,
        dtype: str | torch.dtype | None = None,
        device: str | None = None,
        device_map: str | dict | None = None,
        trust_remote_code: bool = False,
        layers_path: str | None = None,
    ) -> Scans:
        """Load a model (``None`` = the embedded default) and optionally a profile."""
        loaded: LoadedModel = load_model(
            model, dtype=dtype, device=device, device_map=device_map, trust_remote_code=trust_remote_code
        )
        scans = cls(loaded.model, loaded.tokenizer, name=loaded.name, layers_path=layers_path)
        scans.load_options = {
            "dtype": dtype, "device": device, "device_map": device_map, "trust_remote_code": trust_remote_code,
        }  # fmt: skip
        if profile is not None:
            scans.load(profile)
        return scans

    @property
    def dtype(self) -> str:
        """The model's weight dtype, e.g. ``float32``."""
        return dtype_name(next(self.model.parameters()).dtype)

    @property
    def max_model_len(self) -> int:
        """Longest prompt plus answer the model takes, in tokens (a large number if unknown)."""
        return context_length(self.model) or 1 << 30

    # ----------------------------------------------------------------- profiles
    @property
    def default_profile_path(self) -> Path:
        return default_profile_dir(self.name, self.fingerprint)

    def load(self, path: str | Path | None = None, *, guard: Guard | Scans | None = None) -> Profile:
        """Load a profile (default: this model's cached one), checking the fingerprint. A guard
        profile also needs its guard model: ``guard`` if given, else the one already attached,
        else loaded from the profile's record with this model's load options."""
        profile = Profile.load(path or self.default_profile_path, fingerprint=self.fingerprint)
        if profile.n_layers != self.n_layers:
            raise ScansError(
                f"profile has {profile.n_layers} layers, the model {self.n_layers}; "
                "fix: fit a profile for this model"
            )
        if profile.guard:
            self.attach_guard(guard, profile.guard)
        self.profile = profile
        return profile

    def attach_guard(self, guard: Guard | Scans | str | None, record: dict[str, Any] | None = None) -> Guard:
        """Attach a guard model (an object or a model spec; None: the one attached, else the
        record's), checked against a profile's ``record`` when given."""
        self.guard = resolve_guard(self.guard, guard, record, self._load_guard)
        return self.guard

    def _load_guard(self, spec: str, layers_path: str | None = None) -> Guard:
        param = next(self.model.parameters())
        options = dict(self.load_options) or {"dtype": param.dtype, "device": str(param.device)}
        try:
            return Guard.load(spec, layers_path=layers_path, **options)
        except ScansError as exc:
            raise ScansError(f"guard model: {exc}") from None

    def save(self, path: str | Path | None = None) -> Path:
        """Save the profile (default: this model's cache slot)."""
        return self.require_profile().save(path or self.default_profile_path)

    def require_profile(self) -> Profile:
        """The loaded profile, or a one-line error saying how to get one."""
        if self.profile is None:
            raise ScansError("no steering profile loaded; fix: run `scans fit` (Scans.fit) or pass --profile")
        return self.profile

    # ---------------------------------------------------------------------- fit
    def fit(
        self,
        harmful: Sequence[str] | None = None,
        harmless: Sequence[str] | None = None,
        borderline: Sequence[str] | None = None,
        config: FitConfig | None = None,
        *,
        progress: bool = True,
        guard: Guard | Scans | str | None = None,
        **options: Any,
    ) -> Profile:
        """Steps 1-3: refusal vectors, layers, classifier and calibration (see :mod:`scans.fit`).

        Anchors default to the shipped ones: matched harmful/harmless pairs and borderline
        (benign but scary-sounding) prompts. ``config`` holds the options (default: the
        defaults of :class:`~scans.fit_config.FitConfig`); keyword ``options`` replace its fields,
        e.g. ``fit(n_fit=32, seed=1)``. Each side is shuffled with ``seed``; ``n_fit`` per side
        build the vectors (harmful vs harmless); the next ``n_heldout`` per side (None, the default:
        all the others) are read only up to the end of the user's text. The classifier (harmful vs harmless + borderline, a
        shrunk contrast direction, ``shrinkage`` 0.1 by default, None = chosen by 4-fold cross-validation) is
        fitted on the pool of both; with ``calibration="crossfit"`` the threshold is calibrated
        on out-of-fold scores (every anchor scored by a classifier that never saw it); with
        ``"heldout"`` the ``n_heldout`` anchors are kept out of the classifier and calibrate it.
        ``pool``: more labelled prompts for the classifier (default: the shipped taxonomy's dev
        split when the shipped anchors are used, else none), ``pool_size`` of them sampled.
        ``max_harmful_loss``: the safety budget of the decision rule (see :mod:`scans.verdict`);
        None fits the v1 rule; ``max_severe_loss``: the severe class's own, tighter budget (None:
        the same); ``harmful_policy`` (``"auto"``: ``"budget"`` where the pool can calibrate it) with
        ``max_benign_loss``: prompts judged harmful are steered toward refusal only where both
        signals clear that false-refusal budget. The fit's diagnostics are in the profile's ``extra``
        (:class:`~scans.fit_diagnostics.FitDiagnostics`). ``guard`` (a model spec such as
        ``"embedded:qwen-1.5b"``, or a loaded model): the classifiers read that model instead
        (:mod:`scans.guard`).
        """
        config = FitConfig.with_options(config, options)
        config.require_guard_options(guard)  # before a guard model loads
        guard_model = self.attach_guard(guard) if guard is not None else None
        self.profile = fit_profile(
            self.model,
            self.tokenizer,
            config,
            harmful=harmful,
            harmless=harmless,
            borderline=borderline,
            model_name=self.name,
            fingerprint=self.fingerprint,
            n_layers=self.n_layers,
            layers_path=self.layers_path,
            progress=progress,
            guard=guard_model,
        )
        return self.profile

    # ----------------------------------------------------------- classify/steer
    def prefill_prompts(self, prompts: Sequence[str]) -> Prefill:
        """The shared prefill of prompts formatted with the profile's system prompt."""
        profile = self.require_profile()
        batch = build_batch(
            self.tokenizer, prompts, system=profile.system, max_length=context_length(self.model)
        )
        return prefill(self.model, batch)

    def verdicts_of(
        self,
        prompts: Sequence[str],
        pre: Prefill | None = None,
        conversations: Sequence[Sequence[dict[str, str]]] | None = None,
    ) -> list[Verdict]:
        """The verdicts of a (prefilled) batch (:meth:`signal_acts`, then ``verdict.decide``);
        ``prompts`` label the verdicts (and are what a guard reads, or ``conversations``)."""
        return decide(self.require_profile(), self.signal_acts(prompts, pre, conversations), prompts)

    def signal_acts(
        self,
        prompts: Sequence[str],
        pre: Prefill | None = None,
        conversations: Sequence[Sequence[dict[str, str]]] | None = None,
        own: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """What the profile's rule reads for a batch: this model's probe pass on ``pre``
        (prefilled here when None; ``own`` if already computed), or, for a guard profile, the
        guard's own pass over the prompts' texts or the whole ``conversations`` when given (no
        prefill of this model needed then); with the refusal gate also ``refuses`` (N,), whether
        this model's greedy first answer token opens a refusal (:mod:`scans.refusal`)."""
        profile = self.require_profile()

        def own_pass() -> dict[str, torch.Tensor]:
            acts = own
            if acts is None:
                batch = pre if pre is not None else self.prefill_prompts(prompts)
                acts = probe_pass(self.model, self.tokenizer, batch, profile.probe, self.layers_path)
            if profile.refusal_gate:
                acts = {
                    **acts,
                    "refuses": first_token_refuses(self.model, self.tokenizer, acts["inst"][:, -1]),
                }
            return acts

        return rule_acts(
            profile, own_pass, lambda: self.attach_guard(None, profile.guard), prompts, conversations
        )

    def classify(self, prompts: str | Sequence[str], *, batch_size: int | None = None) -> list[Verdict]:
        """Score prompts: s(q) >= threshold means harmful. Batches group prompts of similar length."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        out: list[Verdict | None] = [None] * len(prompts)
        for rows in self._buckets(prompts, batch_size):
            chunk = [prompts[i] for i in rows]
            for i, v in zip(rows, self.verdicts_of(chunk)):  # prefills only where the rule reads it
                out[i] = v
        return [v for v in out if v is not None]

    def _buckets(self, prompts: Sequence[str], batch_size: int | None) -> list[list[int]]:
        """Prompt indices in batches of similar token length (less padding), largest batches first."""
        from .activations import batches_by_length
        from .engine import auto_batch_size

        size = batch_size if batch_size is not None else auto_batch_size(self.model)
        if size < 1:
            raise ScansError(f"batch size {size}; fix: use a batch size of at least 1")
        system = self.require_profile().system
        lengths = [len(encode_chat(self.tokenizer, p, system)) for p in prompts]
        return batches_by_length(lengths, size)

    def plan(
        self, verdicts: Sequence[Verdict], pre: Prefill, enabled: Sequence[bool] | None = None
    ) -> SteeringPlan:
        """The steering plan for a prefilled batch: per-row sign from the verdicts."""
        profile = self.require_profile()
        signs = [v.sign for v in verdicts]
        if enabled is not None:
            signs = [s if on else 0 for s, on in zip(signs, enabled)]
        return profile.steering_plan(signs, (pre.batch.attention_mask.sum(-1) - 1).cpu(), self.layers_path)

    def generate(
        self,
        prompts: str | Sequence[str],
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        compare: bool = False,
        steer: bool = True,
        batch_size: int | None = None,
        progress: bool = True,
        min_new_tokens: int = 0,
    ) -> list[Generation]:
        """Classify each prompt, then generate with per-row steering (one shared prefill)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        config = RowSettings(max_new_tokens, temperature, top_p, seed, min_new_tokens)
        results: list[Generation | None] = [None] * len(prompts)
        buckets = self._buckets(prompts, batch_size)
        for rows in progress_bar(buckets, "generate", progress and len(buckets) > 1):
            chunk = [prompts[i] for i in rows]
            pre = self.prefill_prompts(chunk)
            verdicts = self.verdicts_of(chunk, pre)
            plan = self.plan(verdicts, pre, enabled=[steer] * len(chunk))
            steered = generate_from(self.model, self.tokenizer, pre, config, plan)
            plain = generate_from(self.model, self.tokenizer, pre, config) if compare else [None] * len(chunk)
            for i, p, v, s_, u in zip(rows, chunk, verdicts, steered, plain):
                results[i] = Generation(p, v, s_, u)
        return [g for g in results if g is not None]

    # the server's and ``scans chat``'s path: classify and answer encoded conversations in one
    # shared prefill (the function's ``scans`` argument is this session)
    chat_batch = chat_batch
