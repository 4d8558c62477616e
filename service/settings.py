"""The one place configuration is read: CLI flags override ``LEANSERVE_*`` env vars.

Components receive the fields they use, never the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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

    # HTTP.
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, lt=65536)
    api_keys: Annotated[tuple[str, ...], NoDecode] = Field((), description="comma-separated bearer tokens")
    max_body_bytes: int = Field(10 * 1024 * 1024, gt=0)
    max_running_requests: int = Field(256, gt=0, description="requests handed to the engine at once")
    max_queued_requests: int = Field(1024, ge=0, description="requests waiting for a running slot")
    retry_after_s: int = Field(1, ge=0)
    log_level: str = "info"

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(key.strip() for key in value.split(",") if key.strip())
        return value
