"""SCANS inside vLLM's workers: the worker extension with the steering and capture hooks.

The engine is built with ``worker_extension_cls=WORKER_EXTENSION``: vLLM imports
:class:`ScansWorkerExtension` by name in every process that owns a part of the model and mixes
it into its worker class, so ``self`` in its methods is the vLLM worker. The driver
(:mod:`scans.backends.vllm`) calls the ``scans_*`` methods by name with
``LLM.collective_rpc("scans_install", args=(...))``; arguments and results are plain data
(strings, ints, lists, float32 bytes), which vLLM's msgpack serialisation carries between
processes without pickle. This module does not import vLLM.

Once per engine step a forward pre-hook on the model reads which request owns which tokens
(``query_start_loc`` and the input batch's request ids) and each request's settings from
``SamplingParams.extra_args["scans"]``, and turns them into per-token gates; a forward hook on
every decoder layer then adds ``gate * alpha_l * v_l`` on the steering layers and copies the
residual stream at the requested capture positions. vLLM's decoder layers return
``(mlp_out, residual)`` and the next layer adds them in place, so the vector is added once (to
``mlp_out``) and captures read ``mlp_out + residual`` inside the hook.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..hooks import add_hooks
from ..steering import steer_gate

WORKER_EXTENSION = "scans.backends.vllm_worker.ScansWorkerExtension"
PROFILE_PLAN = "profile"


def pack(tensor: torch.Tensor) -> bytes:
    """A tensor as float32 bytes (C order), for an RPC argument or result."""
    return tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()


def unpack(data: bytes | bytearray | memoryview, *shape: int) -> torch.Tensor:
    """The float32 tensor of ``shape`` (one entry may be -1) that :func:`pack` wrote."""
    return torch.frombuffer(bytearray(data), dtype=torch.float32).reshape(shape)


@dataclass
class _StepPlan:
    """Per-step gates and captures, built once per forward by the pre-hook."""

    gates: dict[str, torch.Tensor] = field(default_factory=dict)  # plan -> (T,) signed gate
    capture_index: torch.Tensor | None = None  # (K,) token indices
    capture_keys: list[tuple[str, str]] = field(default_factory=list)  # (tag, name) per index
    buffers: list[torch.Tensor | None] = field(default_factory=list)  # per layer (K, D)


class _WorkerState:
    """Hooks, steering plans and captured activations in the process that owns the model."""

    def __init__(self, runner: Any, layers: Any) -> None:
        self.runner = runner
        self.layers = layers
        self.plans: dict[str, dict[int, torch.Tensor]] = {}
        self.step = _StepPlan()
        self.captured: dict[str, dict[str, torch.Tensor]] = {}
        self.handles: list[Any] = []
        self.steps = 0
        self.steered_tokens = 0

    def before_forward(self, positions: torch.Tensor | None) -> None:
        self.step = _StepPlan(buffers=[None] * len(self.layers))
        runner = self.runner
        batch = getattr(runner, "input_batch", None)
        if positions is None or batch is None or not runner.requests:
            return
        n = batch.num_reqs
        if n == 0:
            return
        starts = runner.query_start_loc.cpu[: n + 1].tolist()
        req_ids = batch.req_ids[:n]
        positions = positions.reshape(-1)
        total = positions.shape[0]
        if starts[-1] > total:  # not a request step (e.g. a dummy run)
            return
        pos_cpu = positions.cpu()
        index: list[int] = []
        keys: list[tuple[str, str]] = []
        for i, rid in enumerate(req_ids):
            state = runner.requests.get(rid) if rid is not None else None
            params = getattr(state, "sampling_params", None)
            settings = (getattr(params, "extra_args", None) or {}).get("scans")
            if not settings:
                continue
            lo, hi = starts[i], starts[i + 1]
            if hi <= lo:
                continue
            span = pos_cpu[lo:hi]
            sign = float(settings.get("sign", 0) or 0)
            if sign:
                plan = settings.get("plan", PROFILE_PLAN)
                gate = self.step.gates.get(plan)
                if gate is None:
                    gate = self.step.gates[plan] = torch.zeros(total, dtype=torch.float32)
                window = settings.get("window")  # the profile's steer_window
                on = steer_gate(span, int(settings["start"]), None if window is None else int(window))
                gate[lo:hi] = on.float() * sign
                self.steered_tokens += int(on.sum())
            for name, pos in (settings.get("capture") or {}).items():
                hit = (span == int(pos)).nonzero().flatten()
                if hit.numel():
                    index.append(lo + int(hit[0]))
                    keys.append((settings["tag"], name))
        if index:
            self.step.capture_index = torch.tensor(index, dtype=torch.long, device=positions.device)
            self.step.capture_keys = keys
        self.steps += 1

    def layer_output(self, layer: int, output: Any) -> Any:
        step = self.step
        if not step.gates and step.capture_index is None:
            return output
        mlp_out, residual = output[0], output[1]
        for plan, gate in step.gates.items():
            delta = self.plans.get(plan, {}).get(layer)
            if delta is None:
                continue
            if delta.device != mlp_out.device or delta.dtype != mlp_out.dtype:
                delta = self.plans[plan][layer] = delta.to(mlp_out.device, mlp_out.dtype)
            g = gate[: mlp_out.shape[0]].to(mlp_out.device, mlp_out.dtype)
            # added in the model's dtype (scans.steering adds in float32: the same in fp32)
            mlp_out = mlp_out + g[:, None] * delta[None, :]
        if step.capture_index is not None:
            idx = step.capture_index
            stream = mlp_out[idx].float() + (residual[idx].float() if residual is not None else 0.0)
            step.buffers[layer] = stream.cpu()
        if mlp_out is output[0]:
            return output
        return (mlp_out, *output[1:])

    def after_forward(self) -> None:
        step = self.step
        if step.capture_index is None:
            return
        n_layers = len(self.layers)
        for k, (tag, name) in enumerate(step.capture_keys):
            per_tag = self.captured.setdefault(tag, {})
            acts = per_tag.get(name)
            if acts is None:
                dim = next(b.shape[-1] for b in step.buffers if b is not None)
                acts = per_tag[name] = torch.zeros(n_layers, dim)
            for layer, buf in enumerate(step.buffers):
                if buf is not None:
                    acts[layer] = buf[k]
        self.step = _StepPlan()


class ScansWorkerExtension:
    """Mixed into vLLM's worker class: the RPCs the driver calls by name (``self`` is the worker)."""

    def _scans_model(self) -> Any:
        runner = self.model_runner  # type: ignore[attr-defined]
        return runner.get_model() if hasattr(runner, "get_model") else runner.model

    def _scans_state(self) -> _WorkerState:
        state = getattr(self._scans_model(), "_scans_state", None)
        if state is None:
            raise RuntimeError("the scans hooks are not installed in this worker; call scans_install first")
        return state

    def scans_install(self, layers_path: str | None = None) -> dict[str, Any]:
        """Install the SCANS hooks on this worker's model (once); returns its layer count,
        dtype and device."""
        from ..models import find_layers

        model = self._scans_model()
        state = getattr(model, "_scans_state", None)
        if state is None:
            layers = find_layers(model, layers_path)
            state = _WorkerState(self.model_runner, layers)  # type: ignore[attr-defined]

            def pre(_module: Any, args: tuple, kwargs: dict[str, Any]) -> None:
                positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
                state.before_forward(positions)

            def post(_module: Any, _args: tuple, _output: Any) -> None:
                state.after_forward()

            def make(layer: int):
                def hook(_module: Any, _args: tuple, output: Any) -> Any:
                    return state.layer_output(layer, output)

                return hook

            state.handles = add_hooks(
                pre=[(model, pre)],
                post=[(model, post), *((layer, make(i)) for i, layer in enumerate(layers))],
            )
            model._scans_state = state
        param = next(model.parameters())
        return {"n_layers": len(state.layers), "dtype": str(param.dtype), "device": str(param.device)}

    def scans_set_plan(self, name: str, layers: Sequence[int], deltas: bytes) -> None:
        """Register steering plan ``name``: ``deltas`` packs the unsigned additions
        ``alpha_l * v_l`` (one row per entry of ``layers``) as float32 bytes."""
        rows = unpack(deltas, len(layers), -1)
        self._scans_state().plans[name] = {int(layer): rows[i] for i, layer in enumerate(layers)}

    def scans_take(self, tags: Sequence[str]) -> dict[str, dict[str, bytes]]:
        """Hand over (and forget) the activations captured for ``tags``:
        ``{tag: {name: packed (n_layers, D)}}``."""
        captured = self._scans_state().captured
        return {t: {n: pack(a) for n, a in captured.pop(t, {}).items()} for t in tags}

    def scans_stats(self) -> dict[str, int]:
        """Hook counters: engine steps seen, tokens steered, plans registered."""
        state = self._scans_state()
        return {"steps": state.steps, "steered_tokens": state.steered_tokens, "plans": len(state.plans)}
