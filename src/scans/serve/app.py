"""The HTTP front end: FastAPI app, OpenAI-compatible endpoints, limits, auth, metrics, drain
(the uvicorn server that runs it: :mod:`scans.serve.server`).

One module (about 400 lines) because the endpoints share one app state: the batcher, the
limits, the tokenizer pool and the drain.
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..decode import FINISH_CANCELLED, RowSettings
from ..errors import ScansError
from ..prompts import context_length, encode_messages_with_end
from .batcher import Batcher, Job, QueueFull, ShuttingDown
from .config import ServeConfig
from .metrics import Metrics
from .protocol import (
    APIError,
    ChatRequest,
    Limits,
    chunk_body,
    completion_body,
    completion_id,
    error_body,
    parse_chat_request,
    parse_json_body,
    scans_field,
    scans_headers,
)

log = logging.getLogger("scans.serve")
ENDPOINTS = ("/v1/chat/completions", "/v1/models", "/health", "/metrics")


class Drain:
    """Graceful shutdown: ``begin`` (thread-safe, from a signal handler) makes new chat
    requests get 503, lets accepted ones finish for up to ``timeout`` seconds, then fails
    the rest (``ShuttingDown``: an OpenAI error body, or an error event and ``[DONE]``) and
    calls ``on_done`` once no chat request is in flight."""

    def __init__(self, batcher: Batcher, timeout: float) -> None:
        self.batcher, self.timeout = batcher, timeout
        self.draining = False
        self.in_flight = 0  # chat requests being answered (counted by _StatusMiddleware)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None

    def begin(self, on_done: Callable[[], None]) -> None:
        if self.loop is None:
            on_done()
            return
        self.loop.call_soon_threadsafe(self._start, on_done)

    def _start(self, on_done: Callable[[], None]) -> None:
        if not self.draining:
            self.draining = True
            log.warning(
                "draining: finishing accepted requests (at most %g s), refusing new ones", self.timeout
            )
            self._task = asyncio.ensure_future(self._run(on_done))

    async def _run(self, on_done: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while (self.in_flight or self.batcher.busy) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.in_flight or self.batcher.busy:
            self.batcher.abort(ShuttingDown(
                f"the server is shutting down and the request did not finish within {self.timeout:g} s"))  # fmt: skip
            end = loop.time() + 5
            while self.in_flight and loop.time() < end:
                await asyncio.sleep(0.05)
        on_done()


class _StatusMiddleware:
    """Counts every response by endpoint and status; chat latency until the last byte."""

    def __init__(self, app: Any, metrics: Metrics, drain: Drain) -> None:
        self.app, self.metrics, self.drain = app, metrics, drain

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"
        status = {"code": 500}

        async def wrapped(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                if endpoint == "/v1/chat/completions" and status["code"] == 200:
                    self.metrics.latency.observe(time.perf_counter() - start)

        chat = endpoint == "/v1/chat/completions"
        self.drain.in_flight += chat
        try:
            await self.app(scope, receive, wrapped)
        finally:
            self.drain.in_flight -= chat
            self.metrics.requests.labels(endpoint, str(status["code"])).inc()


def _error(exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def create_app(scans: Any, config: ServeConfig | None = None) -> FastAPI:
    """The app for a ``Scans`` with a loaded profile; the batcher starts with the app."""
    config = config or ServeConfig()
    profile = scans.require_profile()
    model_name = config.served_model_name or scans.name
    context = scans.max_model_len
    limits = Limits(max_tokens_limit=config.max_tokens_limit, default_max_tokens=config.default_max_tokens)
    # the worker owns scans.tokenizer; each tokenizer thread has its own copy
    base_tokenizer = copy.deepcopy(scans.tokenizer)
    # a guard profile's guard reads the whole conversation in its own template: a conversation
    # beyond the guard's context is the client's error (400), found before it joins a batch
    guard = getattr(scans, "guard", None) if profile.guard else None
    guard_context = context_length(guard.model) if guard is not None else None
    base_guard_tokenizer = copy.deepcopy(guard.tokenizer) if guard_context else None
    local = threading.local()
    pool = ThreadPoolExecutor(config.tokenizer_threads, thread_name_prefix="scans-tokenize")
    batcher = Batcher(scans, max_batch_size=config.max_batch_size, max_queue=config.max_queue,
                      window_s=config.batch_window_ms / 1000, mode=config.batching)  # fmt: skip
    metrics = Metrics(lambda: batcher.depth, lambda: batcher.running)
    batcher.on_batch, batcher.on_forward = metrics.batch_size.observe, metrics.forward
    drain = Drain(batcher, config.drain_timeout_s)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        drain.loop = asyncio.get_running_loop()
        batcher.start()
        try:
            yield
        finally:
            batcher.stop()
            pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="scans", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher, app.state.metrics, app.state.config, app.state.drain = batcher, metrics, config, drain
    app.add_middleware(_StatusMiddleware, metrics=metrics, drain=drain)

    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        body = error_body(str(exc.detail), kind, None, None)
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(
            error_body(f"internal error: {type(exc).__name__}", "server_error"), status_code=500
        )

    def authorized(request: Request) -> bool:
        if config.api_key is None:
            return True
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        return hmac.compare_digest(token.encode(), config.api_key.encode())

    def check_auth(request: Request) -> None:
        if not authorized(request):
            raise APIError(401, "missing or wrong API key; pass it as 'Authorization: Bearer KEY'",
                           type="invalid_request_error", code="invalid_api_key")  # fmt: skip

    async def read_body(request: Request) -> bytes:
        """The body, at most ``max_body_bytes`` (413), within ``body_timeout_s`` (408)."""
        length = request.headers.get("content-length")
        too_big = APIError(413, f"request body is larger than {config.max_body_bytes} bytes",
                           code="request_too_large")  # fmt: skip
        if length is not None and length.isdigit() and int(length) > config.max_body_bytes:
            raise too_big
        chunks, size = [], 0

        async def read() -> None:
            nonlocal size
            async for chunk in request.stream():
                size += len(chunk)
                if size > config.max_body_bytes:
                    raise too_big
                chunks.append(chunk)

        try:
            await asyncio.wait_for(read(), config.body_timeout_s)
        except asyncio.TimeoutError:
            raise APIError(408, f"the request body did not arrive within {config.body_timeout_s:g} s",
                           code="request_timeout", headers={"Connection": "close"}) from None  # fmt: skip
        return b"".join(chunks)

    async def off_loop(fn: Callable[..., Any], *args: Any) -> Any:
        """Run CPU work (JSON decoding, tokenization) in the tokenizer threads."""
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    def tokenizer() -> Any:
        tok = getattr(local, "tokenizer", None)
        if tok is None:
            tok = local.tokenizer = copy.deepcopy(base_tokenizer)
        return tok

    def guard_tokenizer() -> Any:
        tok = getattr(local, "guard_tokenizer", None)
        if tok is None:
            tok = local.guard_tokenizer = copy.deepcopy(base_guard_tokenizer)
        return tok

    def encode(req: ChatRequest) -> tuple[list[int], int]:
        try:
            ids, end = encode_messages_with_end(tokenizer(), req.messages, profile.system,
                                                parse_special=config.allow_special_tokens)  # fmt: skip
            guard_ids = (
                encode_messages_with_end(
                    guard_tokenizer(), req.messages, profile.system, parse_special=False
                )[0]
                if guard_context
                else []
            )
        except ScansError as exc:
            raise APIError(400, str(exc).split("; fix:")[0], param="messages", code="invalid_value") from None
        if guard_context and len(guard_ids) > guard_context:
            raise APIError(400, f"the conversation is {len(guard_ids)} tokens in the guard model's template, above "
                           f"its context of {guard_context}", param="messages",
                           code="context_length_exceeded")  # fmt: skip
        limit = min(config.max_prompt_tokens, context - 1)
        if len(ids) > limit:
            raise APIError(400, f"the prompt is {len(ids)} tokens, above this server's limit of {limit}",
                           param="messages", code="context_length_exceeded")  # fmt: skip
        if req.max_tokens is not None and len(ids) + req.max_tokens > context:
            raise APIError(400, f"the prompt ({len(ids)} tokens) plus max_tokens ({req.max_tokens}) exceeds "
                           f"the model's context of {context}", param="max_tokens",
                           code="context_length_exceeded")  # fmt: skip
        return ids, end

    async def watch_disconnect(request: Request) -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    async def next_event(job: Job, gone: asyncio.Task, deadline: float) -> tuple[str, Any]:
        """The job's next event; cancels the job on timeout or client disconnect."""
        getter = asyncio.ensure_future(job.events.get())
        left = deadline - job.loop.time()
        done, _ = await asyncio.wait(
            {getter, gone}, timeout=max(left, 0), return_when=asyncio.FIRST_COMPLETED
        )
        if getter in done:
            return getter.result()
        getter.cancel()
        job.cancel()
        batcher.wake()
        if gone in done:
            return "gone", None
        return "timeout", None

    def job_error(exc: BaseException) -> APIError:
        if isinstance(exc, ShuttingDown):
            return APIError(503, str(exc) or "the server is shutting down", type="server_error",
                            code="server_shutting_down", headers={"Retry-After": str(config.retry_after_s)})  # fmt: skip
        detail = str(exc).splitlines()[0][:200] if str(exc) else ""
        return APIError(500, f"generation failed: {type(exc).__name__}" + (f": {detail}" if detail else ""),
                        type="server_error", code="generation_failed")  # fmt: skip

    def timeout_error() -> APIError:
        return APIError(504, f"the request did not finish within {config.request_timeout_s:g} s",
                        type="timeout_error", code="timeout")  # fmt: skip

    def record(info: dict[str, Any], prompt_tokens: int, completion_tokens: int) -> None:
        metrics.prompt_tokens.inc(prompt_tokens)
        metrics.completion_tokens.inc(completion_tokens)
        metrics.verdicts.labels(info["decision"], str(info["steered"]).lower()).inc()

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        body: dict[str, Any] = {"status": "draining" if drain.draining else "ok"}
        if config.metrics_public or authorized(request):
            body.update(model=model_name, queue_depth=batcher.depth, running_rows=batcher.running)
        return JSONResponse(body, status_code=503 if drain.draining else 200)

    @app.get("/metrics")
    async def metrics_endpoint(request: Request) -> Response:
        if not config.metrics_public:
            check_auth(request)
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        check_auth(request)
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                           "owned_by": "scans"}]}  # fmt: skip

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        check_auth(request)
        if drain.draining:
            raise APIError(503, "the server is shutting down; retry on another instance or later",
                           type="server_error", code="server_shutting_down",
                           headers={"Retry-After": str(config.retry_after_s)})  # fmt: skip
        try:
            raw = await read_body(request)
        except ClientDisconnect:
            return Response(status_code=499)  # nobody to answer; counted, not logged
        req = parse_chat_request(await off_loop(parse_json_body, raw), limits)
        ids, end = await off_loop(encode, req)
        max_tokens = req.max_tokens or max(1, min(limits.default_max_tokens, context - len(ids)))
        settings = RowSettings(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                               seed=req.seed, stop=req.stop)  # fmt: skip
        loop = asyncio.get_running_loop()
        job = Job((ids, end), req.messages[-1]["content"], settings, req.steer, req.stream, loop,
                  messages=req.messages)  # fmt: skip
        try:
            batcher.submit(job)
        except ShuttingDown as exc:
            raise job_error(exc) from None
        except QueueFull:
            metrics.rejected.inc()
            raise APIError(429, f"the server's queue is full ({config.max_queue} waiting); retry later",
                           type="rate_limit_error", code="queue_full",
                           headers={"Retry-After": str(config.retry_after_s)}) from None  # fmt: skip
        deadline = loop.time() + config.request_timeout_s
        gone = asyncio.ensure_future(watch_disconnect(request))
        handed_off = False  # the stream generator takes over the job and the watcher

        async def until_not_delta() -> Any:
            kind, payload = await next_event(job, gone, deadline)
            while kind == "delta":  # (non-streaming jobs get no deltas)
                kind, payload = await next_event(job, gone, deadline)
            if kind == "timeout":
                raise timeout_error()
            if kind == "error":
                raise job_error(payload)
            return None if kind == "gone" else payload

        try:
            payload = await until_not_delta()  # the verdict comes first
            if payload is None:
                return Response(status_code=499)
            verdict, sign = payload
            info = scans_field(verdict.score, verdict.harmful, sign, profile.threshold, verdict.decision)
            headers = scans_headers(info)
            cid = completion_id()
            if not req.stream:
                done = await until_not_delta()
                if done is None:
                    return Response(status_code=499)
                result = done.result
                record(info, len(ids), len(result.token_ids))
                body = completion_body(cid, model_name, result.text, result.finish_reason, len(ids),
                                       len(result.token_ids), info)  # fmt: skip
                return JSONResponse(body, headers=headers)
            handed_off = True
        finally:
            if not handed_off:
                gone.cancel()
                job.cancel()
                batcher.wake()

        async def stream() -> AsyncIterator[str]:
            created_at = int(time.time())

            def sse(body: dict[str, Any]) -> str:
                return f"data: {json.dumps(body)}\n\n"

            try:
                first = {"role": "assistant", "content": ""}
                yield sse(chunk_body(cid, model_name, created_at, first, info=info))
                while True:
                    kind, payload = await next_event(job, gone, deadline)
                    if kind == "delta":
                        yield sse(chunk_body(cid, model_name, created_at, {"content": payload}))
                        continue
                    if kind == "done":
                        result = payload.result
                        if result.finish_reason == FINISH_CANCELLED:
                            return
                        record(info, len(ids), len(result.token_ids))
                        yield sse(
                            chunk_body(cid, model_name, created_at, {}, result.finish_reason, info=info)
                        )
                        if req.include_usage:
                            n = len(result.token_ids)
                            usage = {
                                "prompt_tokens": len(ids),
                                "completion_tokens": n,
                                "total_tokens": len(ids) + n,
                            }
                            yield sse(chunk_body(cid, model_name, created_at, None, usage=usage))
                        yield "data: [DONE]\n\n"
                        return
                    if kind == "gone":
                        return
                    err = timeout_error() if kind == "timeout" else job_error(payload)
                    yield sse(err.body())
                    yield "data: [DONE]\n\n"
                    return
            finally:
                gone.cancel()
                job.cancel()
                batcher.wake()

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={**headers, "Cache-Control": "no-cache"})  # fmt: skip

    return app
