"""Build a Qwen2.5-VL-architecture model locally, around a real Qwen2.5 text model.

Qwen2.5-VL ("Qwen2.5-VL Technical Report", Bai et al. 2025) reads images at their own
resolution and video as frames: a windowed ViT turns 14-px patches (2 frames deep for video)
into features, an MLP merges each 2×2 group into one language-model token, and the language
model places tokens with M-RoPE (time, height, width). It is the architecture vLLM's Efficient
Video Sampling (EVS, ``--video-pruning-rate``) prunes, which LLaVA-1.5 cannot show.

The recipe writes an HF directory vLLM loads as ``Qwen2_5_VLForConditionalGeneration``: the
vision tower and merger are random (seeded, so two builds are byte-identical), the language
model is a real catalogue Qwen2.5 model, whose tokenizer already has ``<|image_pad|>``,
``<|video_pad|>`` and ``<|vision_start|>``/``<|vision_end|>``. M-RoPE splits the rotary half
of each head (64 / 2 = 32 channels for the 0.5B model) as 8 / 12 / 12 between time, height and
width, the real models' 16 / 24 / 24 scaled to the head; on text alone all three positions are
equal, so the text model answers as it does on its own.

Pixel budgets keep the CPU's prefill bounded: at most 256 tokens per image and 64 per two
video frames (the processor resizes larger inputs to fit, keeping their aspect ratio).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.vlm_recipe import VlmRecipe

MERGED_PATCH = 28  # 14-px patches, merged 2×2: one language-model token per 28×28 pixels
MAX_IMAGE_TOKENS = 256
MAX_VIDEO_TOKENS_PER_FRAME_PAIR = 64
MROPE_SECTION_PER_64 = (8, 12, 12)  # time, height, width channels of a 64-dim head's rotary half


@dataclass(frozen=True)
class QwenVisionTower:
    """The Qwen2.5-VL ViT's shape (every ``fullatt_every``-th block attends globally, the rest in windows)."""

    hidden_size: int
    intermediate_size: int
    depth: int
    num_heads: int
    fullatt_every: int = 8

    @property
    def fullatt_block_indexes(self) -> list[int]:
        return [i for i in range(self.depth) if (i + 1) % self.fullatt_every == 0]


# Qwen2.5-VL-3B/7B's tower (32 blocks, 1280 wide, 670M parameters): the encoder's real cost.
QWEN2_5_VL_TOWER = QwenVisionTower(hidden_size=1280, intermediate_size=3420, depth=32, num_heads=16)
# Four blocks, 128 wide: the same token counts at a sliver of the cost, for tests of mechanics.
TINY_QWEN_TOWER = QwenVisionTower(hidden_size=128, intermediate_size=256, depth=4, num_heads=2, fullatt_every=2)

IMAGE_MARKUP = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO_MARKUP = "<|vision_start|><|video_pad|><|vision_end|>"


def build_qwen2_5_vl(recipe: VlmRecipe, language_model_dir: Path, out_dir: Path) -> None:
    """Write the HF directory of ``recipe`` (a Qwen2.5-VL one) into ``out_dir`` (which must not exist yet)."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import (
        AutoConfig,
        AutoTokenizer,
        Qwen2_5_VLConfig,
        Qwen2_5_VLProcessor,
        Qwen2_5_VLVisionConfig,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    assert isinstance(recipe.tower, QwenVisionTower)
    dtype = getattr(torch, recipe.save_dtype)
    tokenizer = AutoTokenizer.from_pretrained(language_model_dir)
    vocab = tokenizer.get_vocab()
    text = AutoConfig.from_pretrained(language_model_dir).to_dict()
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    scale = head_dim // 64
    rope = dict(text.get("rope_parameters") or {"rope_theta": text.get("rope_theta", 1e6)})
    rope.update(rope_type="default", mrope_section=[channels * scale for channels in MROPE_SECTION_PER_64])
    text.update(rope_parameters=rope, model_type="qwen2_5_vl_text", architectures=None)

    vision_config = Qwen2_5_VLVisionConfig(
        depth=recipe.tower.depth, hidden_size=recipe.tower.hidden_size,
        intermediate_size=recipe.tower.intermediate_size, num_heads=recipe.tower.num_heads,
        out_hidden_size=text["hidden_size"], fullatt_block_indexes=recipe.tower.fullatt_block_indexes,
        tokens_per_second=2,
    )
    config = Qwen2_5_VLConfig(
        text_config=text, vision_config=vision_config.to_dict(),
        image_token_id=vocab["<|image_pad|>"], video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"], vision_end_token_id=vocab["<|vision_end|>"],
        tie_word_embeddings=text.get("tie_word_embeddings", False),
        architectures=["Qwen2_5_VLForConditionalGeneration"], dtype=recipe.save_dtype,
    )

    weights = {}
    for shard in sorted(language_model_dir.glob("*.safetensors")):
        for name, tensor in load_file(shard).items():
            renamed = name if name.startswith("lm_head.") else name.replace("model.", "model.language_model.", 1)
            weights[renamed] = tensor.to(dtype)
    weights.update(_random_tower(vision_config, recipe.seed, dtype))

    out_dir.mkdir(parents=True)
    config.save_pretrained(out_dir)
    save_file(weights, out_dir / "model.safetensors", metadata={"format": "pt"})
    tokenizer.save_pretrained(out_dir)
    image_pixels = {"min_pixels": MERGED_PATCH**2 * 4, "max_pixels": MERGED_PATCH**2 * MAX_IMAGE_TOKENS}
    video_pixels = {"min_pixels": MERGED_PATCH**2 * 4, "max_pixels": MERGED_PATCH**2 * MAX_VIDEO_TOKENS_PER_FRAME_PAIR}
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**image_pixels), tokenizer=tokenizer,
                                    video_processor=Qwen2VLVideoProcessor(**video_pixels))
    processor.save_pretrained(out_dir)


def _random_tower(vision_config, seed: int, dtype) -> dict:
    """Seeded random Qwen2.5-VL ViT and patch merger (HF's own initialisation), under ``model.visual.``."""
    import torch
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    torch.manual_seed(seed)
    tower = Qwen2_5_VisionTransformerPretrainedModel._from_config(vision_config, dtype=torch.float32)
    return {f"model.visual.{name}": tensor.to(dtype) for name, tensor in tower.state_dict().items()}
