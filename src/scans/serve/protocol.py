"""OpenAI chat-completions wire format: request validation, error bodies, response bodies."""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_STOP = 4
# Temperatures below this are greedy: dividing logits by them overflows float32 (inf/nan).
MIN_TEMPERATURE = 1e-5
MAX_JSON_DEPTH = 32  # nesting of the request body (messages with text parts need 5)
MAX_NUMBER_CHARS = 64  # longest number literal accepted in the body
# OpenAI parameters accepted and ignored (they do not change what is generated) ...
IGNORED = {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "prediction", "modalities",
           "reasoning_effort", "web_search_options"}  # fmt: skip
# ... accepted only with the value that means "off" (anything else is a 400)
NEUTRAL = {"frequency_penalty": (0, 0.0), "presence_penalty": (0, 0.0), "logit_bias": ({},),
           "top_logprobs": (0,), "response_format": ({"type": "text"},), "tool_choice": ("none",),
           "function_call": ("none",), "tools": ([],), "functions": ([],), "logprobs": (False,)}  # fmt: skip
KNOWN = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "seed",
         "stream", "stream_options", "n", "scans"}  # fmt: skip


class APIError(Exception):
    """An error answered with an OpenAI-style body ``{"error": {message, type, param, code}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _number_literal(text: str) -> Any:
    if len(text) > MAX_NUMBER_CHARS:
        raise _bad(f"a number in the body has {len(text)} characters (at most {MAX_NUMBER_CHARS})", None,
                   "invalid_json")  # fmt: skip
    return int(text) if text.lstrip("-").isdigit() else float(text)


def _no_constant(name: str) -> Any:
    raise _bad(f"{name} is not valid JSON", None, "invalid_json")


def _depth_ok(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return False
            children = item.values() if isinstance(item, dict) else item
            stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return True


def parse_json_body(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Decode a request body; raises ``APIError`` (400) for bad UTF-8 or JSON, NaN/Infinity,
    number literals longer than ``MAX_NUMBER_CHARS`` and nesting deeper than ``max_depth``."""
    try:
        value = json.loads(raw, parse_int=_number_literal, parse_float=_number_literal,
                           parse_constant=_no_constant)  # fmt: skip
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(f"could not parse the JSON body: {exc}", None, "invalid_json") from None
    except RecursionError:
        raise _bad(f"the JSON body is nested deeper than {max_depth} levels", None, "invalid_json") from None
    except ValueError as exc:  # e.g. a number Python refuses to convert
        raise _bad(f"could not parse the JSON body: {exc}", None, "invalid_json") from None
    if not _depth_ok(value, max_depth):
        raise _bad(f"the JSON body is nested deeper than {max_depth} levels", None, "invalid_json")
    return value


@dataclass
class Limits:
    """What a request may ask for."""

    max_tokens_limit: int = 1024  # largest max_tokens accepted
    default_max_tokens: int = 256  # when the request gives none
    max_messages: int = 256


@dataclass
class ChatRequest:
    """A validated chat-completions request."""

    messages: list[dict[str, str]]
    max_tokens: int | None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False
    steer: bool = True
    model: str | None = None


