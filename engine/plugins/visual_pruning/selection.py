"""Which k of an image's N tokens each method keeps: [B, N, ·] in, [B, k] ascending indices out.

The rules themselves live in ``kernels/visual_token_selection`` (reference, batched PyTorch,
Triton); this module only feeds each one the tensors its paper scores tokens by:

* ``divprune``  cosine max-min diversity over the projected tokens (the language model's inputs);
* ``zoo``       the same, each token weighted by the projector's zeroth-order sensitivity at it;
* ``cls``       the [CLS] query's attention in the feature layer (FasterVLM), top-k;
* ``random``    k uniformly random tokens (a baseline; seeded, so a request is reproducible);
* ``stride``    k tokens evenly spread in raster order (a baseline).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kernels.visual_token_selection import max_min_diversity, vectorised

# ZOO-Prune's finite differences: M Gaussian directions scaled to unit expected norm, step h.
ZOO_DIRECTIONS = 4
ZOO_STEP = 1e-2
ZOO_SEED = 0
RANDOM_SEED = 0


def zoo_directions(dimension: int, device: torch.device) -> torch.Tensor:
    """The fixed random directions [M, Dv] (isotropic Gaussian / sqrt(Dv)); the same for every image."""
    generator = torch.Generator(device="cpu").manual_seed(ZOO_SEED)
    return (torch.randn(ZOO_DIRECTIONS, dimension, generator=generator) / dimension ** 0.5).to(device)


def select_tokens(method: str, keep: int, features: torch.Tensor, projected: torch.Tensor,
                  projector_fp32: Callable[[torch.Tensor], torch.Tensor],
                  cls_scores: torch.Tensor | None = None) -> torch.Tensor:
    """Kept indices [B, keep], ascending, for images whose encoder features are [B, N, Dv]
    and projected tokens [B, N, Dt]. ``cls_scores`` [B, N] is needed by ``cls`` only."""
    batch, count = features.shape[:2]
    if method == "divprune":
        return max_min_diversity(vectorised.cosine_distances(projected), keep).sort(dim=1).values
    if method == "zoo":
        features32 = features.float()
        sensitivity = vectorised.zoo_sensitivity(features32, projector_fp32,
                                                 zoo_directions(features.shape[-1], features.device), ZOO_STEP)
        weights = sensitivity / sensitivity.amax(dim=1, keepdim=True).clamp_min(1e-12)  # [B, N]
        return max_min_diversity(vectorised.cosine_distances(projected), keep, weights).sort(dim=1).values
    if method == "cls":
        if cls_scores is None:
            raise RuntimeError("cls pruning needs the [CLS] attention of the feature layer")
        return vectorised.top_k(cls_scores, keep)
    if method == "random":
        return vectorised.random_subset(batch, count, keep, RANDOM_SEED, features.device)
    if method == "stride":
        return vectorised.stride(batch, count, keep, features.device)
    raise ValueError(f"unknown visual pruning method {method!r}")
