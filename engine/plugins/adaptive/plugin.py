"""Entropy-adaptive model switching as a leanserve plugin: ``--adaptive-small SMALL`` beside ``--model LARGE``.

The served engine becomes an ``AdaptiveEngine`` (engine.py) composing two vLLM engines;
both carry the entropy tap (entropy.py) as a vLLM logits processor. vLLM refuses custom
logits processors together with speculative decoding, so the two plugins exclude each other.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.plugin import EngineBuilder, EngineContext, Plugin
from engine.plugins.adaptive.stats import METRICS
from engine.plugins.adaptive.wire import TAP_KEY

TAP_PROCESSOR = "engine.plugins.adaptive.entropy:EntropyTap"
PolicyName = Literal["ead", "quantile", "token"]


class AdaptiveSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    adaptive_small: str | None = Field(None, description="small model (catalogue name or directory): switches "
                                                          "token by token between it and --model")
    adaptive_threshold: float = Field(0.2, ge=0, le=20, description="entropy (nats) from which the large model "
                                      "writes (benchmarks/RESULTS.md has pass@1 and token shares per threshold)")
    adaptive_window: int = Field(2, ge=1, le=64, description="tokens whose entropy the policy looks at (token: the "
                                                              "large model's, before it hands back)")
    adaptive_min_dwell: int = Field(2, ge=1, le=1024, description="tokens a model writes before it may hand over "
                                                                   "(token: the large model only)")
    adaptive_policy: PolicyName = Field("token", description="token (token-level deferral) | ead (window mean) | "
                                                             "quantile (window 0.8-quantile)")
    adaptive_block_size: int = Field(32, ge=32, le=256, multiple_of=32,
                                     description="KV block size: a hand-over re-prefills at most this many cached "
                                                 "tokens (vLLM-cpu's default 128 makes catch-up ~4x longer)")


class AdaptiveOptions(BaseModel):
    """Per request (``extra_body={"adaptive": {...}}``): another policy or setting of it, or no switching (small only)."""

    model_config = ConfigDict(extra="forbid")

    threshold: float | None = Field(None, ge=0, le=20)
    policy: PolicyName | None = None
    window: int | None = Field(None, ge=1, le=64)
    min_dwell: int | None = Field(None, ge=1, le=1024)
    enabled: bool = True


class TapOptions(BaseModel):
    """What the adaptive engine gives each request it sends to one of its two engines."""

    tap: str


class AdaptivePlugin(Plugin):
    name = "adaptive"
    settings_model = AdaptiveSettings
    request_options = AdaptiveOptions
    metrics = METRICS

    def enabled(self, settings: AdaptiveSettings) -> bool:
        return settings.adaptive_small is not None

    def engine_args(self, settings: AdaptiveSettings, context: EngineContext) -> dict[str, Any]:
        return {"logits_processors": [TAP_PROCESSOR], "block_size": settings.adaptive_block_size}

    def sampling_args(self, settings: AdaptiveSettings, options: BaseModel | None) -> dict | None:
        return {TAP_KEY: options.tap} if isinstance(options, TapOptions) else None

    def engine_builder(self, settings: AdaptiveSettings) -> EngineBuilder:
        from engine.plugins.adaptive.engine import build_adaptive_engine

        return partial(build_adaptive_engine, settings)


PLUGIN = AdaptivePlugin()
