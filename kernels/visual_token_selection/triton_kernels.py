"""Triton kernel for the greedy Max-Min Diversity selection (DivPrune, ZOO-Prune) on a GPU.

On the GPU, ``vectorised.max_min_diversity`` costs ``keep`` rounds of small kernel launches; this
kernel runs all picks of one image in one program (one program per image): the running
nearest-pick distances stay in registers, each pick reads one row of the distance matrix.
The distance matrix itself is one batched matmul (``vectorised.cosine_distances``).
Same rule and tie-breaks as ``reference.max_min_diversity_reference``. It also runs under
``TRITON_INTERPRET=1`` on a CPU, which is how the CPU-only test suite checks it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _max_min_kernel(distances_ptr, first_ptr, weights_ptr, picks_ptr, count, keep,
                    HAS_WEIGHTS: tl.constexpr, BLOCK: tl.constexpr):
    image = tl.program_id(0)
    offsets = tl.arange(0, BLOCK)
    valid = offsets < count
    row_base = distances_ptr + image.to(tl.int64) * count * count
    score = tl.load(first_ptr + image * count + offsets, mask=valid, other=-float("inf"))
    if HAS_WEIGHTS:
        weights = tl.load(weights_ptr + image * count + offsets, mask=valid, other=0.0)
    nearest = tl.full([BLOCK], float("inf"), tl.float32)
    chosen = offsets >= count  # padding counts as chosen: never picked
    for step in range(keep):
        masked = tl.where(chosen, -float("inf"), score)
        pick = tl.argmax(masked, axis=0, tie_break_left=True)
        tl.store(picks_ptr + image * keep + step, pick.to(tl.int64))
        chosen = chosen | (offsets == pick)
        row = tl.load(row_base + pick.to(tl.int64) * count + offsets, mask=valid, other=0.0)
        nearest = tl.minimum(nearest, row)
        if HAS_WEIGHTS:
            score = nearest * weights
        else:
            score = nearest


def max_min_diversity_triton(distances: torch.Tensor, keep: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """[B, N, N] float32 distances -> [B, keep] picks, as ``vectorised.max_min_diversity``."""
    batch, count, _ = distances.shape
    distances = distances.float().contiguous()
    if weights is None:
        eye = torch.eye(count, dtype=torch.bool, device=distances.device)
        first = distances.masked_fill(eye, float("inf")).amin(dim=2) if count > 1 else \
            torch.zeros(batch, count, device=distances.device)
        weights_arg = first  # unused
    else:
        first = weights.float().contiguous()
        weights_arg = first
    picks = torch.empty(batch, keep, dtype=torch.int64, device=distances.device)
    block = triton.next_power_of_2(count)
    _max_min_kernel[(batch,)](distances, first.contiguous(), weights_arg, picks, count, keep,
                              HAS_WEIGHTS=weights is not None, BLOCK=block)
    return picks