def _bad(message: str, param: str | None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(
    body: dict[str, Any], key: str, default: float, lo: float, hi: float, lo_open: bool = False
) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(f"'{key}' must be a number, got {type(value).__name__}", key, "invalid_type")
    if value > hi or value < lo or (lo_open and value == lo):
        left = "(" if lo_open else "["
        raise _bad(f"'{key}' is {value}; it must lie in {left}{lo}, {hi}]", key, "invalid_value")
    return float(value)


def _content(value: Any, param: str) -> str:
    """A message's content: a string or a list of text parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for j, part in enumerate(value):
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise _bad(
                    f"{param}[{j}] must be a text part {{'type': 'text', 'text': ...}}; "
                    "only text content is supported",
                    f"{param}[{j}]",
                    "invalid_type",
                )
            texts.append(part["text"])
        return "".join(texts)
    raise _bad(f"'{param}' must be a string or a list of text parts", param, "invalid_type")


def _messages(value: Any, limits: Limits) -> list[dict[str, str]]:
    if value is None:
        raise _bad("'messages' is required", "messages", "missing_required_parameter")
    if not isinstance(value, list):
        raise _bad("'messages' must be a list of {role, content} objects", "messages", "invalid_type")
    if not value:
        raise _bad("'messages' must not be empty", "messages", "empty_array")
    if len(value) > limits.max_messages:
        raise _bad(f"at most {limits.max_messages} messages per request", "messages", "too_many_messages")
    out = []
    for i, m in enumerate(value):
        param = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(f"'{param}' must be an object with 'role' and 'content'", param, "invalid_type")
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise _bad(
                f"'{param}.role' is {role!r}; supported roles: {', '.join(ROLES)}",
                f"{param}.role",
                "invalid_value",
            )
        content = m.get("content")
        if content is None and ROLES[role] == "assistant":
            content = ""
        out.append({"role": ROLES[role], "content": _content(content, f"{param}.content")})
    if out[-1]["role"] != "user":
        raise _bad(
            "the last message must come from the user", f"messages[{len(out) - 1}].role", "invalid_value"
        )
    if not out[-1]["content"].strip():
        raise _bad("the last user message is empty", f"messages[{len(out) - 1}].content", "invalid_value")
    return out


def parse_chat_request(body: Any, limits: Limits) -> ChatRequest:
    """Validate a decoded JSON body; raises ``APIError`` (400) naming the bad parameter."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object", None, "invalid_type")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad("'model' must be a string", "model", "invalid_type")
    messages = _messages(body.get("messages"), limits)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    if max_tokens is not None:
        if not _is_int(max_tokens):
            raise _bad(f"'{key}' must be an integer", key, "invalid_type")
        if max_tokens < 1:
            raise _bad(f"'{key}' is {max_tokens}; it must be at least 1", key, "invalid_value")
        if max_tokens > limits.max_tokens_limit:
            raise _bad(
                f"'{key}' is {max_tokens}, above this server's limit of {limits.max_tokens_limit}",
                key,
                "max_tokens_too_large",
            )
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    if temperature < MIN_TEMPERATURE:
        temperature = 0.0  # greedy
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise _bad("'stop' must be a string or a list of strings", "stop", "invalid_type")
    if len(stop) > MAX_STOP or any(not s for s in stop):
        raise _bad(f"'stop' takes at most {MAX_STOP} non-empty strings", "stop", "invalid_value")
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise _bad("'seed' must be an integer", "seed", "invalid_type")
    if seed is not None and not -(2**63) <= seed < 2**64:
        raise _bad("'seed' is out of range", "seed", "invalid_value")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad("'stream' must be a boolean", "stream", "invalid_type")
    options = body.get("stream_options")
    if options is not None and (
        not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool)
    ):
        raise _bad(
            "'stream_options' must be an object like {'include_usage': true}",
            "stream_options",
            "invalid_type",
        )
    n = body.get("n")
    if n is not None and (not _is_int(n) or n != 1):
        raise _bad("only n=1 is supported", "n", "invalid_value")
    _check_unsupported(body)
    return ChatRequest(
        messages=messages,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        stop=stop,
        seed=seed,
        stream=stream,
        include_usage=bool(options and options.get("include_usage")),
        steer=_steer(body.get("scans")),
        model=model,
    )


def _check_unsupported(body: dict[str, Any]) -> None:
    """400 for parameters this server does not implement (silently ignoring them would change
    what the caller gets without telling them); ``IGNORED`` ones and neutral values pass."""
    for key, value in body.items():
        if key in KNOWN or key in IGNORED or value is None:
            continue
        if key in NEUTRAL:
            if any(value == ok and type(value) is type(ok) for ok in NEUTRAL[key]):
                continue
            raise _bad(f"'{key}' is not supported by this server (only {NEUTRAL[key][0]!r})", key,
                       "unsupported_parameter")  # fmt: skip
        raise _bad(f"unknown parameter '{key}'", key, "unsupported_parameter")


def _steer(value: Any) -> bool:
    """``scans: "off"`` / ``{"steer": false}`` asks for the unsteered answer."""
    if value is None or value == "on":
        return True
    if value == "off":
        return False
    if isinstance(value, dict) and set(value) <= {"steer"} and isinstance(value.get("steer", True), bool):
        return bool(value.get("steer", True))
    raise _bad('\'scans\' must be "on", "off" or {"steer": true|false}', "scans", "invalid_value")


# ------------------------------------------------------------------------ responses
def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def scans_field(
    score: float, harmful: bool, sign: int, threshold: float, decision: str = ""
) -> dict[str, Any]:
    """The response's ``scans`` field; ``decision`` is the rule's branch (harmful, abstain, answers, benign)."""
    return {"score": round(score, 6), "harmful": harmful, "sign": sign, "steered": sign != 0,
            "threshold": round(threshold, 6),
            "decision": decision or ("harmful" if harmful else "benign")}  # fmt: skip


def scans_headers(info: dict[str, Any]) -> dict[str, str]:
    return {
        "X-Scans-Score": f"{info['score']:.6f}",
        "X-Scans-Verdict": info.get("decision") or ("harmful" if info["harmful"] else "benign"),
        "X-Scans-Sign": str(info["sign"]),
    }


def completion_body(
    cid: str,
    model: str,
    text: str,
    finish: str,
    prompt_tokens: int,
    completion_tokens: int,
    info: dict[str, Any],
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "system_fingerprint": None,
        "scans": info,
    }


def chunk_body(
    cid: str,
    model: str,
    created: int,
    delta: dict[str, Any] | None,
    finish: str | None = None,
    *,
    usage: dict[str, int] | None = None,
    info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }
    if usage is not None:
        body["usage"] = usage
    if info is not None:
        body["scans"] = info
    return body
