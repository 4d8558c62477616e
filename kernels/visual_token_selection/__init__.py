"""Visual-token selection rules (DivPrune, ZOO-Prune, [CLS] attention, stride, random).

``reference`` is the readable specification, ``vectorised`` the batched PyTorch version used on
CPUs, ``triton_kernels`` the GPU kernel of the greedy Max-Min Diversity step. ``max_min_diversity``
picks the fastest one for the tensors' device.
"""

from __future__ import annotations

import torch

from kernels.visual_token_selection import vectorised


def max_min_diversity(distances: torch.Tensor, keep: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy Max-Min Diversity picks [B, keep] from distances [B, N, N]: Triton on a GPU, PyTorch elsewhere."""
    if distances.is_cuda:
        from kernels.visual_token_selection.triton_kernels import max_min_diversity_triton

        return max_min_diversity_triton(distances, keep, weights)
    return vectorised.max_min_diversity(distances, keep, weights)
