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
   ``min_tokens`` tokens. Every head of a layer keeps the same count ``k`` (the largest any head
   needs), so each head still covers its mass and the compressed heads form one [H, k, D] tensor
   a dense kernel runs on. Indices are sorted by position, so causal order survives compression.
3. ``compress``      gather each head's queries, keys and values at its kept positions.
4. ``causal_attention`` dense causal attention on the compressed set.
5. ``decompress``    scatter the rows back to their positions; dropped rows get zeros.

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


def select_tokens(scores: torch.Tensor, config: SparsityConfig) -> torch.Tensor:
    """scores [H, L] -> kept positions [H, k], ascending; the same k for every head (module docstring)."""
    heads, length = scores.shape
    protected = min(config.window, length)
    if config.coverage == 0:
        return torch.arange(length).expand(heads, length).clone()
    counts = []
    orders = []
    for head in range(heads):
        others = scores[head, :length - protected]
        order = torch.sort(others, descending=True, stable=True).indices
        mass = scores[head, length - protected:].sum()
        taken = 0
        while taken < len(order) and mass < 1 - config.coverage:
            mass = mass + others[order[taken]]
            taken += 1
        counts.append(protected + taken)
        orders.append(order)
    keep = min(length, max(max(counts), config.min_tokens))
    kept = torch.empty(heads, keep, dtype=torch.long)
    for head in range(heads):
        chosen = torch.cat([orders[head][:keep - protected], torch.arange(length - protected, length)])
        kept[head] = torch.sort(chosen).values
    return kept


def compress(states: torch.Tensor, kept: torch.Tensor, heads: int) -> torch.Tensor:
    """states [L, H_s, D] (H_s = H or H_kv), kept [H, k] -> [H, k, D]: head h reads its own positions."""
    group = heads // states.shape[1]
    return torch.stack([states[kept[head], head // group] for head in range(heads)])


def causal_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """[H, k, D] each -> [H, k, D]: softmax(q kᵀ · scale) v with query i seeing keys 0..i (float32 inside)."""
    count = query.shape[1]
    logits = (query.float() @ key.float().transpose(1, 2)) * scale  # [H, k, k]
    future = torch.ones(count, count, dtype=torch.bool).triu(1)
    weights = torch.softmax(logits.masked_fill(future, -math.inf), dim=-1)
    return (weights @ value.float()).to(query.dtype)


def decompress(compressed: torch.Tensor, kept: torch.Tensor, length: int) -> torch.Tensor:
    """compressed [H, k, D], kept [H, k] -> [L, H, D], zeros where a head dropped the row."""
    heads, _, dim = compressed.shape
    out = torch.zeros(length, heads, dim, dtype=compressed.dtype)
    for head in range(heads):
        out[kept[head], head] = compressed[head]
    return out


def token_sparse_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float,
                           config: SparsityConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """One prompt's prefill attention: query [L, H, D], key/value [L, H_kv, D] -> ([L, H, D], kept [H, k])."""
    length, heads, _ = query.shape
    kept = select_tokens(token_scores(query, key, config.window, scale), config)
    out = causal_attention(compress(query, kept, heads), compress(key, kept, heads),
                           compress(value, kept, heads), scale)
    return decompress(out, kept, length), kept
