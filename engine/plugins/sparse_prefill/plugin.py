"""Token-sparse prefill as a leanserve plugin: ``--sparse-prefill`` (Token Sparse Attention, TSA).

On the layers listed for the model (sparse_layers.py, layers/*.json), a long prompt's prefill attention runs on each
head's best-covered tokens only; decode, the KV cache (which holds every token), prefix caching
and speculative decoding are untouched. Prompts shorter than ``--sparse-prefill-min-prompt`` and
tokens after a cached prefix run dense. Per request: ``extra_body={"sparse_prefill": {"enabled":
false}}`` opts out, ``{"coverage": 0.1}`` changes τ, ``{"window": 512}`` W. ``usage.sparse_prefill`` says how many
layer passes ran sparse, the tokens they scored and kept (summed over passes), and their attention time.
"""

from __future__ import annotations

import json
import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from engine.plugin import EngineContext, FinishedRequest, Plugin, RequestAccounting
from engine.plugins.sparse_prefill.channel import LayerPass, RecordChannel
from engine.plugins.sparse_prefill.sparse_layers import resolve_layers
from engine.plugins.sparse_prefill.stats import ATTENTION_SECONDS, LAYER_TOKENS, METRICS, PROMPTS
from engine.protocol import MetricUpdate

USAGE_FIELDS = ("sparse_layer_passes", "tokens_scored", "tokens_kept", "attention_seconds",
                "attention_seconds_saved_estimate")
STEP_TIMEOUT_ENV, STEP_TIMEOUT_S = "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", 3600
LAYERS_ENV = "LEANSERVE_SPARSE_PREFILL_CONFIG"  # the resolved engine-side settings, for vLLM's processes


class SparsePrefillSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sparse_prefill: bool = Field(False, description="token-sparse attention for long prompts' prefill (TSA); "
                                                    "turns chunked prefill off")
    sparse_prefill_coverage: float = Field(0.05, ge=0, lt=1, description="τ: attention mass each head may leave "
                                           "out (0 keeps every token)")
    sparse_prefill_window: int = Field(64, ge=1, le=4096, description="W: the last W prompt tokens score the "
                                       "others and are always kept")
    sparse_prefill_min_tokens: int = Field(1024, ge=1, description="tokens every head keeps at least")
    sparse_prefill_min_prompt: int = Field(4096, ge=2, description="shorter prompts run dense")
    sparse_prefill_layers: str = Field("auto", description="auto (the model's profiled list, layers/*.json) | "
                                       "all | comma-separated layer indices")


