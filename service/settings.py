"""The one place configuration is read: CLI flags override ``LEANSERVE_*`` env vars.

Components receive the fields they use, never the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODEL = "default"


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "leanserve"


class Settings(BaseSettings):
    """Everything a leanserve process can be told, validated once at start-up."""

    model_config = SettingsConfigDict(env_prefix="LEANSERVE_", extra="forbid", protected_namespaces=())

    # What to serve.
    model: str = Field(DEFAULT_MODEL, description="'default', a local HF directory, or a hub id")
    served_model_name: str | None = Field(None, description="name clients use; defaults to the model's")
    cache_dir: Path = Field(default_factory=_default_cache_dir)

    # Engine (passed through to vLLM).
    max_model_len: int | None = Field(None, gt=0)
    dtype: str = "auto"
    enforce_eager: bool = False
    max_num_seqs: int | None = Field(None, gt=0)
    tensor_parallel_size: int = Field(1, gt=0)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    kv_cache_gib: float | None = Field(None, gt=0, description="KV cache size in GiB (default: 4 on CPU, vLLM's choice on GPU)")
    seed: int = 0

    # Speculative decoding (engine/plugins/speculative): lossless, verified by the target.
    speculative: str | None = Field(None, description="ngram | suffix | draft:MODEL | mtp[:HEAD_DIR]")
    num_speculative_tokens: int | None = Field(None, gt=0, le=16, description="draft length K (default per method)")

    # HTTP.
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, lt=65536)
    api_keys: Annotated[tuple[str, ...], NoDecode] = Field((), description="comma-separated bearer tokens")
    public_paths: Annotated[tuple[str, ...], NoDecode] = Field(
        ("/health", "/ready", "/metrics"), description="comma-separated paths served without an API key")
    key_requests_per_minute: int | None = Field(None, gt=0, description="per API key (needs --api-key)")
    key_tokens_per_minute: int | None = Field(None, gt=0, description="prompt + generated tokens per API key")

    # Admission, deadlines, shutdown.
    max_running_requests: int = Field(256, gt=0, description="requests handed to the engine at once")
    max_queued_requests: int = Field(1024, ge=0, description="requests waiting for a running slot")
    retry_after_s: int = Field(1, ge=0)
    request_timeout_s: float | None = Field(None, gt=0, description="deadline per request (a request may ask less)")
    drain_timeout_s: float = Field(30.0, ge=0, description="on SIGTERM, how long in-flight requests may finish")

    # Input bounds (each violation is a 400 naming the field).
    max_body_bytes: int = Field(10 * 1024 * 1024, gt=0)
    max_prompt_tokens: int | None = Field(None, gt=0, description="default: the model's context length")
    max_tokens_limit: int | None = Field(None, gt=0, description="largest max_tokens a request may ask")
    max_n: int = Field(16, gt=0)
    max_prompts: int = Field(64, gt=0, description="prompts in one /v1/completions request")
    max_stop_sequences: int = Field(4, ge=0)
    max_logprobs: int = Field(20, ge=0)

    # Logs.
    log_level: str = "info"
    log_format: Literal["json", "text"] = "json"
    log_prompts: bool = Field(False, description="include prompt text in logs")

    @field_validator("speculative")
    @classmethod
    def _check_speculative(cls, value: str | None) -> str | None:
        if value is not None:
            from engine.plugins.speculative.config import parse_speculative

            parse_speculative(value)  # ValueError -> a validation error naming the flag
        return value

    @field_validator("api_keys", "public_paths", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(key.strip() for key in value.split(",") if key.strip())
        return value
