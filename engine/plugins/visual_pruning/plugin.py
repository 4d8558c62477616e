"""Visual-token pruning as a leanserve plugin: ``--visual-pruning METHOD --visual-pruning-keep RATIO_OR_K``.

A LLaVA-architecture model is served as ``PrunedLlavaForConditionalGeneration`` (llava.py), which
keeps k of each image's N tokens, chosen after the encoder by the method (selection.py). A request
may change the budget (``extra_body={"visual_pruning": {"keep": 0.5, "method": "cls"}}``) or turn
pruning off (``{"enabled": false}``); the budget reaches vLLM's processor as ``mm_processor_kwargs``.
``usage.visual_pruning`` reports image tokens before and after.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictFloat, StrictInt, model_validator

from engine.plugin import EngineContext, FinishedRequest, Plugin, RequestAccounting
from engine.plugins.visual_pruning.budget import CONFIG_KEY, METHODS, Budget, MethodName, parse_keep
from engine.plugins.visual_pruning.stats import IMAGE_TOKENS, IMAGES, METRICS
from engine.protocol import MetricUpdate

LLAVA_ARCHITECTURES = ("LlavaForConditionalGeneration",)
MODEL_CLASS = "engine.plugins.visual_pruning.llava:PrunedLlavaForConditionalGeneration"


def _keep(value: object) -> object:
    return parse_keep(value) if isinstance(value, (str, int, float)) else value


class VisualPruningSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    visual_pruning: MethodName | None = Field(None, description=" | ".join(METHODS) + ": keep a fixed share of "
                                              "each image's tokens, chosen after the encoder (LLaVA models)")
    visual_pruning_keep: Annotated[float | int, BeforeValidator(_keep)] = Field(
        0.25, description="tokens kept per image: a ratio in (0, 1] (0.25) or a count (64)")


class VisualPruningOptions(BaseModel):
    """Per request (``extra_body={"visual_pruning": {...}}``): another budget or method, or no pruning."""

    model_config = ConfigDict(extra="forbid")

    keep: StrictInt | StrictFloat | None = Field(None, description="ratio in (0, 1] (a JSON number with a "
                                                 "decimal point) or a token count >= 1 per image")
    method: MethodName | None = None
    enabled: bool = True

    @model_validator(mode="after")
    def _keep_in_range(self) -> VisualPruningOptions:
        if self.keep is not None:
            parse_keep(self.keep)  # ValueError -> a 400 naming visual_pruning
        return self


class VisualPruningPlugin(Plugin):
    name = "visual_pruning"
    settings_model = VisualPruningSettings
    request_options = VisualPruningOptions
    metrics = METRICS

    def __init__(self) -> None:
        self._tokens_per_image: int | None = None  # N of the served model, read at planning

    def enabled(self, settings: VisualPruningSettings) -> bool:
        return settings.visual_pruning is not None

    def engine_args(self, settings: VisualPruningSettings, context: EngineContext) -> dict[str, Any]:
        config = _model_config(context.model_path)
        architectures = config.get("architectures") or []
        if not set(architectures) & set(LLAVA_ARCHITECTURES):
            raise ValueError(f"--visual-pruning needs a LLaVA-architecture model; {context.served_model_name} is "
                             f"{', '.join(architectures) or 'unknown'}")
        self._tokens_per_image = tokens_per_image(config)
        from engine.plugins.visual_pruning.llava import ARCHITECTURE

        default = {"method": settings.visual_pruning, "keep": settings.visual_pruning_keep}
        return {"hf_overrides": {"architectures": [ARCHITECTURE], CONFIG_KEY: default}}

    def register_in_vllm(self, settings: VisualPruningSettings) -> None:
        from vllm import ModelRegistry

        from engine.plugins.visual_pruning.llava import ARCHITECTURE

        if ARCHITECTURE not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)

    def processor_args(self, settings: VisualPruningSettings, options: BaseModel | None) -> dict[str, Any] | None:
        return request_budget(settings, options).as_processor_kwargs()

    def request_finished(self, settings: VisualPruningSettings, options: BaseModel | None,
                         finished: FinishedRequest) -> RequestAccounting | None:
        images = sum(1 for item in finished.request.prompt.multimodal if item.modality == "image")
        if not images or self._tokens_per_image is None:
            return None
        budget = request_budget(settings, options)
        before = images * self._tokens_per_image
        after = images * budget.kept(self._tokens_per_image)
        method = (budget.method,)
        return RequestAccounting(
            usage={"image_tokens_before": before, "image_tokens_after": after, "image_tokens_saved": before - after},
            updates=(MetricUpdate(IMAGES, images, method), MetricUpdate(IMAGE_TOKENS, before, (*method, "encoded")),
                     MetricUpdate(IMAGE_TOKENS, after, (*method, "kept"))),
        )


def request_budget(settings: VisualPruningSettings, options: BaseModel | None) -> Budget:
    """The server's budget, with what the request changed."""
    budget = Budget(settings.visual_pruning or "none", settings.visual_pruning_keep)
    if not isinstance(options, VisualPruningOptions):
        return budget
    if not options.enabled:
        return Budget("none", 1.0)
    return Budget(options.method or budget.method, budget.keep if options.keep is None else options.keep)


def _model_config(model_path: str) -> dict:
    path = Path(model_path) / "config.json"
    if not path.exists():
        raise ValueError(f"--visual-pruning needs a local model directory with a config.json ({model_path})")
    return json.loads(path.read_text())


def tokens_per_image(config: dict) -> int:
    """N: LLaVA-1.5's patch tokens per image ([CLS] dropped by the default feature strategy)."""
    vision = config.get("vision_config") or {}
    patches = (vision.get("image_size", 336) // vision.get("patch_size", 14)) ** 2
    return patches if config.get("vision_feature_select_strategy", "default") == "default" else patches + 1


PLUGIN = VisualPruningPlugin()
