"""The scene reader's architecture: LLaVA-1.5's (ViT with [CLS] -> 2-layer GELU projector -> Llama),
small enough to train on two CPU cores and to ship in the repository.

LLaVA-1.5 ("Improved Baselines with Visual Instruction Tuning", Liu et al. 2023) takes the ViT's
penultimate layer, drops [CLS], projects each of the 576 patch features into one language-model
input. Kept exactly, so vLLM serves it as ``LlavaForConditionalGeneration`` with visual-token
pruning unchanged. Sizes, and why:

* ViT: CLIP layout at 336 px / 14 px patches (576 tokens, as LLaVA-1.5), width 128, 4 layers
  (layer -2 is the feature layer, as in LLaVA; the last layer is never read by the VLM).
* Language model: a 4-layer Llama of width 128 with SmolLM2's tokenizer (49,152 tokens + ``<image>``)
  and tied embeddings. SmolLM2-135M itself costs ~10x more per token; through 576 image tokens per
  step it would see ~10x fewer scenes in the 2-hour budget. Width 128 keeps the tied 49k-row table
  at 12.6 MB in fp16, so the whole model ships under 20 MB.
"""

from __future__ import annotations

from pathlib import Path

from engine.vlm_recipe import IMAGE_TOKEN, SCENES_336

IMAGE_SIZE = SCENES_336.image_size
PATCH_SIZE = SCENES_336.patch_size
NUM_IMAGE_TOKENS = SCENES_336.num_patches  # 576
FEATURE_LAYER = -2
VISION = {"hidden_size": SCENES_336.hidden_size, "intermediate_size": SCENES_336.intermediate_size,
          "num_hidden_layers": SCENES_336.num_layers, "num_attention_heads": SCENES_336.num_heads}
LANGUAGE = {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
            "num_key_value_heads": 4}


def llava_config(tokenizer_vocab: int, image_token_id: int, bos_token_id: int, eos_token_id: int):
    """The ``LlavaConfig`` of the scene reader (transformers objects, imported lazily: vLLM-free)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, hidden_act="quick_gelu", **VISION)
    text = LlamaConfig(vocab_size=tokenizer_vocab, max_position_embeddings=2048, rope_theta=10000.0,
                       tie_word_embeddings=True, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                       pad_token_id=eos_token_id, rms_norm_eps=1e-5, **LANGUAGE)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token_id,
                       image_seq_length=NUM_IMAGE_TOKENS, projector_hidden_act="gelu",
                       vision_feature_select_strategy="default", vision_feature_layer=FEATURE_LAYER,
                       tie_word_embeddings=True, architectures=["LlavaForConditionalGeneration"], dtype="float32")


def scene_tokenizer(language_model_dir: Path):
    """SmolLM2's tokenizer with ``<image>`` added (one id past its vocabulary)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(language_model_dir)
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    return tokenizer


def image_processor():
    """CLIP's preprocessing at 336 px: what vLLM's processor applies to every request's image."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
