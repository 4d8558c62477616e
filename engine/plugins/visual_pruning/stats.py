"""The series visual-token pruning declares (labels besides ``model``)."""

from __future__ import annotations

from engine.protocol import MetricSpec

IMAGES = "leanserve_visual_pruning_images"
IMAGE_TOKENS = "leanserve_visual_pruning_image_tokens"

METRICS = (
    MetricSpec(IMAGES, "counter", "Images whose tokens the pruning budget applied to, by method.", ("method",)),
    MetricSpec(IMAGE_TOKENS, "counter", "Image tokens before pruning (stage=encoded) and those the language "
                                        "model prefilled (stage=kept), by method.", ("method", "stage")),
)
