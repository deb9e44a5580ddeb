"""A guard model: the verdict's signals read from another model than the one that answers.

The decision rule (:mod:`scans.verdict`) reads two harmfulness classifiers on block outputs of
the request. By default they read the answering model itself. With a guard (``scans fit
--guard MODEL``), they read a second, usually larger, model on the same prompt rendered with
*its* chat template, while the steering vectors stay those of the answering model; the safety
budget still counts the prompts the answering model refuses. The guard only runs the prompt
(a prefill and the probe pass, no decoding), so it adds one forward pass of the guard per
prompt. Profiles fitted this way record the guard (``Profile.guard``) and load it with the
answering model. In a conversation (the server, ``scans chat``) the guard reads the whole
conversation in its own template, as the answering model reads it in its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .engine import prefill, probe_pass
from .errors import ScansError
from .models import find_layers, load_model, model_fingerprint
from .prompts import build_batch, build_message_batch, context_length


@dataclass
class Guard:
    """A loaded guard: its model and tokenizer, how to load it again (``spec``, the ``--model``
    argument), and where its decoder layers are (``layers_path``)."""

    model: nn.Module
    tokenizer: Any
    name: str
    spec: str
    layers_path: str | None = None

    def __post_init__(self) -> None:
        self.n_layers = len(find_layers(self.model, self.layers_path))
        self.fingerprint = model_fingerprint(self.model)

    @classmethod
    def load(
        cls,
        spec: str,
        *,
        dtype: str | torch.dtype | None = None,
        device: str | None = None,
        device_map: str | dict | None = None,
        trust_remote_code: bool = False,
        layers_path: str | None = None,
    ) -> Guard:
        """Load a guard model (a local directory, hub id, ``.gguf`` file or ``embedded:...``)."""
        loaded = load_model(
            spec, dtype=dtype, device=device, device_map=device_map, trust_remote_code=trust_remote_code
        )
        return cls(loaded.model, loaded.tokenizer, loaded.name, spec, layers_path)

    @classmethod
    def of(cls, other: Any, spec: str | None = None) -> Guard:
        """A guard from a ``Guard`` or any object with ``model``, ``tokenizer`` and ``name``
        (a :class:`scans.Scans`)."""
        if isinstance(other, Guard):
            return other
        return cls(
            other.model, other.tokenizer, other.name, spec or other.name, getattr(other, "layers_path", None)
        )

    def record(self) -> dict[str, Any]:
        """The profile's ``guard`` entry."""
        hidden = int(getattr(getattr(self.model, "config", None), "hidden_size", 0) or 0)
        return {
            "model": self.spec, "name": self.name, "fingerprint": self.fingerprint,
            "n_layers": self.n_layers, "hidden_size": hidden, "layers_path": self.layers_path,
        }  # fmt: skip

    def check(self, record: dict[str, Any]) -> None:
        """One-line error unless this is the guard a profile was fitted with."""
        if record.get("fingerprint") != self.fingerprint:
            raise ScansError(
                f"the profile's guard is {record.get('name')} (fingerprint {record.get('fingerprint')}), "
                f"the loaded guard {self.name} (fingerprint {self.fingerprint}); "
                "fix: load the guard the profile was fitted with, or refit with `scans fit --guard MODEL`"
            )

    @torch.no_grad()
    def acts(
        self,
        prompts: Sequence[str],
        system: str | None,
        probe: str,
        conversations: Sequence[Sequence[dict[str, str]]] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The guard's block outputs (B, L, D) at the instruction end, the probe's last token and
        the end of the (last) user message, for one batch in the guard's own chat template: the
        prompts, or, when given, the whole ``conversations`` (one per prompt; their contents
        read as plain text, so a message cannot forge a turn in the guard's reading)."""
        if conversations is not None:
            if len(conversations) != len(prompts):
                raise ValueError(f"{len(conversations)} conversations for {len(prompts)} prompts")
            batch = build_message_batch(self.tokenizer, conversations, system=system,
                                        max_length=context_length(self.model), parse_special=False)  # fmt: skip
        elif any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise ScansError(
                "a guard reads the prompt text, and a prompt is empty; fix: pass the prompts' texts"
            )
        else:
            batch = build_batch(self.tokenizer, prompts, system=system, max_length=context_length(self.model))
        pre = prefill(self.model, batch)
        return probe_pass(self.model, self.tokenizer, pre, probe, self.layers_path)


def resolve_guard(
    attached: Guard | None,
    given: Any,
    record: dict[str, Any] | None,
    load: Callable[[str, str | None], Guard],
) -> Guard:
    """The guard a backend should hold: ``given`` (a ``Guard``, an object with ``model``,
    ``tokenizer`` and ``name``, or a model spec loaded with ``load(spec, layers_path)``), else
    the ``attached`` one when it is the ``record``'s, else the record's model loaded; checked
    against the profile's ``record`` when there is one."""
    if isinstance(given, str):
        guard = load(given, None)
    elif given is not None:
        guard = Guard.of(given)
    elif attached is not None and (record is None or attached.fingerprint == record.get("fingerprint")):
        guard = attached
    elif record is not None:
        guard = load(str(record["model"]), record.get("layers_path"))
    else:
        raise ScansError("no guard model given; fix: pass a model spec or a loaded model")
    if record is not None:
        guard.check(record)
    return guard


def rule_acts(
    profile: Any,
    own: Callable[[], dict[str, torch.Tensor]],
    guard: Callable[[], Guard],
    prompts: Sequence[str],
    conversations: Sequence[Sequence[dict[str, str]]] | None = None,
) -> dict[str, torch.Tensor]:
    """What a profile's rule reads for one batch, whatever the backend: the answering model's
    probe pass ``own()`` (which holds ``refuses`` when the profile has the refusal gate), or, for
    a guard profile, ``guard()``'s pass over the prompts (or the whole ``conversations``) with
    the answering model's ``refuses``. ``own()`` runs only when the rule reads it."""
    mine = own() if not profile.guard or profile.refusal_gate else None
    if profile.guard:
        acts = guard().acts(prompts, profile.system, profile.probe, conversations)
    else:
        assert mine is not None
        acts = dict(mine)
    if profile.refusal_gate:
        assert mine is not None and "refuses" in mine, "the refusal gate reads the answering model's refusal"
        acts["refuses"] = mine["refuses"]
    return acts
