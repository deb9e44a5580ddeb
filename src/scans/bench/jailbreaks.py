"""The packaged jailbreak material (``scans/bench/jailbreak/``, see its README): harmful requests,
attack templates in six families, and the encodings some templates apply to a request."""

from __future__ import annotations

import base64
import codecs
import json
from collections.abc import Callable
from typing import Any

from ..errors import ScansError

# Template families in the order each request goes through them (see bench/jailbreak/README.md).
JAILBREAK_FAMILIES = (
    "role_play",
    "prefix_injection",
    "refusal_suppression",
    "hypothetical_fiction",
    "hidden_in_task",
    "translation_encoding",
)
_LEET = {"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7"}
_UNLEET = {v: k for k, v in _LEET.items()}

# encoding -> (encode, decode)
_CODECS: dict[str, tuple[Callable[[str], str], Callable[[str], str]]] = {
    "base64": (
        lambda t: base64.b64encode(t.encode("utf-8")).decode("ascii"),
        lambda t: base64.b64decode(t.encode("ascii")).decode("utf-8"),
    ),
    "rot13": (lambda t: codecs.encode(t, "rot13"), lambda t: codecs.decode(t, "rot13")),
    "leetspeak": (
        lambda t: "".join(_LEET.get(c, c) for c in t),
        lambda t: "".join(_UNLEET.get(c, c) for c in t),
    ),
}


def _codec(encoding: str) -> tuple[Callable[[str], str], Callable[[str], str]]:
    if encoding not in _CODECS:
        raise ValueError(f"unknown encoding {encoding!r} (base64, rot13 or leetspeak)")
    return _CODECS[encoding]


def encode(text: str, encoding: str | None) -> str:
    """``text`` as a template receives it: unchanged (None), ``base64``, ``rot13`` or ``leetspeak``.

    Leetspeak replaces the lowercase letters a, e, i, o, s, t with 4, 3, 1, 0, 5, 7; it decodes
    exactly because no request contains those digits (checked when the requests are read).
    """
    return text if encoding is None else _codec(encoding)[0](text)


def decode(text: str, encoding: str | None) -> str:
    """Inverse of :func:`encode`."""
    return text if encoding is None else _codec(encoding)[1](text)


def _packaged_jsonl(name: str) -> list[dict[str, Any]]:
    from importlib.resources import files

    resource = files("scans") / "bench" / "jailbreak" / name
    try:
        lines = resource.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError) as exc:
        raise ScansError(
            f"cannot read the packaged bench/jailbreak/{name}: {exc}; fix: reinstall scans"
        ) from None


def jailbreak_requests() -> list[dict[str, Any]]:
    """The packaged harmful requests: dicts with id, text, category and severity."""
    rows = _packaged_jsonl("requests.jsonl")
    for row in rows:
        if set(row["text"]) & set(_UNLEET):
            raise ScansError(
                f"jailbreak request {row['id']} contains a digit that leetspeak uses; fix: spell it out"
            )
    return rows


def jailbreak_templates() -> list[dict[str, Any]]:
    """The packaged attack templates: dicts with id, family, text (one ``{request}``), inspiration
    and, for encoded ones, encoding."""
    rows = _packaged_jsonl("templates.jsonl")
    for row in rows:
        if row["family"] not in JAILBREAK_FAMILIES or row["text"].count("{request}") != 1:
            raise ScansError(f"jailbreak template {row['id']} is malformed; fix: reinstall scans")
    return rows


def compose(template: dict[str, Any], request: str) -> str:
    """The prompt: ``template``'s text with ``{request}`` replaced by the (encoded) request."""
    return template["text"].replace("{request}", encode(request, template.get("encoding")))