class SparsePrefillOptions(BaseModel):
    """Per request (``extra_body={"sparse_prefill": {...}}``): opt out, or another coverage τ."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, strict=True)
    coverage: float | None = Field(None, ge=0, lt=1, strict=True)
    window: int | None = Field(None, ge=1, le=8192, strict=True, description="the last W prompt tokens score the "
                               "others and attend densely (e.g. a long question, or a continuation to score)")


class SparsePrefillPlugin(Plugin):
    name = "sparse_prefill"
    settings_model = SparsePrefillSettings
    request_options = SparsePrefillOptions
    metrics = METRICS

    def __init__(self) -> None:
        self._channel: RecordChannel | None = None

    def enabled(self, settings: SparsePrefillSettings) -> bool:
        return settings.sparse_prefill

    def engine_args(self, settings: SparsePrefillSettings, context: EngineContext) -> dict[str, Any]:
        layers = resolve_layers(settings.sparse_prefill_layers, context.model_path)
        os.environ[LAYERS_ENV] = json.dumps({
            "layers": layers, "coverage": settings.sparse_prefill_coverage, "window": settings.sparse_prefill_window,
            "min_tokens": settings.sparse_prefill_min_tokens, "min_prompt": settings.sparse_prefill_min_prompt})
        if self._channel is None:
            self._channel = RecordChannel()
        self._channel.publish()
        # One step may now be a whole long prompt: minutes on a CPU at 32K tokens, past vLLM's 300 s RPC timeout,
        # which kills the engine (seen: a dense 32K prefill of Qwen2.5-Coder-0.5B on 2 cores). The engine
        # processes read it from the environment they inherit.
        os.environ.setdefault(STEP_TIMEOUT_ENV, str(STEP_TIMEOUT_S))
        return {"enable_chunked_prefill": False}  # a long prompt reaches the attention whole (rows.py)

    def register_in_vllm(self, settings: SparsePrefillSettings) -> None:
        payload = os.environ.get(LAYERS_ENV)
        if not payload:  # a process the plan was not made in: nothing to serve here
            return
        from engine.plugins.sparse_prefill.backend import register
        from engine.plugins.sparse_prefill.rows import EngineSparsity
        from kernels.token_sparse_attention import SparsityConfig

        config = json.loads(payload)
        register(EngineSparsity(frozenset(config["layers"]), SparsityConfig(
            config["coverage"], config["window"], config["min_tokens"]), config["min_prompt"]))

    def sampling_args(self, settings: SparsePrefillSettings, options: BaseModel | None) -> dict[str, Any] | None:
        if not isinstance(options, SparsePrefillOptions):
            return None
        return {"enabled": options.enabled, "coverage": options.coverage, "window": options.window}

    def cache_salt(self, settings: SparsePrefillSettings, options: BaseModel | None, prompt_tokens: int) -> str | None:
        """Prompts that go sparse share prefix-cache blocks only with prompts sparse at the same coverage.

        A sparse layer changes the residual stream of the rows it drops, so the K/V that later
        layers cache for a sparse prompt differ from a dense one's: a dense (short, opted-out)
        request must never read them, nor a request with another coverage. A follow-up turn of a
        long conversation has the same salt and reuses the blocks (its new tokens run dense).
        """
        if self._channel is not None:
            self._channel.watch()  # the first request's call runs in the event loop: read records from now on
        sparsity = request_sparsity(settings, options)
        if prompt_tokens < settings.sparse_prefill_min_prompt or sparsity is None:
            return None
        coverage, window = sparsity
        return f"sparse_prefill:{coverage}:{window}"

    def request_finished(self, settings: SparsePrefillSettings, options: BaseModel | None,
                         finished: FinishedRequest) -> RequestAccounting | None:
        passes = self._channel.take(finished.request.request_id) if self._channel is not None else []
        if not passes:
            return RequestAccounting(usage=dict.fromkeys(USAGE_FIELDS, 0), updates=(MetricUpdate(PROMPTS, 1, ("dense",)),))
        sparse_seconds = sum(item.seconds for item in passes)
        window = (request_sparsity(settings, options) or (0, settings.sparse_prefill_window))[1]
        saved = sum(estimated_seconds_saved(item, window) for item in passes)
        updates = [MetricUpdate(PROMPTS, 1, ("sparse",)), MetricUpdate(ATTENTION_SECONDS, sparse_seconds, ("sparse",)),
                   MetricUpdate(ATTENTION_SECONDS, saved, ("saved_estimate",))]
        for item in passes:
            updates += [MetricUpdate(LAYER_TOKENS, item.tokens, (str(item.layer), "scored")),
                        MetricUpdate(LAYER_TOKENS, item.kept, (str(item.layer), "kept"))]
        return RequestAccounting(usage={
            "sparse_layer_passes": len(passes),  # layers x prompts (n > 1: every choice's prompt)
            "tokens_scored": sum(item.tokens for item in passes),  # summed over passes: kept/scored is the share
            "tokens_kept": sum(item.kept for item in passes),
            "attention_seconds": round(sparse_seconds, 4),
            "attention_seconds_saved_estimate": round(saved, 4),
}, updates=tuple(updates))


def request_sparsity(settings: SparsePrefillSettings, options: BaseModel | None) -> tuple[float, int] | None:
    """The (coverage τ, window W) a request's long prompt runs at (None: opted out)."""
    if not isinstance(options, SparsePrefillOptions):
        return settings.sparse_prefill_coverage, settings.sparse_prefill_window
    if not options.enabled:
        return None
    return (options.coverage if options.coverage is not None else settings.sparse_prefill_coverage,
            options.window if options.window is not None else settings.sparse_prefill_window)


def estimated_seconds_saved(layer_pass: LayerPass, window: int) -> float:
    """Dense time the pass saved, assuming time in proportion to the query-key pairs computed."""
    length, kept = layer_pass.tokens, layer_pass.kept_rms
    dense_pairs = length * (length + 1) / 2
    sparse_pairs = kept * (kept + 1) / 2 + min(window, length) * length  # attention (mean over heads) + scoring
    return max(0.0, layer_pass.seconds * (dense_pairs / sparse_pairs - 1))


PLUGIN = SparsePrefillPlugin()
