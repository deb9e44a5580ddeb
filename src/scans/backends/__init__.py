"""Optional inference backends. Importing this package never imports vLLM."""

from __future__ import annotations

BACKENDS = ("transformers", "vllm")
