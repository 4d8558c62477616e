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

import functools
from dataclasses import dataclass

import torch
from torch.nn import functional

from kernels.visual_token_selection import max_min_diversity, vectorised

# ZOO-Prune's finite differences: M Gaussian directions scaled to unit expected norm, step h. Each direction
# costs one product with the projector's second layer over the image's tokens: M = 4 took 12% of a CLIP-L
# encoder's time on this CPU, M = 2 6% (benchmarks/RESULTS.md), over the 5% budget. One direction suffices in
# these dimensions: for u ~ N(0, I/D), ||J u||^2 concentrates around ||J||_F^2 / D when J (1536 x 1024 for
# LLaVA's projector) has many comparable singular values, so the ranking barely moves with more directions.
ZOO_DIRECTIONS = 1
ZOO_STEP = 1e-2
ZOO_SEED = 0
RANDOM_SEED = 0


@functools.cache
def zoo_directions(dimension: int, device: torch.device) -> torch.Tensor:
    """The fixed random directions [M, Dv] (isotropic Gaussian / sqrt(Dv)); the same for every image, drawn once."""
    generator = torch.Generator(device="cpu").manual_seed(ZOO_SEED)
    return (torch.randn(ZOO_DIRECTIONS, dimension, generator=generator) / dimension ** 0.5).to(device)


@dataclass(frozen=True)
class ProjectorMLP:
    """LLaVA's projector, second(gelu(first(x))), in float32 (finite differences drown in bf16 rounding)."""

    weight_1: torch.Tensor  # [Dh, Dv]
    bias_1: torch.Tensor | None
    weight_2: torch.Tensor  # [Dt, Dh]
    bias_2: torch.Tensor | None

    def first(self, features: torch.Tensor) -> torch.Tensor:
        return functional.linear(features.float(), self.weight_1, self.bias_1)

    def second(self, hidden: torch.Tensor) -> torch.Tensor:
        return functional.linear(hidden, self.weight_2, self.bias_2)

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return self.second(functional.gelu(self.first(features)))

    def sensitivity(self, features: torch.Tensor, directions: torch.Tensor, step: float) -> torch.Tensor:
        """ZOO-Prune's zeroth-order sensitivity per token: [B, N, Dv] -> [B, N] (both layers by linearity)."""
        hidden = self.first(features)  # [B, N, Dh]
        moved_hidden = directions.float() @ self.weight_1.T  # [M, Dh]
        return vectorised.zoo_sensitivity_mlp(hidden, moved_hidden, self.weight_2, step)


def select_tokens(method: str, keep: int, features: torch.Tensor, projected: torch.Tensor,
                  projector: ProjectorMLP | None = None, cls_scores: torch.Tensor | None = None) -> torch.Tensor:
    """Kept indices [B, keep], ascending, for images whose encoder features are [B, N, Dv]
    and projected tokens [B, N, Dt]. ``projector`` is needed by ``zoo``, ``cls_scores`` [B, N] by ``cls``."""
    batch, count = features.shape[:2]
    if method == "divprune":
        return max_min_diversity(vectorised.cosine_distances(projected), keep).sort(dim=1).values
    if method == "zoo":
        if projector is None:
            raise RuntimeError("zoo pruning needs the projector's weights")
        sensitivity = projector.sensitivity(features, zoo_directions(features.shape[-1], features.device), ZOO_STEP)
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
