"""Selection cost per image, per method and kept ratio, against a CLIP-L/14-336 encoder's forward pass.

    python -m kernels.visual_token_selection.benchmark [--images 1,8] [--dim 1536] [--out results.json]

The issue's budget: selection under 5% of the encoder's time. Times the batched PyTorch rules on
this machine's CPU (and the Triton kernel of the greedy step when a GPU is present) on [B, 576, D]
tokens, beside the forward pass of a randomly initialised CLIP-L/14-336 vision tower (transformers)
on the same B images, in the same dtype. Median of ``--repeats`` runs after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from kernels.visual_token_selection import max_min_diversity, vectorised

TOKENS = 576
RATIOS = (0.5, 0.25, 0.1, 0.05)


def timed(call: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of ``call`` (one warm-up run first)."""
    call()
    samples = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        call()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        samples.append(1000 * (time.perf_counter() - started))
    return statistics.median(samples)


def encoder_ms(images: int, dtype: torch.dtype, device: str, repeats: int) -> float:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                              image_size=336, patch_size=14, hidden_act="quick_gelu")  # LLaVA reads layer -2
    tower = CLIPVisionModel(config).to(device=device, dtype=dtype).eval()
    pixels = torch.randn(images, 3, 336, 336, device=device, dtype=dtype)
    with torch.inference_mode():
        return timed(lambda: tower(pixels), repeats)


def selection_ms(images: int, dim: int, dtype: torch.dtype, device: str, repeats: int) -> dict[str, dict[str, float]]:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(images, TOKENS, 1024, generator=generator).to(device=device, dtype=dtype)  # [B, N, Dv]
    projector = torch.nn.Sequential(torch.nn.Linear(1024, dim), torch.nn.GELU(), torch.nn.Linear(dim, dim)).to(device)
    cls_query = torch.randn(images, 16, 64, generator=generator).to(device)  # [B, H, Dh]
    cls_keys = torch.randn(images, 16, TOKENS + 1, 64, generator=generator).to(device)  # [B, H, S, Dh]
    from engine.plugins.visual_pruning.selection import ZOO_DIRECTIONS, ZOO_STEP, ProjectorMLP

    directions = torch.randn(ZOO_DIRECTIONS, 1024, generator=generator).to(device) / 32
    mlp = ProjectorMLP(projector[0].weight.float(), projector[0].bias.float(), projector[2].weight.float(),
                       projector[2].bias.float())
    out: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        projected = projector(features.float()).to(dtype)  # [B, N, Dt]
        for ratio in RATIOS:
            keep = round(ratio * TOKENS)
            rules = {
                "divprune": lambda k=keep: max_min_diversity(vectorised.cosine_distances(projected), k),
                "zoo": lambda k=keep: max_min_diversity(
                    vectorised.cosine_distances(projected), k, mlp.sensitivity(features, directions, ZOO_STEP)),
                "cls": lambda k=keep: vectorised.top_k(vectorised.cls_attention(cls_query, cls_keys, 0.125), k),
                "random": lambda k=keep: vectorised.random_subset(images, TOKENS, k, 0, device),
                "stride": lambda k=keep: vectorised.stride(images, TOKENS, k, device),
            }
            for name, rule in rules.items():
                out.setdefault(name, {})[str(ratio)] = timed(rule, repeats)
            if torch.cuda.is_available():
                from kernels.visual_token_selection.triton_kernels import max_min_diversity_triton

                distances = vectorised.cosine_distances(projected)
                out.setdefault("divprune greedy: triton", {})[str(ratio)] = timed(
                    lambda d=distances, k=keep: max_min_diversity_triton(d, k), repeats)
                out.setdefault("divprune greedy: torch", {})[str(ratio)] = timed(
                    lambda d=distances, k=keep: vectorised.max_min_diversity(d, k), repeats)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default="1,8")
    parser.add_argument("--dim", type=int, default=1536, help="projected (language model) width")
    parser.add_argument("--dtype", default="bfloat16" if torch.cuda.is_available() else "float32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype)
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "threads": torch.get_num_threads(), "dtype": args.dtype, "dim": args.dim,
              "by_images": {}}
    for images in (int(part) for part in args.images.split(",")):
        encoder = encoder_ms(images, dtype, device, max(2, args.repeats // 2))
        selection = selection_ms(images, args.dim, dtype, device, args.repeats)
        worst = {name: max(times.values()) for name, times in selection.items()}
        result["by_images"][images] = {"encoder_ms": encoder, "selection_ms": selection,
                                       "worst_share_of_encoder": {n: t / encoder for n, t in worst.items()}}
        print(f"{images} image(s): encoder {encoder:.1f} ms; selection (worst ratio) "
              + ", ".join(f"{n} {t:.2f} ms ({100 * t / encoder:.1f}%)" for n, t in worst.items()))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
