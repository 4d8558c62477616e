"""The one place configuration is read: CLI flags override ``LEANSERVE_*`` env vars.

Components receive the fields they use, never the environment. ``Settings`` is the
gateway's and engine's own fields plus each plugin's settings group (flat: a plugin's
field is a flag like any other); ``settings_class`` adds plugins kept outside this
repository. The gateway knows no plugin by name: it only composes what the registry lists.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, PrivateAttr, create_model, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from engine.plugin import ActivePlugin, Plugin
from engine.registry import builtin_modules, load_plugins, plugin_fields, split_modules

DEFAULT_MODEL = "default"


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "leanserve"


class CoreSettings(BaseSettings):
    """Everything a leanserve process can be told, validated once at start-up (plugins' fields aside)."""

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
    otlp_traces_endpoint: str | None = Field(
        None, description="OTLP collector for request traces, leanserve's and vLLM's (gRPC; "
                          "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf for OTLP/HTTP)")
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="NAME=VALUE: any other vLLM engine argument (repeat; value as JSON or text)")

    # Plugins kept outside this repository (built-in ones are always loaded; each has its own flags).
    plugins: Annotated[tuple[str, ...], NoDecode] = Field((), description="comma-separated plugin module paths")

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
    max_images_per_request: int = Field(8, ge=0, description="image parts in one chat request")
    max_image_bytes: int = Field(8 * 1024 * 1024, gt=0, description="encoded size of one image")
    max_image_pixels: int = Field(4096 * 4096, gt=0, description="width x height of one image")
    max_image_aspect_ratio: float = Field(50.0, ge=1, description="longer side / shorter side")
    max_videos_per_request: int = Field(1, ge=0, description="video parts in one chat request")
    max_video_bytes: int = Field(8 * 1024 * 1024, gt=0, description="encoded size of one video (a data URL also "
                                 "counts against --max-body-bytes)")
    max_video_frames: int = Field(32, ge=2, le=768, description="frames sampled evenly from one video")
    max_video_frame_pixels: int = Field(1920 * 1080, gt=0, description="width x height of one video frame")
    remote_images: bool = Field(False, description="fetch http(s) image and video URLs (off: base64 data URLs only)")
    remote_image_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="comma-separated hosts remote images and videos may come from (default: any public address)")
    remote_image_timeout_s: float = Field(5.0, gt=0, le=120)

    # Logs.
    log_level: str = "info"
    log_format: Literal["json", "text"] = "json"
    log_prompts: bool = Field(False, description="include prompt text in logs")

    _plugin_modules: ClassVar[tuple[tuple[str, Plugin], ...]] = ()
    _plugin_groups: tuple[ActivePlugin, ...] = PrivateAttr(())

    @field_validator("api_keys", "public_paths", "plugins", "remote_image_hosts", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return split_modules(value)
        return value

    @model_validator(mode="after")
    def _validate_plugin_groups(self) -> CoreSettings:
        """Each plugin's group is validated by its own model (cross-field rules included) once, here."""
        loaded = {module for module, _ in self._plugin_modules}
        missing = [module for module in self.plugins if module not in loaded]
        if missing:
            raise ValueError(f"plugins {missing} are not loaded: build the class with settings_class(plugins)")
        groups = []
        for module, plugin in self._plugin_modules:
            values = {name: getattr(self, name) for name in plugin.settings_model.model_fields}
            groups.append(ActivePlugin(module, plugin, plugin.settings_model.model_validate(values)))
        self._plugin_groups = tuple(groups)
        return self

    def plugin_groups(self) -> tuple[ActivePlugin, ...]:
        """Every loaded plugin with its validated settings group, enabled or not."""
        return self._plugin_groups

    def active_plugins(self) -> tuple[ActivePlugin, ...]:
        """The plugins these settings switch on."""
        return tuple(group for group in self._plugin_groups if group.plugin.enabled(group.settings))


@functools.cache
def settings_class(extra_plugins: Sequence[str] = ()) -> type[CoreSettings]:
    """``CoreSettings`` plus the fields of every built-in plugin and of ``extra_plugins`` (module paths).

    Plugin fields reach their validators as the raw text of a flag or variable (``NoDecode``),
    as the gateway's own list-valued fields do.
    """
    loaded = load_plugins((*builtin_modules(), *extra_plugins))
    fields = plugin_fields([plugin for _, plugin in loaded], taken=tuple(CoreSettings.model_fields))
    composed = create_model(
        "Settings", __base__=CoreSettings, __module__=__name__,
        **{name: (Annotated[annotation, NoDecode], info) for name, (annotation, info) in fields.items()},
    )
    composed._plugin_modules = loaded
    return composed


Settings = settings_class(())
