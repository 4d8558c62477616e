"""Batched PyTorch selection rules: every image of a batch at once, no Python loop over tokens.

The greedy max-min rule is sequential in its picks (each depends on the previous ones), so it loops
over the ``keep`` picks; each pick is a handful of [B, N] tensor operations. On a GPU the Triton
kernel (``triton_kernels.py``) runs the whole loop in one launch instead. Same rules, same tie-breaks
and same outputs as ``reference.py`` (tested there).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def cosine_distances(tokens: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity: [B, N, D] -> [B, N, N] (float32)."""
    unit = torch.nn.functional.normalize(tokens.float(), dim=-1, eps=1e-8)  # [B, N, D]
    return 1.0 - unit @ unit.transpose(1, 2)


def max_min_diversity(distances: torch.Tensor, keep: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy Max-Min Diversity per image: [B, N, N] -> [B, keep] indices in pick order.

    The rule of ``reference.max_min_diversity_reference``: the first pick is the most isolated token
    (or the largest weight), each next one maximises (distance to the nearest pick) × weight.
    """
    batch, count, _ = distances.shape
    rows = torch.arange(batch, device=distances.device)
    if weights is None:
        off_diagonal = distances.masked_fill(torch.eye(count, dtype=torch.bool, device=distances.device), float("inf"))
        first_score = off_diagonal.amin(dim=2) if count > 1 else torch.zeros(batch, count, device=distances.device)
    else:
        first_score = weights.float()
    picks = torch.empty(batch, keep, dtype=torch.long, device=distances.device)
    chosen = torch.zeros(batch, count, dtype=torch.bool, device=distances.device)
    nearest = torch.full((batch, count), float("inf"), device=distances.device)  # [B, N] distance to nearest pick
    score = first_score
    for step in range(keep):
        pick = score.masked_fill(chosen, -float("inf")).argmax(dim=1)  # [B]
        picks[:, step] = pick
        chosen[rows, pick] = True
        nearest = torch.minimum(nearest, distances[rows, pick])  # [B, N]
        score = nearest if weights is None else nearest * weights
    return picks


def divprune(tokens: torch.Tensor, keep: int) -> torch.Tensor:
    """DivPrune on [B, N, D] tokens: kept indices [B, keep], ascending."""
    return max_min_diversity(cosine_distances(tokens), keep).sort(dim=1).values


def zoo_sensitivity(features: torch.Tensor, projector: Callable[[torch.Tensor], torch.Tensor],
                    directions: torch.Tensor, step: float, projected: torch.Tensor | None = None) -> torch.Tensor:
    """Projector sensitivity per token by forward differences: features [B, N, Dv], directions [M, Dv] -> [B, N].

    All M perturbed copies go through the projector in one call ([M·B·N, Dv]); ``projected`` (P of
    the features, which the model computes anyway) saves the unperturbed pass.
    """
    base = projector(features) if projected is None else projected  # [B, N, Dt]
    moved = features.unsqueeze(0) + step * directions.to(features.dtype)[:, None, None, :]  # [M, B, N, Dv]
    moved_out = projector(moved.flatten(0, 1)).unflatten(0, (directions.shape[0], features.shape[0]))  # [M, B, N, Dt]
    change = torch.linalg.vector_norm((moved_out - base.unsqueeze(0)).float(), dim=-1) / step  # [M, B, N]
    return change.mean(dim=0)


def zoo_sensitivity_mlp(hidden: torch.Tensor, moved_hidden: torch.Tensor, weight_2: torch.Tensor,
                        step: float) -> torch.Tensor:
    """``zoo_sensitivity`` for LLaVA's projector P(x) = W2·gelu(W1·x + b1) + b2, with both layers' linearity:

    P(x + h·u) - P(x) = W2·(gelu(z + h·W1·u) - gelu(z)), z = W1·x + b1,

    the same forward difference (not an approximation), with one matrix product per direction instead of
    four. ``hidden`` = z [B, N, Dh]; ``moved_hidden`` = W1·u per direction [M, Dh]; ``weight_2`` [Dt, Dh].
    Returns [B, N].
    """
    base = torch.nn.functional.gelu(hidden)  # [B, N, Dh]
    change = torch.nn.functional.gelu(hidden.unsqueeze(0) + step * moved_hidden[:, None, None, :]) - base  # [M, B, N, Dh]
    return (torch.linalg.vector_norm(change @ weight_2.T, dim=-1) / step).mean(dim=0)  # [M, B, N, Dt] -> [B, N]


def zoo_prune(projected: torch.Tensor, sensitivity: torch.Tensor, keep: int) -> torch.Tensor:
    """ZOO-Prune's selection: max-min diversity over projected tokens [B, N, Dt], weighted by
    sensitivity [B, N] normalised per image. Kept indices [B, keep], ascending."""
    weights = sensitivity / sensitivity.amax(dim=1, keepdim=True).clamp_min(1e-12)
    return max_min_diversity(cosine_distances(projected), keep, weights).sort(dim=1).values


def cls_attention(query_cls: torch.Tensor, keys: torch.Tensor, scale: float) -> torch.Tensor:
    """[CLS] attention over patches, mean over heads: q [B, H, Dh], k [B, H, S, Dh] -> [B, S-1]."""
    logits = torch.einsum("bhd,bhsd->bhs", query_cls.float(), keys.float()) * scale  # [B, H, S]
    return logits.softmax(dim=-1)[:, :, 1:].mean(dim=1)


def top_k(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the ``keep`` highest scores per row ([B, N] -> [B, keep]), ascending; ties to the lowest index."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    return order[:, :keep].sort(dim=1).values


def stride(batch: int, count: int, keep: int, device: torch.device | None = None) -> torch.Tensor:
    """``keep`` evenly spread indices of ``count``, for every image: [B, keep]."""
    positions = ((torch.arange(keep, device=device, dtype=torch.float64) + 0.5) * count / keep).long()
    return positions.clamp_max(count - 1).expand(batch, keep).clone()


def random_subset(batch: int, count: int, keep: int, seed: int, device: torch.device | None = None) -> torch.Tensor:
    """``keep`` distinct uniformly random indices per image ([B, keep], ascending), reproducible by ``seed``."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    order = torch.rand(batch, count, generator=generator).argsort(dim=1)[:, :keep]
    return order.sort(dim=1).values.to(device) if device is not None else order.sort(dim=1).values
