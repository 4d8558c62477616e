"""How many tokens a video costs the language model, before and after EVS, from its decoded frames.

Qwen2-VL's video processor resizes every frame to a multiple of 28 px within its pixel budget
(``smart_resize``), pads the frame count to a multiple of 2 and cuts 14×14×2 patches, merged
2×2 into one token: ``ceil(T / 2) × (H' / 28) × (W' / 28)`` tokens. EVS keeps
``max(tokens per frame group, int(total × (1 − rate)))`` (vllm/multimodal/video_prune/evs.py), the
same count vLLM's processor reserves, so these figures are what the model really prefilled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class VideoGeometry:
    """The video processor's sizes, read from the model's ``processor_config.json``."""

    patch_size: int
    merge_size: int
    temporal_patch_size: int
    min_pixels: int
    max_pixels: int

    @classmethod
    def from_model_dir(cls, model_path: str) -> VideoGeometry:
        path = Path(model_path) / "processor_config.json"
        config = json.loads(path.read_text()) if path.exists() else {}
        video = config.get("video_processor") or config
        size = video.get("size") or {}
        return cls(video.get("patch_size", 14), video.get("merge_size", 2), video.get("temporal_patch_size", 2),
                   size.get("shortest_edge", video.get("min_pixels", 128 * 28 * 28)),
                   size.get("longest_edge", video.get("max_pixels", 768 * 28 * 28)))

    def token_grid(self, frames: int, height: int, width: int) -> tuple[int, int]:
        """(frame groups, tokens per group) of a clip of ``frames`` frames of ``height`` × ``width``."""
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import smart_resize

        factor = self.patch_size * self.merge_size
        resized_height, resized_width = smart_resize(height, width, factor=factor, min_pixels=self.min_pixels,
                                                     max_pixels=self.max_pixels)
        groups = -(-frames // self.temporal_patch_size)
        return groups, (resized_height // factor) * (resized_width // factor)


def tokens_kept(groups: int, tokens_per_group: int, rate: float) -> int:
    """Video tokens EVS keeps at ``rate`` (vLLM's own count, which its processor reserves)."""
    from vllm.multimodal.video_prune.evs import compute_retained_tokens_count

    if rate <= 0:
        return groups * tokens_per_group
    return compute_retained_tokens_count(tokens_per_group, groups, rate)
