"""Train the scene reader: ``python -m engine.scenes_vlm.train [--preset cpu|gpu] [--out DIR]``.

Every step draws fresh scenes (seeds 0, 1, 2, ... in order, so a run is reproducible), asks each
every question it allows as one multi-turn conversation (one encoder pass buys 2-5 supervised
answers), and trains everything end to end: ViT, projector and language model, from scratch.

Two vision objectives stand in for the pre-training a real LLaVA's CLIP tower brings (training
heads only, dropped after training):

* image level: the ViT's [CLS] at the feature layer predicts which (colour, shape) pairs and which
  word the scene holds. It gives [CLS] a reason to attend to objects, the signal FasterVLM-style
  [CLS]-attention pruning reads; LLaVA alone never trains that query (its output is discarded).
* patch level: each feature-layer patch predicts the colour, shape, word and cell of the object
  covering it (from the renderer's layout; colour also marks "nothing here", the other three are
  learnt on object patches only): dense labels give every patch a gradient, as CLIP's pre-training
  gives a real tower features before LLaVA ever sees it. The tower's position table starts at 2-D
  sine-cosine values (``init_grid_positions``).

One language objective shortcuts retrieval (``SceneReader.grounding_loss``): two heads in layers 1
and 2 are taught, at every answer token, to look at the patches of the objects the answer is about,
and to write the answer's first token from what they read there.

Image-token dropping (``image_token_drop``, ``examples.drop_image_tokens``): on a share of steps the
language model sees a random subset of the image tokens at consecutive positions, as it does after
pruning inside vLLM, so that it reads "where" from an image token's content, not from its place.

Status (benchmarks/RESULTS.md): run 10 (this preset) scores 0.66 held-out through the server against
0.28 for the best blind guess; colour, shape and position are read, count and text not yet. Without
image-token dropping (run 9) it scored 0.51 and position answers fell to chance under any pruning.

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
    drop_image_tokens,
    encode,
    patch_owners,
    patch_targets,
    presence_targets,
)
from engine.scenes_vlm.held_out import TEST_SEED_BASE, held_out_question
from engine.scenes_vlm.model import (
    FEATURE_LAYER,
    IMAGE_TOKEN,
    NUM_IMAGE_TOKENS,
    image_processor,
    llava_config,
    scene_tokenizer,
)
from engine.scenes_vlm.questions import KINDS, all_questions
from engine.scenes_vlm.scenes import make_scene, render_with_layout
from engine.scenes_vlm.tower import pretrain_tower
from engine.scenes_vlm.weights import WEIGHTS_DIR, save_weights
from engine.scenes_vlm.word_alignment import AnswerWords, alignment_loss, answer_words


@dataclass(frozen=True)
class Preset:
    batch_size: int
    steps: int
    learning_rate: float
    warmup_steps: int
    eval_every: int
    eval_scenes: int
    device: str
    tower_steps: int = 0  # stage 1 (tower.py): the tower alone on the dense labels, before LLaVA end to end
    tower_batch_size: int = 32
    image_token_drop: float = 0.0  # share of LLaVA steps whose language model sees a random subset of image tokens


PRESETS = {
    # 28 min on two CPU cores (run 10, the shipped weights; float32: this CPU's bf16 matmuls are 15x
    # slower): stage 1 at ~1.3 s a step (~13 min), stage 2 at ~1.3 s a step (~15 min; half the steps see
    # fewer image tokens), held-out evaluations ~1 min each.
    "cpu": Preset(batch_size=16, steps=700, learning_rate=2e-3, warmup_steps=100, eval_every=350,
                  eval_scenes=300, device="cpu", tower_steps=600, tower_batch_size=32, image_token_drop=0.5),
    # The same recipe with 4x the scenes per step and 2x the steps, for when a GPU is lent.
    "gpu": Preset(batch_size=64, steps=2800, learning_rate=2e-3, warmup_steps=200, eval_every=700,
                  eval_scenes=1000, device="cuda", tower_steps=1600, tower_batch_size=128, image_token_drop=0.5),
}


class SceneReader(nn.Module):
    """LLaVA plus the training-only [CLS] presence head; runs the ViT only up to the feature layer."""

    def __init__(self, config, words: AnswerWords) -> None:
        super().__init__()
        self.words = words  # the answer words each object patch's image token is aligned to (word_alignment.py)
        from transformers import LlavaForConditionalGeneration

        self.llava = LlavaForConditionalGeneration(config)
        self.llava.model.language_model.config._attn_implementation = _register_capturing_attention()
        self.llava.lm_head.weight = self.llava.model.language_model.embed_tokens.weight  # tied, as served
        self.image_token_id = config.image_token_index
        layers = self.llava.model.vision_tower.encoder.layers
        used = len(layers) + FEATURE_LAYER + 1
        self.unread_layers = nn.ModuleList(layers[used:])  # never read by the VLM; saved as initialised
        self.llava.model.vision_tower.encoder.layers = nn.ModuleList(layers[:used])
        width = config.vision_config.hidden_size
        init_grid_positions(self.llava.model.vision_tower.embeddings.position_embedding.weight)
        self.vision_parts: dict[str, float] = {}  # the last forward's vision losses, for the training log
        self.presence_head = nn.Linear(width, len(PRESENCE_LABELS))
        self.patch_heads = nn.ModuleList(nn.Linear(width, classes) for classes in PATCH_LABEL_CLASSES.values())

    def answer_logits(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [T, V] at the supervised positions, the ViT's feature-layer states [B, 577, Dv])."""
        model = self.llava.model
        features = self.tower_features(batch.pixel_values)  # [B, 577, Dv]
        image_embeds = model.multi_modal_projector(features[:, 1:])  # [B, 576, Dt]
        if batch.kept_patches is not None:
            image_embeds = image_embeds.gather(1, batch.kept_patches[..., None].expand(-1, -1, image_embeds.shape[-1]))  # [B, k, Dt]
        embeds = model.language_model.embed_tokens(batch.input_ids)  # [B, S, Dt]
        image_slots = (batch.input_ids == self.image_token_id).unsqueeze(-1)  # [B, S, 1]
        embeds = embeds.masked_scatter(image_slots, image_embeds.to(embeds.dtype))
        hidden = model.language_model(inputs_embeds=embeds, attention_mask=batch.attention_mask).last_hidden_state
        return self.llava.lm_head(hidden[batch.target_rows, batch.target_positions]), features

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(answer loss, vision loss, grounding loss, [T] whether each supervised token is the argmax)."""
        _CAPTURED.clear()
        logits, features = self.answer_logits(batch)  # [T, V], [B, 577, Dv]
        answer_loss = functional.cross_entropy(logits, batch.target_ids)
        grounding = sum(self.grounding_loss(batch, *_CAPTURED[layer]) for layer in GROUNDED_LAYERS) / len(GROUNDED_LAYERS)
        vision_loss = self.vision_loss(features, batch.presence, batch.patch_labels)
        return answer_loss, vision_loss, grounding, logits.argmax(-1) == batch.target_ids

    def tower_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The ViT's feature-layer states [B, 577, Dv] ([CLS] first), what the projector reads."""
        return self.llava.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states[-1]

    def vision_loss(self, features: torch.Tensor, presence: torch.Tensor, patch_labels: torch.Tensor) -> torch.Tensor:
        """[CLS] presence + per-patch label losses of ``features`` [B, 577, Dv]; keeps each part's loss, and
        each head's accuracy on the patches that show its attribute, in ``vision_parts`` for the log."""
        presence_loss = functional.binary_cross_entropy_with_logits(self.presence_head(features[:, 0]), presence)
        patches = features[:, 1:].flatten(0, 1)  # [B * 576, Dv]
        labels = patch_labels.flatten(0, 1)  # [B * 576, 4]
        on_object = labels.any(-1)  # attributes are learnt where there is something; colour also learns where
        parts, accuracy = {}, {}
        for index, (name, head) in enumerate(zip(PATCH_LABEL_CLASSES, self.patch_heads)):
            rows = slice(None) if name == "colour" else on_object
            logits = head(patches[rows])  # [N, classes]
            parts[name] = functional.cross_entropy(logits, labels[rows, index])
            right = logits.argmax(-1) == labels[rows, index]  # [N]
            accuracy[f"{name}_accuracy"] = right[labels[rows, index] > 0].float().mean().item()  # where it is shown
        image_tokens = self.llava.model.multi_modal_projector(patches[on_object])  # [N, Dt]
        language_model = self.llava.model.language_model
        aligned, aligned_accuracy = alignment_loss(language_model.norm(image_tokens), labels[on_object], self.words,
                                                   language_model.embed_tokens.weight)
        self.vision_parts = {"presence": presence_loss.item(), **{name: loss.item() for name, loss in parts.items()},
                             "aligned": aligned.item(), **accuracy, **aligned_accuracy}
        return presence_loss + sum(parts.values()) / len(parts) + aligned

    def grounding_loss(self, batch: Batch, attention: nn.Module, query: torch.Tensor, key: torch.Tensor,
                       value: torch.Tensor) -> torch.Tensor:
        """Teach the grounded heads to look and to read, from each answer token:

        * look: -log of the attention mass they put on the patches of the objects the answer is read
          from (rows with no such object are left out);
        * read: where the answer's first token can be read off those objects alone (not counts), the
          heads' own output, through the final norm and the tied head, predicts it (a direct-logit
          path, so value and output projections learn to carry what the patches show).

        query, key, value [B, H, S, D] after RoPE, as ``attention`` (the layer's module) saw them.
        """
        heads = GROUNDED_HEADS
        rows, positions = batch.target_rows, batch.target_positions
        queries = query[rows, :heads, positions]  # [T, h, D]
        scores = torch.einsum("thd,thsd->ths", queries, key[rows, :heads]) * attention.scaling  # [T, h, S]
        later = torch.arange(key.shape[2], device=key.device) > positions[:, None]  # [T, S]
        probs = scores.masked_fill(later[:, None], float("-inf")).softmax(-1)  # [T, h, S]
        image_positions = (batch.input_ids == self.image_token_id).nonzero()[:, 1].view(len(batch.input_ids), -1)  # [B, k]
        on_patches = probs.gather(2, image_positions[rows][:, None].expand(-1, heads, -1))  # [T, h, k]
        mass = (on_patches * batch.target_patches[:, None]).sum(-1)  # [T, h]
        grounded = batch.target_patches.any(-1)  # [T]
        look = -mass[grounded].clamp_min(1e-6).log().mean()
        read = batch.target_read_off & grounded  # [T]
        if not read.any():
            return look
        mixed = torch.einsum("ths,thsd->thd", probs[read], value[rows[read], :heads])  # [R, h, D]
        width = heads * value.shape[-1]
        written = mixed.flatten(1) @ attention.o_proj.weight[:, :width].T  # [R, Dt]: the heads' share of o_proj
        language_model = self.llava.model.language_model
        logits = self.llava.lm_head(language_model.norm(written))  # [R, V]
        return look + functional.cross_entropy(logits, batch.target_ids[read])


