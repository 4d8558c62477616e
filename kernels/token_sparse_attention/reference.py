"""Token-sparse prefill attention, written for reading: the specification the fast paths follow.

Token Sparse Attention (TSA, "Token Sparse Attention: Efficient Long-Context Inference with
Interleaved Token Selection"): in a long prompt most tokens receive almost no attention from the
queries that matter, so a layer can run its causal attention on a small per-head subset of the
tokens and leave the others' attention output at zero; those rows keep their residual stream and
are scored again at the next sparse layer. Five steps, one function each:

1. ``token_scores``  per head, the attention the last ``window`` queries pay every token (full
   softmax rows over the causal prefix, averaged over the window's rows): [H, L], rows sum to 1.
2. ``select_tokens`` per head, the last ``window`` tokens plus the best-scored others until the
   kept set carries at least ``1 - coverage`` of the head's score mass, and at least
   ``min_tokens`` tokens. Heads differ a lot (a few diffuse heads need ten times the tokens of
   the rest), so each head keeps its own count, rounded up only to the largest count among the
   heads of its width class (counts with the same ``ceil(log2(count))``): the fast paths then run
   one dense kernel per class, at most log2(L) + 1 of them, never one per head, and every head
   still covers its mass. Indices are sorted by position, so causal order survives compression.
3. ``compress``      gather each head's queries, keys and values at its kept positions.
4. ``causal_attention`` dense causal attention on the compressed set.
5. ``decompress``    scatter the rows back to their positions; dropped rows get zeros.
6. ``window_attention`` the last ``window`` rows attend densely over every token: their softmax
   rows were computed to score the tokens anyway, so this costs one [W, L] product per head, and
   the rows that write the first answer token (and, with a wide per-request window, a scored
   continuation) see exactly what decode would.

Grouped-query attention: a query head reads its key/value head (``h // (H / H_kv)``) at its own
kept positions. ``coverage = 0`` keeps every token: the result is dense causal attention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SparsityConfig:
    """How much of a long prompt a sparse layer may leave out."""

    coverage: float = 0.05  # τ: score mass each head may drop (0 keeps every token)
    window: int = 64  # W: the last W queries score the tokens, and their W tokens are always kept
    min_tokens: int = 1024  # no head keeps fewer (clamped to the prompt length)

    def __post_init__(self) -> None:
        if not 0 <= self.coverage < 1:
            raise ValueError(f"coverage must be in [0, 1), got {self.coverage}")
        if self.window < 1 or self.min_tokens < 1:
            raise ValueError("window and min_tokens must be positive")


def token_scores(query: torch.Tensor, key: torch.Tensor, window: int, scale: float) -> torch.Tensor:
    """query [L, H, D], key [L, H_kv, D] -> scores [H, L] (float32): mean softmax row of the last queries."""
    length, heads, _ = query.shape
    group = heads // key.shape[1]
    rows = min(window, length)
    positions = torch.arange(length)
    row_positions = positions[length - rows:]  # [W]
    scores = torch.empty(heads, length, dtype=torch.float32)
    for head in range(heads):
        q = query[length - rows:, head].float()  # [W, D]
        k = key[:, head // group].float()  # [L, D]
        logits = (q @ k.T) * scale  # [W, L]
        logits = logits.masked_fill(positions[None, :] > row_positions[:, None], -math.inf)
        scores[head] = torch.softmax(logits, dim=-1).mean(dim=0)
    return scores


def select_tokens(scores: torch.Tensor, config: SparsityConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """scores [H, L] -> (kept [H, k_max], counts [H]): head h keeps kept[h, :counts[h]], ascending; -1 pads."""
    heads, length = scores.shape
    protected = min(config.window, length)
    needed = []
    orders = []
    for head in range(heads):
        others = scores[head, :length - protected]
        order = torch.sort(others, descending=True, stable=True).indices
        mass = scores[head, length - protected:].sum()
        taken = 0
        if config.coverage == 0:
            taken = len(order)
        while taken < len(order) and mass < 1 - config.coverage:
            mass = mass + others[order[taken]]
            taken += 1
        needed.append(min(length, max(protected + taken, config.min_tokens)))
        orders.append(order)
    counts = class_widths(torch.tensor(needed))
    kept = torch.full((heads, int(counts.max())), -1, dtype=torch.long)
    for head in range(heads):
        count = int(counts[head])
        chosen = torch.cat([orders[head][:count - protected], torch.arange(length - protected, length)])
        kept[head, :count] = torch.sort(chosen).values
    return kept, counts


def class_widths(needed: torch.Tensor) -> torch.Tensor:
    """needed [H] token counts -> [H]: each raised to the largest count among heads of its width class."""
    classes = torch.ceil(torch.log2(needed.double())).long()  # [H]
    widths = torch.zeros(int(classes.max()) + 1, dtype=needed.dtype, device=needed.device)
    widths.scatter_reduce_(0, classes, needed, reduce="amax")
    return widths[classes]


def compress(states: torch.Tensor, kept: torch.Tensor, head: int, heads: int) -> torch.Tensor:
    """states [L, H_s, D] (H_s = H or H_kv), kept positions [k] of query head ``head`` -> [k, D]."""
    return states[kept, head // (heads // states.shape[1])]


def causal_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """[k, D] each -> [k, D]: softmax(q kᵀ · scale) v with query i seeing keys 0..i (float32 inside)."""
    count = query.shape[0]
    logits = (query.float() @ key.float().T) * scale  # [k, k]
    future = torch.ones(count, count, dtype=torch.bool).triu(1)
    weights = torch.softmax(logits.masked_fill(future, -math.inf), dim=-1)
    return (weights @ value.float()).to(query.dtype)


def decompress(compressed: torch.Tensor, kept: torch.Tensor, head: int, out: torch.Tensor) -> None:
    """compressed [k, D] rows of head ``head`` -> out[kept, head] of out [L, H, D] (left zero elsewhere)."""
    out[kept, head] = compressed


def window_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, window: int,
                     scale: float) -> torch.Tensor:
    """The last ``window`` rows' dense causal attention over all L tokens -> [W, H, D]."""
    length, heads, _ = query.shape
    group = heads // key.shape[1]
    rows = min(window, length)
    positions = torch.arange(length)
    future = positions[None, :] > positions[length - rows:, None]  # [W, L]
    out = torch.empty(rows, heads, value.shape[2], dtype=query.dtype)
    for head in range(heads):
        logits = (query[length - rows:, head].float() @ key[:, head // group].float().T) * scale  # [W, L]
        weights = torch.softmax(logits.masked_fill(future, -math.inf), dim=-1)
        out[:, head] = (weights @ value[:, head // group].float()).to(query.dtype)
    return out


def token_sparse_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float,
                           config: SparsityConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """One prompt's prefill attention: query [L, H, D], key/value [L, H_kv, D] -> ([L, H, D], counts [H])."""
    length, heads, dim = query.shape
    kept, counts = select_tokens(token_scores(query, key, config.window, scale), config)
    out = torch.zeros(length, heads, dim, dtype=query.dtype)
    for head in range(heads):
        positions = kept[head, :counts[head]]
        attended = causal_attention(*(compress(states, positions, head, heads) for states in (query, key, value)),
                                    scale)
        decompress(attended, positions, head, out)
    out[length - min(config.window, length):] = window_attention(query, key, value, config.window, scale)
    return out, counts
