"""Video-token pruning (EVS): the flag's range, the models it applies to, the CPU runner's flags, and the
token counts ``usage`` reports (the integration test checks them against what the model really read)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from pydantic import ValidationError

from engine.plugin import EngineContext, FinishedRequest
from engine.plugins.video_pruning.cpu_runner import set_pruning_flags
from engine.plugins.video_pruning.plugin import PLUGIN, VideoPruningSettings
from engine.plugins.video_pruning.tokens import VideoGeometry, tokens_kept
from engine.protocol import GenerationRequest, MultimodalItem, Prompt, SamplingOptions

# Qwen2.5-VL's video processor as the recipe writes it: 14-px patches, 2x2 merge, 2 frames deep, <= 64 tokens/frame pair.
GEOMETRY = VideoGeometry(patch_size=14, merge_size=2, temporal_patch_size=2, min_pixels=4 * 28 * 28,
                         max_pixels=64 * 28 * 28)


@pytest.mark.parametrize("rate", [0, 1, 1.5, -0.1])
def test_the_rate_is_a_share_strictly_between_0_and_1(rate):
    with pytest.raises(ValidationError):
        VideoPruningSettings(video_pruning_rate=rate)
    assert PLUGIN.enabled(VideoPruningSettings(video_pruning_rate=0.5))
    assert not PLUGIN.enabled(VideoPruningSettings())


def test_the_token_grid_follows_the_processor_resize():
    # 240x320 is 76800 px > 50176: scaled by sqrt(76800/50176) and floored to 28 px -> 168x252 -> 6x9 tokens;
    # 16 frames -> 8 frame pairs; an odd count is padded to a whole pair.
    assert GEOMETRY.token_grid(16, 240, 320) == (8, 54)
    assert GEOMETRY.token_grid(15, 240, 320) == (8, 54)
    assert GEOMETRY.token_grid(4, 56, 56) == (2, 4)  # already a multiple of 28 and within the budget


def test_evs_keeps_its_share_but_never_less_than_one_frame_pair():
    assert tokens_kept(8, 54, 0.75) == 108
    assert tokens_kept(8, 54, 0.99) == 54
    assert tokens_kept(8, 54, 0.0) == 432


def _context(tmp_path: Path, architectures: list[str]) -> EngineContext:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": architectures}))
    return EngineContext("m", str(tmp_path), tmp_path, lambda name: name)


def test_models_vllm_cannot_prune_video_of_are_refused(tmp_path):
    with pytest.raises(ValueError, match="LlavaForConditionalGeneration"):
        PLUGIN.engine_args(VideoPruningSettings(video_pruning_rate=0.5),
                           _context(tmp_path, ["LlavaForConditionalGeneration"]))
    args = PLUGIN.engine_args(VideoPruningSettings(video_pruning_rate=0.5),
                              _context(tmp_path, ["Qwen2_5_VLForConditionalGeneration"]))
    assert args == {"video_pruning_rate": 0.5, "hf_overrides": {"architectures": ["LeanserveEvsQwen2_5_VL"]}}


def test_the_runner_gets_the_flags_the_gpu_runner_sets():
    def runner(model: object, rate: float | None) -> SimpleNamespace:
        mm_config = SimpleNamespace(is_multimodal_pruning_enabled=lambda: rate is not None)
        return SimpleNamespace(get_model=lambda: model, model_config=SimpleNamespace(multimodal_config=mm_config))

    prunable = SimpleNamespace(supports_multimodal_pruning=True)
    for model, rate, expected in [(prunable, 0.5, True), (prunable, None, False),
                                  (SimpleNamespace(), 0.5, False)]:
        target = runner(model, rate)
        set_pruning_flags(target)
        assert target.is_multimodal_pruning_enabled is expected
        assert target.requires_sequential_video_encoding is False


def test_usage_counts_video_tokens_before_and_after(tmp_path):
    (tmp_path / "processor_config.json").write_text(json.dumps({"video_processor": {
        "patch_size": 14, "merge_size": 2, "temporal_patch_size": 2,
        "size": {"shortest_edge": 4 * 28 * 28, "longest_edge": 64 * 28 * 28}}}))
    settings = VideoPruningSettings(video_pruning_rate=0.75)
    PLUGIN.engine_args(settings, _context(tmp_path, ["Qwen2_5_VLForConditionalGeneration"]))
    frames = np.zeros((16, 240, 320, 3), dtype=np.uint8)
    prompt = Prompt([1], (MultimodalItem("video", (frames, {"fps": 8.0})), MultimodalItem("image", object())))
    request = GenerationRequest("r", prompt, SamplingOptions(max_tokens=1))
    accounting = PLUGIN.request_finished(settings, None, FinishedRequest(request, (1,), None))
    assert accounting.usage == {"video_tokens_before": 432, "video_tokens_after": 108, "video_tokens_saved": 324}
    no_video = GenerationRequest("r", Prompt([1]), SamplingOptions(max_tokens=1))
    assert PLUGIN.request_finished(settings, None, FinishedRequest(no_video, (1,), None)) is None


def _feature(modality: str, offset: int, length: int, grid: tuple[int, int, int]) -> SimpleNamespace:
    import torch

    data = {f"{modality}_grid_thw": SimpleNamespace(data=torch.tensor(grid))}
    return SimpleNamespace(modality=modality, mm_position=SimpleNamespace(offset=offset, length=length), data=data)


def _layout(tokens: int, features: list) -> tuple:
    from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration

    from engine.plugins.video_pruning.qwen2_5_vl import EvsQwen2_5_VLForConditionalGeneration

    model = SimpleNamespace(config=SimpleNamespace(vision_config=SimpleNamespace(spatial_merge_size=2,
                                                                                 tokens_per_second=2)))
    model.iter_mm_grid_thw = lambda found: Qwen2_5_VLForConditionalGeneration.iter_mm_grid_thw(model, found)
    ours = EvsQwen2_5_VLForConditionalGeneration.get_mrope_input_positions(model, [0] * tokens, features)
    return model, ours


def test_initial_positions_follow_the_placeholders_each_item_has():
    from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration

    # Unpruned: an image (1x4x6 patches -> 2x3 = 6 tokens) and a video (4 groups of 6): vLLM's own layout.
    unpruned = [_feature("image", 3, 6, (1, 4, 6)), _feature("video", 12, 24, (4, 4, 6))]
    model, (positions, delta) = _layout(40, unpruned)
    vllm_positions, vllm_delta = Qwen2_5_VLForConditionalGeneration.get_mrope_input_positions(model, [0] * 40,
                                                                                              unpruned)
    assert positions.tolist() == vllm_positions.tolist() and delta == vllm_delta
    # The video pruned to 6 placeholders, an image right after it: vLLM's layout dies, ours covers every token
    # and keeps the text after each item past that item's positions (the runner then rewrites media positions).
    pruned = [_feature("video", 3, 6, (4, 4, 6)), _feature("image", 11, 6, (1, 4, 6))]
    with pytest.raises(ValueError):
        Qwen2_5_VLForConditionalGeneration.get_mrope_input_positions(model, [0] * 20, pruned)
    _, (positions, delta) = _layout(20, pruned)
    assert positions.shape == (3, 20)
    text = [*range(0, 3), *range(9, 11), *range(17, 20)]
    text_positions = positions[0, text].tolist()
    assert text_positions == sorted(text_positions) and len(set(text_positions)) == len(text)
    assert positions[:, 11:17].min() > positions[:, 10].max()
    assert delta == int(positions.max()) + 1 - 20


def test_a_request_may_change_the_rate_or_turn_pruning_off():
    from engine.plugins.video_pruning.plugin import VideoPruningOptions, request_rate

    settings = VideoPruningSettings(video_pruning_rate=0.75)
    assert request_rate(settings, None) == 0.75
    assert request_rate(settings, VideoPruningOptions(rate=0.5)) == 0.5
    assert request_rate(settings, VideoPruningOptions(rate=0.0)) == 0.0
    assert request_rate(settings, VideoPruningOptions(enabled=False)) == 0.0
    for bad in ({"rate": 1.0}, {"rate": -0.5}, {"ratio": 0.5}, {"rate": "0.5"}, {"rate": True}):
        with pytest.raises(ValidationError):
            VideoPruningOptions.model_validate(bad)
    assert PLUGIN.processor_args(settings, None) is None  # the server's rate, from vLLM's configuration


VS, VE, IMG, VID, TEXT = 1, 2, 3, 4, 0  # token ids of the layout tests


def _item(modality: str, offset: int, grid: tuple[int, int, int], seconds: float | None = None) -> SimpleNamespace:
    import torch

    data = {f"{modality}_grid_thw": SimpleNamespace(data=torch.tensor(grid))}
    if seconds is not None:
        data["second_per_grid_ts"] = SimpleNamespace(data=torch.tensor(seconds))
    tokens = grid[0] * grid[1] * grid[2] // 4
    return SimpleNamespace(modality=modality, mm_position=SimpleNamespace(offset=offset, length=tokens), data=data)


@pytest.mark.parametrize(("before", "between", "steps", "video", "seconds", "image"), [
    (15, 0, [], (8, 12, 18), 0.25, (1, 18, 22)),
    (500, 0, [], (8, 12, 18), 0.25, (1, 18, 22)),  # text before the video longer than the video
    (15, 5, [384], (8, 12, 18), 0.25, (1, 18, 22)),  # a step starting inside the video (prefix-cache hit)
    (500, 3, [128, 640], (8, 12, 18), 3.75, (1, 22, 18)),  # chunked prefill, a long clip, a tall image
])
def test_placed_positions_match_the_unpruned_layout(before, between, steps, video, seconds, image):
    """vLLM's EVS path re-places media positions step by step; with every token kept, ours must give vLLM's
    unpruned layout for any prompt shape and any step boundaries (vLLM's own recompute does not)."""
    import torch
    from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration
    from vllm.multimodal.video_prune.evs import compute_mrope_for_media

    from engine.plugins.video_pruning.qwen2_5_vl import EvsQwen2_5_VLForConditionalGeneration as Evs
    from engine.plugins.video_pruning.qwen2_5_vl import with_span

    video_tokens, image_tokens = video[0] * video[1] * video[2] // 4, image[1] * image[2] // 4
    ids = [TEXT] * before + [VS] + [VID] * video_tokens + [VE] + [TEXT] * between + [VS] + [IMG] * image_tokens + \
        [VE] + [TEXT] * 10
    video_at, image_at = before + 1, before + video_tokens + between + 3
    items = [_item("video", video_at, video, seconds), _item("image", image_at, image)]
    model = SimpleNamespace(config=SimpleNamespace(
        vision_config=SimpleNamespace(spatial_merge_size=2, tokens_per_second=2),
        image_token_id=IMG, video_token_id=VID, vision_start_token_id=VS))
    model.iter_mm_grid_thw = lambda found: Qwen2_5_VLForConditionalGeneration.iter_mm_grid_thw(model, found)
    unpruned, unpruned_delta = Qwen2_5_VLForConditionalGeneration.get_mrope_input_positions(model, ids, items)
    channels = [(video_at, video_tokens, with_span(compute_mrope_for_media(torch.tensor(video), 2, 2, seconds))),
                (image_at, image_tokens, with_span(compute_mrope_for_media(torch.tensor(image), 2)))]
    positions, _ = Evs.get_mrope_input_positions(model, ids, items)
    for low, high in zip([0, *steps], [*steps, len(ids)], strict=True):  # the embeddings each step gathers
        step = [torch.cat([torch.zeros(min(high, at + n) - max(low, at), 8), placed[max(low, at) - at:
                                                                                    min(high, at + n) - at].float()], 1)
                for at, n, placed in channels if max(low, at) < min(high, at + n)]
        if step:
            embeddings, positions, delta = Evs.recompute_mrope_positions(model, ids, step, positions, low)
            assert [e.shape[1] for e in embeddings] == [8] * len(step)  # the 4 position channels stripped
    assert torch.equal(positions, unpruned) and delta == unpruned_delta
