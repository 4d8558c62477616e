"""Video-token pruning as a leanserve plugin: ``--video-pruning-rate RATE`` (Efficient Video Sampling).

EVS (Bagrov et al. 2025) drops the patches of a video that did not change since the frame
before: a static camera's background is read once instead of once per frame pair. vLLM ships it
for Qwen2.5-VL / Qwen3-VL as ``video_pruning_rate``; on the CPU runner of vLLM 0.32 it kills the
engine at the first video, which ``cpu_runner.py`` fixes from inside vLLM's processes. The rate
is the share of each video's tokens dropped (the first frame group is always kept whole);
``usage.video_pruning`` reports video tokens before and after, and the metrics count them.

vLLM reads the rate from its engine configuration only; for Qwen2.5-VL the plugin serves a subclass
(qwen2_5_vl.py) that takes a rate per request as well: ``extra_body={"video_pruning": {"rate": 0.9}}``
or ``{"enabled": false}`` for every token. The server's flag stays the default and must be set: it is
what turns vLLM's EVS path on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from engine.plugin import EngineContext, FinishedRequest, Plugin, RequestAccounting
from engine.plugins.video_pruning.stats import METRICS, VIDEO_TOKENS, VIDEOS
from engine.plugins.video_pruning.tokens import VideoGeometry, tokens_kept
from engine.protocol import InvalidRequestError, MetricUpdate

METHOD = "evs"
QWEN2_5_VL = "Qwen2_5_VLForConditionalGeneration"
MODEL_CLASS = "engine.plugins.video_pruning.qwen2_5_vl:EvsQwen2_5_VLForConditionalGeneration"


class VideoPruningSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    video_pruning_rate: float | None = Field(None, gt=0, lt=1, description="share of each video's tokens EVS drops "
                                             "(temporally static patches), e.g. 0.75; Qwen2.5-VL models")


class VideoPruningOptions(BaseModel):
    """Per request (``extra_body={"video_pruning": {...}}``): another rate, or no pruning."""

    model_config = ConfigDict(extra="forbid")

    rate: float | None = Field(None, ge=0, lt=1, strict=True,
                               description="share of each video's tokens dropped (0: none)")
    enabled: bool = True


class VideoPruningPlugin(Plugin):
    name = "video_pruning"
    settings_model = VideoPruningSettings
    request_options = VideoPruningOptions
    metrics = METRICS

    def __init__(self) -> None:
        self._geometry: VideoGeometry | None = None  # the served model's video processor, read at planning
        self._per_request = False  # whether the served model takes a rate per request (Qwen2.5-VL, our subclass)

    def enabled(self, settings: VideoPruningSettings) -> bool:
        return settings.video_pruning_rate is not None

    def engine_args(self, settings: VideoPruningSettings, context: EngineContext) -> dict[str, Any]:
        architectures = _architectures(context.model_path)
        if not any(_supports_pruning(architecture) for architecture in architectures):
            raise ValueError(f"--video-pruning-rate needs a model vLLM prunes video tokens of (Qwen2.5-VL, "
                             f"Qwen3-VL); {context.served_model_name} is {', '.join(architectures) or 'unknown'}")
        self._geometry = VideoGeometry.from_model_dir(context.model_path)
        args: dict[str, Any] = {"video_pruning_rate": settings.video_pruning_rate}
        if QWEN2_5_VL in architectures:  # media after a pruned video (qwen2_5_vl.py here says why)
            from engine.plugins.video_pruning.qwen2_5_vl import ARCHITECTURE

            args["hf_overrides"] = {"architectures": [ARCHITECTURE]}
        self._per_request = QWEN2_5_VL in architectures
        return args

    def register_in_vllm(self, settings: VideoPruningSettings) -> None:
        from vllm import ModelRegistry

        from engine.plugins.video_pruning.cpu_runner import enable_multimodal_pruning_on_cpu_runner
        from engine.plugins.video_pruning.qwen2_5_vl import ARCHITECTURE

        enable_multimodal_pruning_on_cpu_runner()
        if ARCHITECTURE not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)

    def processor_args(self, settings: VideoPruningSettings, options: BaseModel | None) -> dict[str, Any] | None:
        if not isinstance(options, VideoPruningOptions) or (options.rate is None and options.enabled):
            return None  # the server's rate, which vLLM's configuration holds
        if not self._per_request:
            raise InvalidRequestError("this model prunes video at the server's --video-pruning-rate only",
                                      param="video_pruning")
        from engine.plugins.video_pruning.qwen2_5_vl import RATE_KEY

        return {RATE_KEY: request_rate(settings, options)}

    def request_finished(self, settings: VideoPruningSettings, options: BaseModel | None,
                         finished: FinishedRequest) -> RequestAccounting | None:
        videos = [item.data for item in finished.request.prompt.multimodal if item.modality == "video"]
        if not videos or self._geometry is None or settings.video_pruning_rate is None:
            return None
        rate = request_rate(settings, options)
        before = after = 0
        for frames, _metadata in videos:  # decoded: [T, H, W, 3] frames and vLLM's metadata
            groups, per_group = self._geometry.token_grid(*frames.shape[:3])
            before += groups * per_group
            after += tokens_kept(groups, per_group, rate)
        method = (METHOD,)
        return RequestAccounting(
            usage={"video_tokens_before": before, "video_tokens_after": after, "video_tokens_saved": before - after},
            updates=(MetricUpdate(VIDEOS, len(videos), method), MetricUpdate(VIDEO_TOKENS, before, (*method, "encoded")),
                     MetricUpdate(VIDEO_TOKENS, after, (*method, "kept"))),
        )


def request_rate(settings: VideoPruningSettings, options: BaseModel | None) -> float:
    """The server's rate, with what the request changed (0: every token)."""
    if not isinstance(options, VideoPruningOptions):
        return settings.video_pruning_rate or 0.0
    if not options.enabled:
        return 0.0
    return options.rate if options.rate is not None else settings.video_pruning_rate or 0.0


def _architectures(model_path: str) -> list[str]:
    path = Path(model_path) / "config.json"
    if not path.exists():
        raise ValueError(f"--video-pruning-rate needs a local model directory with a config.json ({model_path})")
    return json.loads(path.read_text()).get("architectures") or []


def _supports_pruning(architecture: str) -> bool:
    from vllm import ModelRegistry
    from vllm.model_executor.models.interfaces import supports_multimodal_pruning

    entry = ModelRegistry.models.get(architecture)
    return entry is not None and supports_multimodal_pruning(entry.load_model_cls())


PLUGIN = VideoPruningPlugin()
