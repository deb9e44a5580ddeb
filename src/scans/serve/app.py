"""The HTTP front end: FastAPI app, OpenAI-compatible endpoints, limits, auth, metrics."""

from __future__ import annotations

import asyncio
import copy
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..decode import FINISH_CANCELLED, RowSettings
from ..errors import ScansError
from ..prompts import context_length, encode_messages_with_end
from .batcher import Batcher, Job, QueueFull
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
    scans_field,
    scans_headers,
)

log = logging.getLogger("scans.serve")
ENDPOINTS = ("/v1/chat/completions", "/v1/models", "/health", "/metrics")


class _StatusMiddleware:
    """Counts every response by endpoint and status; chat latency until the last byte."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

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

        try:
            await self.app(scope, receive, wrapped)
        finally:
            self.metrics.requests.labels(endpoint, str(status["code"])).inc()


def _error(exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def create_app(scans: Any, config: ServeConfig | None = None) -> FastAPI:
    """The app for a ``Scans`` with a loaded profile; the batcher starts with the app."""
    config = config or ServeConfig()
    profile = scans._require_profile()
    model_name = config.served_model_name or scans.name
    # the vllm backend has no torch model here: its engine's max_model_len is the context
    context = getattr(scans, "max_model_len", None) or context_length(scans.model) or 1 << 30
    limits = Limits(max_tokens_limit=config.max_tokens_limit, default_max_tokens=config.default_max_tokens)
    front_tokenizer = copy.deepcopy(scans.tokenizer)  # the worker owns scans.tokenizer
    batcher = Batcher(scans, max_batch_size=config.max_batch_size, max_queue=config.max_queue,
                      window_s=config.batch_window_ms / 1000)  # fmt: skip
    metrics = Metrics(lambda: batcher.depth, lambda: batcher.running)
    batcher.on_batch, batcher.on_forward = metrics.batch_size.observe, metrics.forward
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            batcher.stop()

    app = FastAPI(title="scans", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher, app.state.metrics, app.state.config = batcher, metrics, config
    app.add_middleware(_StatusMiddleware, metrics=metrics)

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

    def check_auth(request: Request) -> None:
        if config.api_key is None:
            return
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(token.encode(), config.api_key.encode()):
            raise APIError(401, "missing or wrong API key; pass it as 'Authorization: Bearer KEY'",
                           type="invalid_request_error", code="invalid_api_key")  # fmt: skip

    async def read_body(request: Request) -> Any:
        length = request.headers.get("content-length")
        too_big = APIError(413, f"request body is larger than {config.max_body_bytes} bytes",
                           code="request_too_large")  # fmt: skip
        if length is not None and length.isdigit() and int(length) > config.max_body_bytes:
            raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > config.max_body_bytes:
                raise too_big
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise APIError(400, f"could not parse the JSON body: {exc}", code="invalid_json") from None

    def encode(req: ChatRequest) -> tuple[list[int], int]:
        try:
            ids, end = encode_messages_with_end(front_tokenizer, req.messages, profile.system)
        except ScansError as exc:
            raise APIError(400, str(exc).split("; fix:")[0], param="messages", code="invalid_value") from None
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

    def timeout_error() -> APIError:
        return APIError(504, f"the request did not finish within {config.request_timeout_s:g} s",
                        type="timeout_error", code="timeout")  # fmt: skip

    def record(info: dict[str, Any], prompt_tokens: int, completion_tokens: int) -> None:
        metrics.prompt_tokens.inc(prompt_tokens)
        metrics.completion_tokens.inc(completion_tokens)
        metrics.verdicts.labels(info["decision"], str(info["steered"]).lower()).inc()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": model_name,
            "queue_depth": batcher.depth,
            "running_rows": batcher.running,
        }

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        check_auth(request)
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                           "owned_by": "scans"}]}  # fmt: skip

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        check_auth(request)
        req = parse_chat_request(await read_body(request), limits)
        ids, end = encode(req)
        max_tokens = req.max_tokens or max(1, min(limits.default_max_tokens, context - len(ids)))
        settings = RowSettings(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                               seed=req.seed, stop=req.stop)  # fmt: skip
        loop = asyncio.get_running_loop()
        job = Job((ids, end), req.messages[-1]["content"], settings, req.steer, req.stream, loop)
        try:
            batcher.submit(job)
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
                raise APIError(500, f"generation failed: {type(payload).__name__}", type="server_error")
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
                    err = (
                        timeout_error()
                        if kind == "timeout"
                        else APIError(500, "generation failed", type="server_error")
                    )
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


def run_server(scans: Any, config: ServeConfig, log_level: str = "info") -> None:
    """Serve until interrupted (uvicorn, one process, one model worker thread)."""
    import uvicorn

    app = create_app(scans, config)
    uvicorn.run(app, host=config.host, port=config.port, log_level=log_level, timeout_graceful_shutdown=5)
