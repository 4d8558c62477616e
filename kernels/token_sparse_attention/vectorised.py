"""Token-sparse prefill attention for CPUs: the reference's rule with no Python loop over heads or tokens.

Scoring is one batched matmul over the last ``window`` queries; selection one stable sort and a
cumulative sum per head; compression one ``gather`` per tensor (grouped-query heads read their
key/value head through an index, never a copy of the whole head); the attention itself is
PyTorch's fused SDPA with ``is_causal`` on the compressed [H, k, D] tensors, which is exact
because every head's kept positions are in ascending order. Same results as ``reference``
(the tests hold the two together).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kernels.token_sparse_attention.reference import SparsityConfig


def token_scores(query: torch.Tensor, key: torch.Tensor, window: int, scale: float) -> torch.Tensor:
    """query [L, H, D], key [L, H_kv, D] -> scores [H, L] float32 (reference.token_scores)."""
    length, heads, dim = query.shape
    kv_heads = key.shape[1]
    rows = min(window, length)
    q = query[length - rows:].float().transpose(0, 1).reshape(kv_heads, heads // kv_heads * rows, dim)
    k = key.float().permute(1, 2, 0)  # [H_kv, D, L]
    logits = torch.bmm(q, k).view(heads, rows, length) * scale  # [H, W, L]
    row_positions = torch.arange(length - rows, length, device=query.device)
    future = torch.arange(length, device=query.device)[None, :] > row_positions[:, None]  # [W, L]
    logits.masked_fill_(future, -math.inf)
    return torch.softmax(logits, dim=-1).mean(dim=1)


def kept_count(scores: torch.Tensor, config: SparsityConfig) -> tuple[int, torch.Tensor]:
    """scores [H, L] -> (k, the other tokens of each head by falling score [H, L - W]) (reference rule)."""
    heads, length = scores.shape
    protected = min(config.window, length)
    if protected == length:  # the window is the whole prompt: nothing else to rank
        return length, torch.empty(heads, 0, dtype=torch.long, device=scores.device)
    others = scores[:, :length - protected]
    ordered, order = torch.sort(others, dim=1, descending=True, stable=True)
    mass = scores[:, length - protected:].sum(dim=1, keepdim=True)  # [H, 1]
    reached = (mass + ordered.cumsum(dim=1)) >= 1 - config.coverage  # [H, L - W]
    short_before = (mass[:, 0] < 1 - config.coverage)
    first_reached = torch.where(reached.any(dim=1), reached.int().argmax(dim=1) + 1,
                                torch.full((heads,), length - protected, device=scores.device))
    taken = torch.where(short_before, first_reached, torch.zeros_like(first_reached))
    keep = min(length, max(int(taken.max()) + protected, config.min_tokens))
    return keep, order


def select_tokens(scores: torch.Tensor, config: SparsityConfig) -> torch.Tensor:
    """scores [H, L] -> kept positions [H, k], ascending, as ``reference.select_tokens``."""
    heads, length = scores.shape
    if config.coverage == 0:
        return torch.arange(length, device=scores.device).expand(heads, length).clone()
    protected = min(config.window, length)
    keep, order = kept_count(scores, config)
    tail = torch.arange(length - protected, length, device=scores.device).expand(heads, protected)
    chosen = torch.cat([order[:, :keep - protected], tail], dim=1)  # [H, k]
    return torch.sort(chosen, dim=1).values


def compress(states: torch.Tensor, kept: torch.Tensor, heads: int) -> torch.Tensor:
    """states [L, H_s, D], kept [H, k] -> [H, k, D]; a query head reads its key/value head (H_s = H_kv)."""
    length, state_heads, dim = states.shape
    group = heads // state_heads
    by_head = states.transpose(0, 1)  # [H_s, L, D], a view
    count = kept.shape[1]
    if count == length:  # every token kept: no gather
        return by_head if group == 1 else \
            by_head[:, None].expand(state_heads, group, length, dim).reshape(heads, length, dim)
    index = kept.reshape(state_heads, group * count)  # the query heads of one key/value head, side by side
    gathered = torch.gather(by_head, 1, index[:, :, None].expand(-1, -1, dim))  # [H_s, G·k, D]
    return gathered.view(heads, count, dim)


def decompress(compressed: torch.Tensor, kept: torch.Tensor, length: int) -> torch.Tensor:
    """compressed [H, k, D], kept [H, k] -> [L, H, D] with zeros where a head dropped the row."""
    heads, count, dim = compressed.shape
    if count == length:
        return compressed.transpose(0, 1)
    out = compressed.new_zeros(heads, length, dim)
    out.scatter_(1, kept[:, :, None].expand(-1, -1, dim), compressed)
    return out.transpose(0, 1)


def token_sparse_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float,
                           config: SparsityConfig, out: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """query [L, H, D], key/value [L, H_kv, D] -> ([L, H, D], kept [H, k]); writes into ``out`` if given."""
    length, heads, _ = query.shape
    kept = select_tokens(token_scores(query, key, config.window, scale), config)
    attended = F.scaled_dot_product_attention(
        compress(query, kept, heads), compress(key, kept, heads), compress(value, kept, heads),
        is_causal=True, scale=scale)  # [H, k, D]
    result = decompress(attended, kept, length)
    if out is not None:
        out.copy_(result)
        return out, kept
    return result, kept