def init_grid_positions(table: torch.Tensor) -> None:
    """Start the ViT's learned position table [1 + 576, Dv] at 2-D sine-cosine values of the patch's
    row and column ([CLS] at zero), as MAE fixes them (He et al. 2022, "Masked Autoencoders Are
    Scalable Vision Learners"). CLIP's default start (N(0, 0.02)) is ~4% of a patch's embedding: from
    scratch, 250 steps left the tower unable to tell where a patch is (a linear probe read a patch's
    cell at chance), and so unable to tell shapes, which only neighbours show."""
    positions, width = table.shape[0] - 1, table.shape[1]
    side = int(positions ** 0.5)
    rows, columns = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")  # [side, side]
    frequencies = 1.0 / 10000 ** (torch.arange(width // 4) / (width // 4))  # [Dv / 4]
    halves = []
    for coordinate in (rows, columns):
        angles = coordinate.flatten()[:, None].float() * frequencies[None]  # [576, Dv / 4]
        halves += [angles.sin(), angles.cos()]
    with torch.no_grad():
        table[0].zero_()
        table[1:] = torch.cat(halves, dim=1)  # [576, Dv]


# Attention supervision (training only): in these language-model layers, the first GROUNDED_HEADS
# heads are taught to look, from every answer token, at the patches the answer is read from, the way
# grounding objectives shortcut a from-scratch model past learning retrieval from the answer alone.
GROUNDED_LAYERS = (1, 2)
GROUNDED_HEADS = 2
CAPTURING_ATTENTION = "leanserve_scene_capture"
_CAPTURED: dict[int, tuple] = {}  # layer -> (module, query, key, value) of the last forward


def _register_capturing_attention() -> str:
    """Register SDPA that also keeps the grounded layers' module, query, key and value; returns its name."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def capturing_attention(module, query, key, value, attention_mask, **kwargs):
        if module.layer_idx in GROUNDED_LAYERS:
            _CAPTURED[module.layer_idx] = (module, query, key, value)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(CAPTURING_ATTENTION, capturing_attention)
    return CAPTURING_ATTENTION


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
    owners = torch.stack([patch_owners(scene, layout) for scene, (_, layout) in zip(scenes, rendered)])  # [B, 576]
    patches = torch.stack([patch_targets(scene, scene_owners) for scene, scene_owners in zip(scenes, owners)])  # [B, 576, 4]
    batch = collate(examples, pixels, presence, owners, patches, tokenizer.pad_token_id or tokenizer.eos_token_id)
    return Batch(**{name: None if value is None else value.to(device) for name, value in vars(batch).items()}), kinds


def image_tokens_kept(step: int, batch_size: int, preset: Preset) -> torch.Tensor | None:
    """[B, k] sorted random patch indices for a step that trains on pruned images, else None: a share
    ``image_token_drop`` of steps, k log-uniform between 5% and 100% of the tokens (seeded by the step)."""
    rng = random.Random(f"image-token-drop-{step}")
    if rng.random() >= preset.image_token_drop:
        return None
    k = round(NUM_IMAGE_TOKENS * math.exp(rng.uniform(math.log(0.05), 0.0)))
    generator = torch.Generator().manual_seed(step)
    return torch.stack([torch.randperm(NUM_IMAGE_TOKENS, generator=generator)[:k].sort().values
                        for _ in range(batch_size)])


@torch.no_grad()
def evaluate(reader: SceneReader, tokenizer, processor, scenes: int, device: str) -> dict:
    """Held-out exact-match accuracy, overall and per kind, on ``scenes`` scenes (one question each)."""
    reader.eval()
    right: dict[str, int] = {kind: 0 for kind in KINDS}
    asked: dict[str, int] = {kind: 0 for kind in KINDS}
    seeds = [TEST_SEED_BASE + index for index in range(scenes)]
    for start in range(0, scenes, 32):
        batch, kinds = make_batch(seeds[start:start + 32], tokenizer, processor, held_out=True, device=device)
        *_, correct = reader(batch)
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
    reader = SceneReader(config, answer_words(tokenizer).to(preset.device)).to(preset.device)
    started = time.monotonic()
    tower = pretrain_tower(reader, preset, processor, log) if preset.tower_steps else None
    optimiser = torch.optim.AdamW(reader.parameters(), lr=preset.learning_rate, betas=(0.9, 0.98), weight_decay=0.01)
    history = []
    for step in range(preset.steps):
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(step, preset)
        seeds = list(range(step * preset.batch_size, (step + 1) * preset.batch_size))
        batch, _ = make_batch(seeds, tokenizer, processor, device=preset.device)
        kept = image_tokens_kept(step, len(seeds), preset)
        if kept is not None:
            batch = drop_image_tokens(batch, kept.to(preset.device), reader.image_token_id)
        answer_loss, vision_loss, grounding_loss, correct = reader(batch)
        loss = answer_loss + 0.5 * vision_loss + grounding_loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reader.parameters(), 1.0)
        optimiser.step()
        record = {"step": step + 1, "minutes": round((time.monotonic() - started) / 60, 2),
                  "answer_loss": round(answer_loss.item(), 4), "vision_loss": round(vision_loss.item(), 4),
                  "grounding_loss": round(grounding_loss.item(), 4),
                  "vision_parts": {name: round(value, 3) for name, value in reader.vision_parts.items()},
                  "token_accuracy": round(correct.float().mean().item(), 4)}
        if (step + 1) % preset.eval_every == 0 or step + 1 == preset.steps:
            record["held_out"] = evaluate(reader, tokenizer, processor, preset.eval_scenes, preset.device)
            save_weights(reader, config, out)
        history.append(record)
        if (step + 1) % 10 == 0 or "held_out" in record:
            with log.open("a") as stream:
                stream.write(json.dumps(record) + "\n")
    summary = {"preset": asdict(preset), "minutes": round((time.monotonic() - started) / 60, 1), "tower": tower,
               "scenes_seen": preset.steps * preset.batch_size, "final": history[-1]}
    (out / "training.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    from engine.catalogue import CATALOGUE, prepare
    from service.settings import Settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--steps", type=int, help="override the preset's step count")
    parser.add_argument("--tower-steps", type=int, help="override the preset's tower-stage step count (0: none)")
    parser.add_argument("--eval-scenes", type=int, help="override the preset's held-out evaluation size")
    parser.add_argument("--image-token-drop", type=float,
                        help="override the share of LLaVA steps trained on a random subset of image tokens")
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    overrides = {"steps": args.steps, "eval_scenes": args.eval_scenes, "tower_steps": args.tower_steps,
                 "image_token_drop": args.image_token_drop}
    preset = Preset(**{**asdict(preset), **{key: value for key, value in overrides.items() if value is not None}})
    if args.threads:
        torch.set_num_threads(args.threads)
    text_model = prepare(CATALOGUE["smollm2-135m-instruct"], Settings().cache_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "training_log.jsonl"
    log.unlink(missing_ok=True)
    print(json.dumps(train(preset, text_model, args.out, log), indent=1))


if __name__ == "__main__":
    main()
