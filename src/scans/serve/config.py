"""The server's settings (importable without the serve extra; read by the app and set by the
command-line options)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeConfig:
    """Server settings (the ``scans serve`` flags)."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_batch_size: int = 16
    max_queue: int = 256
    batch_window_ms: float = 10.0
    max_prompt_tokens: int = 4096
    max_tokens_limit: int = 1024
    default_max_tokens: int = 256
    max_body_bytes: int = 1_000_000
    request_timeout_s: float = 300.0
    retry_after_s: int = 1
    served_model_name: str | None = None
    batching: str = "continuous"  # or "closed" (the vLLM backend schedules in its engine)
    drain_timeout_s: float = 30.0
    metrics_public: bool = False
    allow_special_tokens: bool = False
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_s: float = 5.0
    max_connections: int = 1024
    tokenizer_threads: int = 2
