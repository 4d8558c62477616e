"""Qwen2.5-VL with EVS at a per-request rate, surviving media after a pruned video (imported only in vLLM's processes).

vLLM 0.32's ``Qwen2_5_VLForConditionalGeneration.get_mrope_input_positions`` lays out each item's
M-RoPE positions as if it had all ``t × h × w`` placeholders. A video EVS pruned has fewer, so the
next image's or video's offset lies *before* where the layout thinks the video ended, the text
between them gets a negative length, and the engine dies
(``all elements of broadcast shape must be non-negative``; vLLM issue #27859, fixed for Qwen3-VL
only). This subclass lays out each item over the placeholders it really has. Those first
positions are provisional either way: once the encoder has run, the runner's
``recompute_mrope_positions`` rewrites every media token's position and shifts the text after it
(vllm/multimodal/video_prune/evs.py), exactly as for a single pruned video.

vLLM also reads the pruning rate from its engine configuration only. Here a request may carry its
own (``mm_processor_kwargs["video_pruning_rate"]``, which also keys vLLM's processor and encoder
caches): the processor reserves that many placeholders and attaches the rate to each video, and the
model prunes each video of a batch at its own rate. The server's ``--video-pruning-rate`` stays the
default, and must be set: it is what turns on the runner's EVS path (``cpu_runner.py``).

Registered under its own architecture name (set by ``hf_overrides``), so servers without
``--video-pruning-rate`` run vLLM's classes untouched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.processing import PromptReplacement
from vllm.multimodal.video_prune.evs import (
    compute_mrope_for_media,
    compute_retained_tokens_count,
    compute_retention_mask,
)

ARCHITECTURE = "LeanserveEvsQwen2_5_VL"
RATE_KEY = "video_pruning_rate"  # a request's rate in mm_processor_kwargs, and each video's field


class EvsQwen2_5_VLMultiModalProcessor(Qwen2_5_VLMultiModalProcessor):
    """Qwen2.5-VL's processor with the EVS rate read from the request and attached to each video."""

    def rate(self, mm_kwargs: Mapping[str, object]) -> float:
        value = mm_kwargs.get(RATE_KEY)
        return float(value) if value is not None else float(self.info.ctx.get_mm_config().video_pruning_rate or 0)

    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]):
        rate = self.rate(hf_kwargs)
        processed = super()._call_hf_processor(hf_data, {k: v for k, v in hf_kwargs.items() if k != RATE_KEY})
        if "video_grid_thw" in processed:
            processed[RATE_KEY] = torch.full((len(processed["video_grid_thw"]),), rate, dtype=torch.float32)
        return processed

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs: Mapping[str, object]):
        return {**super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs),
                RATE_KEY: MultiModalFieldConfig.batched("video", keep_on_cpu=True)}

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs: Mapping[str, object], out_mm_kwargs):
        """vLLM's updates, the video's placeholder count taken at the request's rate."""
        rate = self.rate(hf_processor_mm_kwargs)
        merge = self.info.get_image_processor(**hf_processor_mm_kwargs).merge_size
        video_token = self.info.get_hf_config().video_token_id  # not the 150k-entry vocabulary per request

        def video_placeholders(item_idx: int) -> list[int]:
            frames, height, width = map(int, out_mm_kwargs["video"][item_idx]["video_grid_thw"].data)
            per_frame = (height // merge) * (width // merge)
            kept = compute_retained_tokens_count(per_frame, frames, rate) if rate > 0 else frames * per_frame
            return [video_token] * kept

        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        return [PromptReplacement(modality="video", target=[video_token], replacement=video_placeholders)
                if update.modality == "video" else update for update in updates]


@MULTIMODAL_REGISTRY.register_processor(EvsQwen2_5_VLMultiModalProcessor, info=Qwen2_5_VLProcessingInfo,
                                        dummy_inputs=Qwen2_5_VLDummyInputsBuilder)
class EvsQwen2_5_VLForConditionalGeneration(Qwen2_5_VLForConditionalGeneration):
    """Qwen2.5-VL pruning each video at its request's rate, its initial M-RoPE layout following the
    placeholders each item really has."""

    _video_rates: list[float] | None = None  # this encoder call's, one per video in batch order

    def embed_multimodal(self, **kwargs: object):
        self._video_rates = _floats(kwargs.pop(RATE_KEY, None))
        try:
            return super().embed_multimodal(**kwargs)
        finally:
            self._video_rates = None

    def _postprocess_video_embeds_evs(self, video_embeds_split: tuple[torch.Tensor, ...],
                                      video_input) -> tuple[torch.Tensor, ...]:
        """EVS on each video at its request's rate (0 keeps every token), each kept token followed by its
        M-RoPE position and the item's span (t, h, w, span: the 4 channels ``recompute_mrope_positions`` strips
        and places).

        vLLM's version casts the seconds per frame pair to an integer *before* scaling the time index
        (``second_per_grid_ts.long()``), so a clip sampled faster than one pair per second gets time
        position 0 for every frame, unlike the unpruned path and HF (both scale, then truncate). Here the
        seconds stay fractional, so a video at rate 0 is read exactly as without EVS.
        """
        seconds = video_input.get("second_per_grid_ts")
        if seconds is None:
            raise ValueError("second_per_grid_ts is required to prune video tokens")
        grids = video_input["video_grid_thw"].tolist()  # [videos, 3]: frame pairs, patch rows, patch columns
        rates = self._video_rates
        if rates is None or len(rates) != len(grids):  # no per-video rates came with this call
            rates = [float(self.video_pruning_rate or 0)] * len(grids)
        merge = self.visual.spatial_merge_size
        tokens_per_second = self.config.vision_config.tokens_per_second
        pruned = []
        for embeddings, grid, second, rate in zip(video_embeds_split, grids, seconds.tolist(), rates, strict=True):
            keep = compute_retention_mask(embeddings, grid, spatial_merge_size=merge, q=rate)  # [tokens]
            positions = with_span(compute_mrope_for_media(
                torch.tensor(grid), merge, tokens_per_second=tokens_per_second, video_second_per_grid=float(second)))
            positions = positions.to(embeddings.device)[keep]  # [kept, 4]
            pruned.append(torch.cat([embeddings[keep], positions.to(embeddings.dtype)], dim=1))  # [kept, d + 4]
        return tuple(pruned)

    def _postprocess_image_embeds_evs(self, image_embeds_split: tuple[torch.Tensor, ...],
                                      image_input) -> tuple[torch.Tensor, ...]:
        """Each image token followed by its M-RoPE position and the image's span (never pruned)."""
        merge = self.visual.spatial_merge_size
        out = []
        for embeddings, grid in zip(image_embeds_split, image_input["image_grid_thw"].tolist(), strict=True):
            positions = with_span(compute_mrope_for_media(torch.tensor(grid), merge)).to(embeddings.device)
            out.append(torch.cat([embeddings, positions.to(embeddings.dtype)], dim=1))  # [tokens, d + 4]
        return tuple(out)

    def recompute_mrope_positions(self, input_ids, multimodal_embeddings: Sequence[torch.Tensor],
                                  mrope_positions: torch.Tensor, num_computed_tokens: int):
        """Place this step's media tokens at the positions their channels carry and shift the text after them.

        vLLM's version (vllm/multimodal/video_prune/evs.py) loses its place after the first item of a step:
        it advances a media-token count as if it were a sequence index, and never updates how many media
        tokens were seen. So when the text before the first item is longer than that item, or a step starts
        inside an item (a prefix-cache hit, a chunked prefill) and another follows, the next item's positions
        land on the wrong tokens. Here each item's tokens are the next media slots of the sequence.
        """
        ids = torch.as_tensor(input_ids, device=mrope_positions.device).long()  # [N]
        positions = mrope_positions.clone()  # [3, N]
        media = (ids == self.config.image_token_id) | (ids == self.config.video_token_id)  # [N]
        starts = (ids == self.config.vision_start_token_id).nonzero().flatten()
        slots = media.nonzero().flatten()
        slots = slots[slots >= num_computed_tokens]  # the media tokens this step's embeddings fill, in order
        used = 0
        for item in multimodal_embeddings:  # [n, d + 4]
            placed = item[:, -4:].long().T  # [4, n]: t, h, w, span
            item_slots = slots[used:used + item.shape[0]]
            used += item.shape[0]
            start = starts[starts < item_slots[0]][-1]  # the item's <|vision_start|>
            base = positions[0, start] + 1
            positions[:, item_slots] = placed[:3] + base
            after = int(item_slots[-1]) + 1
            text_after = torch.cumsum((~media[after:]).long(), dim=0)  # [N - after]
            positions[:, after:] = text_after + base + placed[3, 0] - 1
        delta = int(positions.max()) + 1 - ids.numel()
        return [item[:, :-4] for item in multimodal_embeddings], positions, delta

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


def with_span(positions: torch.Tensor) -> torch.Tensor:
    """vLLM's per-token (t, h, w, grid width) with the last channel set to the item's span, max(t, h, w) + 1:
    the text after an item starts that far past it, as in the unpruned layout (width alone is short for a
    tall image or a long clip)."""
    positions = positions.clone()  # [tokens, 4]
    positions[:, 3] = positions[:, :3].max() + 1
    return positions


def _floats(value: object) -> list[float] | None:
    """A batched per-video field (a tensor, or a list of 0-d tensors) as floats."""
    if value is None:
        return None
    if isinstance(value, Sequence) and not isinstance(value, torch.Tensor):
        return [float(item) for item in value]
    return [float(item) for item in torch.as_tensor(value).flatten()]
