"""Plain PyTorch references of the visual-token selection rules: one image at a time, one token at a time.

They are the specification the fast versions (``vectorised.py``, ``triton_kernels.py``) are tested
against, written to be read next to the papers rather than to be fast. Every rule returns the kept
indices in ascending order: LLaVA's language model reads image tokens in raster order, and keeping
that order keeps the positions it was trained on.

* DivPrune (Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal
  Models", CVPR 2025) casts pruning as the Max-Min Diversity Problem over the image's tokens with
  cosine distance, solved greedily (farthest-point selection).
* ZOO-Prune (Kim et al., "Training-Free Token Pruning via Zeroth-Order Gradient Estimation in
  Vision-Language Models", 2025) estimates each token's sensitivity from finite differences of the
  projector along random directions and keeps sensitive tokens that are also diverse.
* FasterVLM (Zhang et al., "[CLS] Attention is All You Need for Training-Free Visual Token
  Pruning", 2024) keeps the patches the [CLS] query attends to most.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def cosine_distance_matrix(tokens: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity between every pair of tokens: [N, D] -> [N, N]."""
    count = tokens.shape[0]
    distances = torch.empty(count, count, dtype=torch.float32)
    for i in range(count):
        for j in range(count):
            similarity = torch.nn.functional.cosine_similarity(tokens[i].float(), tokens[j].float(), dim=0, eps=1e-8)
            distances[i, j] = 1.0 - similarity
    return distances


def max_min_diversity_reference(distances: torch.Tensor, keep: int, weights: torch.Tensor | None = None) -> list[int]:
    """Greedy Max-Min Diversity over one image: [N, N] distances -> ``keep`` indices, in pick order.

    The first pick is the token farthest from its nearest neighbour (the most isolated; with
    ``weights``, the largest weight); each next pick maximises its distance to the nearest token
    already picked, times its weight when given (ZOO-Prune's sensitivity). Ties go to the lowest index.
    """
    count = distances.shape[0]
    chosen: list[int] = []
    for _ in range(keep):
        best, best_score = -1, -float("inf")
        for candidate in range(count):
            if candidate in chosen:
                continue
            if chosen:
                score = min(float(distances[candidate, other]) for other in chosen)
                if weights is not None:
                    score *= float(weights[candidate])
            elif weights is not None:
                score = float(weights[candidate])
            else:
                score = min((float(distances[candidate, other]) for other in range(count) if other != candidate),
                            default=0.0)
            if score > best_score:
                best, best_score = candidate, score
        chosen.append(best)
    return chosen


def divprune_reference(tokens: torch.Tensor, keep: int) -> list[int]:
    """DivPrune on one image's tokens [N, D]: the kept indices, ascending."""
    return sorted(max_min_diversity_reference(cosine_distance_matrix(tokens), keep))


def zoo_sensitivity_reference(features: torch.Tensor, projector: Callable[[torch.Tensor], torch.Tensor],
                              directions: torch.Tensor, step: float) -> torch.Tensor:
    """Zeroth-order sensitivity of the projector at each token: [N, Dv] -> [N].

    For each token x and random unit direction u: ||P(x + h·u) - P(x)|| / h, a forward-difference
    estimate of the Jacobian's action on u; averaged over the directions [M, Dv].
    """
    scores = torch.zeros(features.shape[0], dtype=torch.float32)
    for i in range(features.shape[0]):
        base = projector(features[i:i + 1]).float()
        total = 0.0
        for direction in directions:
            moved = projector(features[i:i + 1] + step * direction.to(features.dtype)).float()
            total += float(torch.linalg.vector_norm(moved - base)) / step
        scores[i] = total / directions.shape[0]
    return scores


def zoo_prune_reference(features: torch.Tensor, projected: torch.Tensor,
                        projector: Callable[[torch.Tensor], torch.Tensor], directions: torch.Tensor,
                        step: float, keep: int) -> list[int]:
    """ZOO-Prune on one image: sensitivity (of the projector at ``features`` [N, Dv]) weights the
    max-min diversity over the projected tokens [N, Dt]. The kept indices, ascending."""
    sensitivity = zoo_sensitivity_reference(features, projector, directions, step)
    weights = sensitivity / sensitivity.max().clamp_min(1e-12)
    return sorted(max_min_diversity_reference(cosine_distance_matrix(projected), keep, weights))


def cls_attention_reference(query_cls: torch.Tensor, keys: torch.Tensor, scale: float) -> torch.Tensor:
    """[CLS] attention over the patches, averaged over heads: q [H, Dh] of [CLS], k [H, S, Dh] -> [S-1].

    Softmax over all S keys ([CLS] included, as the ViT computes it), then [CLS]'s own column dropped.
    """
    heads = query_cls.shape[0]
    total = torch.zeros(keys.shape[1] - 1, dtype=torch.float32)
    for h in range(heads):
        logits = torch.stack([torch.dot(query_cls[h].float(), keys[h, s].float()) * scale
                              for s in range(keys.shape[1])])
        total += torch.softmax(logits, dim=0)[1:]
    return total / heads


def top_k_reference(scores: torch.Tensor, keep: int) -> list[int]:
    """The ``keep`` highest scores' indices (ties: lowest index), ascending."""
    order = sorted(range(scores.shape[0]), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:keep])


def stride_reference(count: int, keep: int) -> list[int]:
    """``keep`` indices spread evenly over ``count`` tokens: round(i·count/keep + offset) for i < keep."""
    return sorted({min(count - 1, int((i + 0.5) * count / keep)) for i in range(keep)})
