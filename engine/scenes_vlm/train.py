"""Train the scene reader: ``python -m engine.scenes_vlm.train [--preset cpu|gpu] [--out DIR]``.

Every step draws fresh scenes (seeds 0, 1, 2, ... in order, so a run is reproducible), asks each
every question it allows as one multi-turn conversation (one encoder pass buys 2-5 supervised
answers), and trains everything end to end: ViT, projector and language model, from scratch.

Two vision objectives stand in for the pre-training a real LLaVA's CLIP tower brings (training
heads only, dropped after training):

* image level: the ViT's [CLS] at the feature layer predicts which (colour, shape) pairs and which
  word the scene holds. It gives [CLS] a reason to attend to objects, the signal FasterVLM-style
  [CLS]-attention pruning reads; LLaVA alone never trains that query (its output is discarded).
* patch level: each feature-layer patch predicts the colour, shape and word of the object covering
  it (from the renderer's layout): dense labels give every patch a gradient, as CLIP's pre-training
  gives a real tower features before LLaVA ever sees it.

Status (benchmarks/RESULTS.md): on this CPU every run so far sits on the blind-guess plateau after
350-700 steps; the tower learns its labels, the language model does not yet retrieve from them.

Held-out accuracy (teacher-forced exact match, which equals greedy decoding's exact match) is
measured on scenes from a disjoint seed range every ``eval_every`` steps and at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional

from engine.scenes_vlm.examples import (
    PATCH_LABEL_CLASSES,
    PLAIN_LAYOUT,
    PRESENCE_LABELS,
    Batch,
    Example,
    FixedDraws,
    collate,
    encode,
    patch_targets,
    presence_targets,
)
from engine.scenes_vlm.held_out import TEST_SEED_BASE, held_out_question
from engine.scenes_vlm.model import FEATURE_LAYER, IMAGE_TOKEN, image_processor, llava_config, scene_tokenizer
from engine.scenes_vlm.questions import KINDS, all_questions
from engine.scenes_vlm.scenes import make_scene, render_with_layout
from engine.scenes_vlm.weights import WEIGHTS_DIR, save_weights


@dataclass(frozen=True)
class Preset:
    batch_size: int
    steps: int
    learning_rate: float
    warmup_steps: int
    eval_every: int
    eval_scenes: int
    device: str


PRESETS = {
    # ~80 min on two CPU cores at ~3.4 s a step (float32: this CPU's bf16 matmuls are 15x slower).
    "cpu": Preset(batch_size=16, steps=1400, learning_rate=2e-3, warmup_steps=100, eval_every=350,
                  eval_scenes=300, device="cpu"),
    # The same recipe with 4x the scenes per step and 2x the steps, for when a GPU is lent.
    "gpu": Preset(batch_size=64, steps=2800, learning_rate=2e-3, warmup_steps=200, eval_every=700,
                  eval_scenes=1000, device="cuda"),
}


class SceneReader(nn.Module):
    """LLaVA plus the training-only [CLS] presence head; runs the ViT only up to the feature layer."""

    def __init__(self, config) -> None:
        super().__init__()
        from transformers import LlavaForConditionalGeneration

        self.llava = LlavaForConditionalGeneration(config)
        self.llava.lm_head.weight = self.llava.model.language_model.embed_tokens.weight  # tied, as served
        self.image_token_id = config.image_token_index
        layers = self.llava.model.vision_tower.encoder.layers
        used = len(layers) + FEATURE_LAYER + 1
        self.unread_layers = nn.ModuleList(layers[used:])  # never read by the VLM; saved as initialised
        self.llava.model.vision_tower.encoder.layers = nn.ModuleList(layers[:used])
        width = config.vision_config.hidden_size
        self.presence_head = nn.Linear(width, len(PRESENCE_LABELS))
        self.patch_heads = nn.ModuleList(nn.Linear(width, classes) for classes in PATCH_LABEL_CLASSES.values())

    def answer_logits(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [T, V] at the supervised positions, the ViT's feature-layer states [B, 577, Dv])."""
        model = self.llava.model
        features = model.vision_tower(batch.pixel_values, output_hidden_states=True).hidden_states[-1]  # [B, 577, Dv]
        image_embeds = model.multi_modal_projector(features[:, 1:])  # [B, 576, Dt]
        embeds = model.language_model.embed_tokens(batch.input_ids)  # [B, S, Dt]
        image_slots = (batch.input_ids == self.image_token_id).unsqueeze(-1)  # [B, S, 1]
        embeds = embeds.masked_scatter(image_slots, image_embeds.to(embeds.dtype))
        hidden = model.language_model(inputs_embeds=embeds, attention_mask=batch.attention_mask).last_hidden_state
        return self.llava.lm_head(hidden[batch.target_rows, batch.target_positions]), features

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(answer loss, vision loss, [T] whether each supervised token is the argmax)."""
        logits, features = self.answer_logits(batch)  # [T, V], [B, 577, Dv]
        answer_loss = functional.cross_entropy(logits, batch.target_ids)
        presence_loss = functional.binary_cross_entropy_with_logits(self.presence_head(features[:, 0]), batch.presence)
        patch_loss = sum(functional.cross_entropy(head(features[:, 1:]).flatten(0, 1), batch.patch_labels[..., index].flatten())
                         for index, head in enumerate(self.patch_heads)) / len(self.patch_heads)
        return answer_loss, presence_loss + patch_loss, logits.argmax(-1) == batch.target_ids


def make_batch(seeds: list[int], tokenizer, processor, *, held_out: bool = False,
               device: str = "cpu") -> tuple[Batch, list[str]]:
    """The batch of ``seeds``' scenes and the kind of each answer in it.

    Training asks every question a scene allows; evaluation (``held_out``) asks each held-out scene
    its one held-out question (held_out.py), laid out as an API request would be.
    """
    examples: list[Example] = []
    kinds: list[str] = []
    scenes = [make_scene(seed) for seed in seeds]
    for seed, scene in zip(seeds, scenes):
        rng = random.Random(seed)
        questions = [held_out_question(seed)] if held_out else all_questions(scene, rng)
        examples.append(encode(tokenizer, questions, FixedDraws(PLAIN_LAYOUT) if held_out else rng))
        kinds += [question.kind for question in questions]
    rendered = [render_with_layout(scene) for scene in scenes]
    pixels = processor([image for image, _ in rendered], return_tensors="pt")["pixel_values"]  # [B, 3, 336, 336]
    presence = torch.stack([presence_targets(scene) for scene in scenes])  # [B, L]
    patches = torch.stack([patch_targets(scene, layout) for scene, (_, layout) in zip(scenes, rendered)])  # [B, 576, 3]
    batch = collate(examples, pixels, presence, patches, tokenizer.pad_token_id or tokenizer.eos_token_id)
    return Batch(**{name: value.to(device) for name, value in vars(batch).items()}), kinds


@torch.no_grad()
def evaluate(reader: SceneReader, tokenizer, processor, scenes: int, device: str) -> dict:
    """Held-out exact-match accuracy, overall and per kind, on ``scenes`` scenes (one question each)."""
    reader.eval()
    right: dict[str, int] = {kind: 0 for kind in KINDS}
    asked: dict[str, int] = {kind: 0 for kind in KINDS}
    seeds = [TEST_SEED_BASE + index for index in range(scenes)]
    for start in range(0, scenes, 32):
        batch, kinds = make_batch(seeds[start:start + 32], tokenizer, processor, held_out=True, device=device)
        _, _, correct = reader(batch)
        wrong = torch.zeros(len(kinds), device=device).index_add_(0, batch.answer_of_target, (~correct).float())
        for kind, answer_wrong in zip(kinds, wrong.tolist()):
            asked[kind] += 1
            right[kind] += answer_wrong == 0
    reader.train()
    per_kind = {kind: right[kind] / asked[kind] for kind in KINDS if asked[kind]}
    return {"accuracy": sum(right.values()) / sum(asked.values()), "per_kind": per_kind, "asked": asked}


def learning_rate(step: int, preset: Preset) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < preset.warmup_steps:
        return preset.learning_rate * (step + 1) / preset.warmup_steps
    progress = (step - preset.warmup_steps) / max(1, preset.steps - preset.warmup_steps)
    return preset.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(preset: Preset, language_model_dir: Path, out: Path, log: Path) -> dict:
    torch.manual_seed(0)
    tokenizer = scene_tokenizer(language_model_dir)
    processor = image_processor()
    config = llava_config(len(tokenizer), tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                          tokenizer.bos_token_id or 1, tokenizer.eos_token_id)
    reader = SceneReader(config).to(preset.device)
    optimiser = torch.optim.AdamW(reader.parameters(), lr=preset.learning_rate, betas=(0.9, 0.98), weight_decay=0.01)
    history = []
    started = time.monotonic()
    for step in range(preset.steps):
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(step, preset)
        seeds = list(range(step * preset.batch_size, (step + 1) * preset.batch_size))
        batch, _ = make_batch(seeds, tokenizer, processor, device=preset.device)
        answer_loss, vision_loss, correct = reader(batch)
        loss = answer_loss + 0.5 * vision_loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reader.parameters(), 1.0)
        optimiser.step()
        record = {"step": step + 1, "minutes": round((time.monotonic() - started) / 60, 2),
                  "answer_loss": round(answer_loss.item(), 4), "vision_loss": round(vision_loss.item(), 4),
                  "token_accuracy": round(correct.float().mean().item(), 4)}
        if (step + 1) % preset.eval_every == 0 or step + 1 == preset.steps:
            record["held_out"] = evaluate(reader, tokenizer, processor, preset.eval_scenes, preset.device)
            save_weights(reader, config, out)
        history.append(record)
        if (step + 1) % 10 == 0 or "held_out" in record:
            with log.open("a") as stream:
                stream.write(json.dumps(record) + "\n")
    summary = {"preset": asdict(preset), "minutes": round((time.monotonic() - started) / 60, 1),
               "scenes_seen": preset.steps * preset.batch_size, "final": history[-1]}
    (out / "training.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    from engine.catalogue import CATALOGUE, prepare
    from service.settings import Settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--steps", type=int, help="override the preset's step count")
    parser.add_argument("--eval-scenes", type=int, help="override the preset's held-out evaluation size")
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    overrides = {"steps": args.steps, "eval_scenes": args.eval_scenes}
    preset = Preset(**{**asdict(preset), **{key: value for key, value in overrides.items() if value}})
    if args.threads:
        torch.set_num_threads(args.threads)
    text_model = prepare(CATALOGUE["smollm2-135m-instruct"], Settings().cache_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "training_log.jsonl"
    log.unlink(missing_ok=True)
    print(json.dumps(train(preset, text_model, args.out, log), indent=1))


if __name__ == "__main__":
    main()
