"""Qwen2.5-VL with EVS that survives a pruned video followed by more media (imported only in vLLM's processes).

vLLM 0.32's ``Qwen2_5_VLForConditionalGeneration.get_mrope_input_positions`` lays out each item's
M-RoPE positions as if it had all ``t × h × w`` placeholders. A video EVS pruned has fewer, so the
next image's or video's offset lies *before* where the layout thinks the video ended, the text
between them gets a negative length, and the engine dies
(``all elements of broadcast shape must be non-negative``; vLLM issue #27859, fixed for Qwen3-VL
only). This subclass lays out each item over the placeholders it really has. Those first
positions are provisional either way: once the encoder has run, the runner's
``recompute_mrope_positions`` rewrites every media token's position and shifts the text after it
(vllm/multimodal/video_prune/evs.py), exactly as for a single pruned video.

Registered under its own architecture name (set by ``hf_overrides``), with Qwen2.5-VL's own
processor, so servers without ``--video-pruning-rate`` run vLLM's class untouched.
"""

from __future__ import annotations

import numpy as np
import torch
from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

ARCHITECTURE = "LeanserveEvsQwen2_5_VL"


@MULTIMODAL_REGISTRY.register_processor(Qwen2_5_VLMultiModalProcessor, info=Qwen2_5_VLProcessingInfo,
                                        dummy_inputs=Qwen2_5_VLDummyInputsBuilder)
class EvsQwen2_5_VLForConditionalGeneration(Qwen2_5_VLForConditionalGeneration):
    """Qwen2.5-VL whose initial M-RoPE layout follows the placeholders each item really has."""

    def get_mrope_input_positions(self, input_tokens: list[int], mm_features: list) -> tuple[torch.Tensor, int]:
        pieces: list[np.ndarray] = []  # each [3, n]
        next_position = 0
        end = 0  # where the previous item's placeholders ended
        lengths = {feature.mm_position.offset: feature.mm_position.length for feature in mm_features}
        for offset, grid_t, grid_h, grid_w, t_factor in self.iter_mm_grid_thw(mm_features):
            text = offset - end
            pieces.append(np.broadcast_to(np.arange(text), (3, text)) + next_position)
            next_position += text
            grid = np.indices((grid_t, grid_h, grid_w))  # [3, t, h, w]
            if t_factor != 1.0:
                grid[0] = (grid[0] * t_factor).astype(np.int64)
            placeholders = min(lengths[offset], grid_t * grid_h * grid_w)  # fewer once EVS pruned the video
            media = grid.reshape(3, -1)[:, :placeholders] + next_position
            pieces.append(media)
            next_position = int(media.max()) + 1 if placeholders else next_position
            end = offset + placeholders
        text = len(input_tokens) - end
        pieces.append(np.broadcast_to(np.arange(text), (3, text)) + next_position)
        positions = np.concatenate(pieces, axis=1)  # [3, len(input_tokens)]
        return torch.from_numpy(positions), int(positions.max()) + 1 - len(input_tokens)
