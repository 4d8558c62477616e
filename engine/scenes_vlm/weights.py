"""The scene reader's weights: written by training (fp16, vLLM's LLaVA key layout, into ``weights/``
by default) and assembled by the catalogue into a directory vLLM serves (float32, tokenizer,
processor, template) as ``--model llava-scenes``.

``weights/`` holds ``config.json``, ``model.safetensors`` and ``training.json``; the tokenizer is
SmolLM2-135M-Instruct's (a catalogue model) plus ``<image>``, so it is never stored there.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"
WEIGHTS_FILE = "model.safetensors"


def llava_state_dict(reader) -> dict:
    """The reader's VLM weights under the names vLLM's ``LlavaForConditionalGeneration`` loads."""
    from engine.vlm_recipe import under_vision_model

    weights = {}
    for name, tensor in reader.llava.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied to the embedding
        for prefix, renamed in (("model.vision_tower.", "vision_tower."),
                                ("model.multi_modal_projector.", "multi_modal_projector."),
                                ("model.language_model.", "language_model.model.")):
            if name.startswith(prefix):
                rest = name[len(prefix):]
                weights[renamed + (under_vision_model(rest) if renamed == "vision_tower." else rest)] = tensor
    used = len(reader.llava.model.vision_tower.encoder.layers)
    for offset, layer in enumerate(reader.unread_layers):
        for name, tensor in layer.state_dict().items():
            weights[f"vision_tower.vision_model.encoder.layers.{used + offset}.{name}"] = tensor
    return weights


def save_weights(reader, config, out: Path) -> None:
    """``out/model.safetensors`` (fp16: the whole model stays under 20 MB) and ``out/config.json``."""
    import torch
    from safetensors.torch import save_file

    weights = {name: tensor.detach().to("cpu", torch.float16).contiguous() for name, tensor in llava_state_dict(reader).items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, out / WEIGHTS_FILE, metadata={"format": "pt"})
    config.save_pretrained(out)


def require_weights(weights_dir: Path = WEIGHTS_DIR) -> None:
    """Raise ValueError (``leanserve serve`` reports it as a setting it cannot serve) naming the command
    that trains the weights, when no training has written them yet."""
    missing = [name for name in ("config.json", WEIGHTS_FILE) if not (weights_dir / name).exists()]
    if missing:
        raise ValueError(f"the scene reader has no trained weights in {weights_dir} (missing {', '.join(missing)}): "
                         "train them with `python -m engine.scenes_vlm.train`")


def weights_digest(weights_dir: Path = WEIGHTS_DIR) -> str:
    """A digest of the trained files, so the catalogue rebuilds its copy after a retrain."""
    require_weights(weights_dir)
    digest = hashlib.sha256()
    for name in ("config.json", WEIGHTS_FILE):
        digest.update((weights_dir / name).read_bytes())
    return digest.hexdigest()[:16]


def build_scene_reader(language_model_dir: Path, out_dir: Path, weights_dir: Path = WEIGHTS_DIR) -> None:
    """Write a servable HF directory: the trained weights in float32 (this CPU's fast dtype), the text
    model's tokenizer with ``<image>``, CLIP's processor and the chat template (no system line)."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import LlavaProcessor

    from engine.scenes_vlm.model import IMAGE_TOKEN, PATCH_SIZE, image_processor, scene_tokenizer
    from engine.vlm_recipe import write_chat_template

    require_weights(weights_dir)
    out_dir.mkdir(parents=True)
    config = json.loads((weights_dir / "config.json").read_text())
    config["dtype"] = "float32"
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    weights = {name: tensor.to(torch.float32) for name, tensor in load_file(weights_dir / WEIGHTS_FILE).items()}
    save_file(weights, out_dir / WEIGHTS_FILE, metadata={"format": "pt"})
    tokenizer = scene_tokenizer(language_model_dir)
    tokenizer.save_pretrained(out_dir)  # before the processor (DESIGN.md, trap 3)
    processor = LlavaProcessor(image_processor=image_processor(), tokenizer=tokenizer, patch_size=PATCH_SIZE,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               image_token=IMAGE_TOKEN)
    processor.save_pretrained(out_dir)
    write_chat_template(out_dir, "", IMAGE_TOKEN, "")
    generation = {"bos_token_id": config["text_config"].get("bos_token_id"), "eos_token_id": config["text_config"]["eos_token_id"]}
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
