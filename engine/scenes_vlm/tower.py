"""Stage 1 of the scene reader's recipe: the ViT tower alone, on the renderer's dense labels.

LLaVA (Liu et al. 2023) starts from a CLIP tower that already sees shapes, text and layout; ours
starts from nothing. Trained end to end from the first step, the tower learnt a patch's colour and
cell but barely its shape and not its word in 600 steps (benchmarks/RESULTS.md), and every question
but counting needs one of those. Without the language model a step is the tower's share of the work
only, so this stage sees twice the scenes a step for a fraction of the time, and the language model
then starts from patch states it can read.

Scenes come from their own seed range (``TOWER_SEED_BASE``), apart from stage 2's and the held-out set.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from engine.scenes_vlm.examples import patch_owners, patch_targets, presence_targets
from engine.scenes_vlm.scenes import make_scene, render_with_layout

TOWER_SEED_BASE = 500_000_000


def tower_batch(seeds: list[int], processor, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pixel values [B, 3, 336, 336], presence [B, L], patch labels [B, 576, 4]) of ``seeds``' scenes."""
    scenes = [make_scene(seed) for seed in seeds]
    rendered = [render_with_layout(scene) for scene in scenes]
    pixels = processor([image for image, _ in rendered], return_tensors="pt")["pixel_values"]
    presence = torch.stack([presence_targets(scene) for scene in scenes])
    labels = torch.stack([patch_targets(scene, patch_owners(scene, layout)) for scene, (_, layout) in zip(scenes, rendered)])
    return pixels.to(device), presence.to(device), labels.to(device)


def pretrain_tower(reader, preset, processor, log: Path) -> dict:
    """Train the tower and its label heads for ``preset.tower_steps`` steps; returns the last record.

    Same optimiser and schedule shape as stage 2 (warm-up, cosine to a tenth), over the tower's and
    the heads' parameters only.
    """
    from engine.scenes_vlm.train import learning_rate

    schedule = replace(preset, steps=preset.tower_steps, warmup_steps=min(preset.warmup_steps, preset.tower_steps // 10))
    model = reader.llava.model
    # The projector, word table and final norm too: the image tokens' word alignment (word_alignment.py).
    parameters = [*model.vision_tower.parameters(), *reader.presence_head.parameters(),
                  *reader.patch_heads.parameters(), *model.multi_modal_projector.parameters(),
                  *model.language_model.embed_tokens.parameters(), *model.language_model.norm.parameters()]
    optimiser = torch.optim.AdamW(parameters, lr=preset.learning_rate, betas=(0.9, 0.98), weight_decay=0.01)
    started = time.monotonic()
    record: dict = {}
    for step in range(preset.tower_steps):
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(step, schedule)
        first = TOWER_SEED_BASE + step * preset.tower_batch_size
        pixels, presence, labels = tower_batch(list(range(first, first + preset.tower_batch_size)), processor,
                                               preset.device)
        loss = reader.vision_loss(reader.tower_features(pixels), presence, labels)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimiser.step()
        record = {"tower_step": step + 1, "minutes": round((time.monotonic() - started) / 60, 2),
                  "vision_loss": round(loss.item(), 4),
                  "vision_parts": {name: round(value, 3) for name, value in reader.vision_parts.items()}}
        if (step + 1) % 10 == 0 or step + 1 == preset.tower_steps:
            with log.open("a") as stream:
                stream.write(json.dumps(record) + "\n")
    return record
