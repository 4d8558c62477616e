"""Token-sparse prefill attention for CPUs: the reference's rule with no Python loop over heads or tokens.

Scoring is one batched matmul over the last ``window`` queries; selection one stable sort and a
cumulative sum per head; then one loop over the width classes of the heads (at most log2(L) + 1,
usually two or three): each class's heads gather their kept queries, keys and values with one
indexing op per tensor (grouped-query heads read their key/value head through the index, never a
copy of the whole head), run PyTorch's fused SDPA with ``is_causal`` on [H_class, k, D] (exact:
kept positions ascend), and scatter their rows back. Same results as ``reference`` (the tests
hold the two together). The window's rows are then recomputed densely (``window_attention``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from kernels.token_sparse_attention.reference import SparsityConfig, class_widths


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


def window_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, window: int, scale: float,
                     block: int = 256) -> torch.Tensor:
    """The last ``window`` rows' dense causal attention over all L tokens -> [W, H, D] (reference's rule).

    Blocks of ``block`` rows bound the [H, block, L] logits a wide window would otherwise hold at once.
    """
    length, heads, dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    rows = min(window, length)
    k = key.transpose(0, 1)  # [H_kv, L, D]
    v = value.transpose(0, 1)
    out = query.new_empty(rows, heads, value.shape[2])
    positions = torch.arange(length, device=query.device)
    for first in range(length - rows, length, block):
        last = min(first + block, length)
        q = query[first:last].transpose(0, 1).reshape(kv_heads, group * (last - first), dim)  # [H_kv, G·b, D]
        logits = torch.bmm(q.float(), k.float().transpose(1, 2)) * scale  # [H_kv, G·b, L]
        future = (positions[None, :] > positions[first:last, None]).repeat(group, 1)  # [G·b, L]
        weights = torch.softmax(logits.masked_fill_(future, -math.inf), dim=-1)
        attended = torch.bmm(weights, v.float()).view(heads, last - first, -1)  # [H, b, D]
        out[first - (length - rows):last - (length - rows)] = attended.transpose(0, 1).to(out.dtype)
    return out


def kept_counts(scores: torch.Tensor, config: SparsityConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """scores [H, L] -> (counts [H] after class rounding, the other tokens of each head by falling score)."""
    heads, length = scores.shape
    protected = min(config.window, length)
    others = scores[:, :length - protected]
    ordered, order = torch.sort(others, dim=1, descending=True, stable=True)  # [H, L - W]
    if config.coverage == 0 or protected == length:
        taken = torch.full((heads,), length - protected, device=scores.device)
    else:
        mass = scores[:, length - protected:].sum(dim=1, keepdim=True)  # [H, 1]
        short = (mass + ordered.cumsum(dim=1)) < 1 - config.coverage  # [H, L - W]: still short after i + 1
        taken = torch.where(mass[:, 0] < 1 - config.coverage, short.sum(dim=1) + 1, 0).clamp(max=length - protected)
    needed = (taken + protected).clamp(min=min(config.min_tokens, length))
    return class_widths(needed), order


def select_tokens(scores: torch.Tensor, config: SparsityConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """scores [H, L] -> (kept [H, k_max], counts [H]) as ``reference.select_tokens`` (-1 pads)."""
    heads, length = scores.shape
    protected = min(config.window, length)
    counts, order = kept_counts(scores, config)
    widest = int(counts.max())
    columns = torch.arange(widest - protected, device=scores.device)
    others = torch.where(columns[None, :] < (counts - protected)[:, None], order[:, :widest - protected], length)
    tail = torch.arange(length - protected, length, device=scores.device).expand(heads, protected)
    kept = torch.sort(torch.cat([others, tail], dim=1), dim=1).values  # padding (= length) sorts last
    return kept.masked_fill_(kept == length, -1), counts


def attend_kept(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kept: torch.Tensor,
                counts: torch.Tensor, scale: float, out: torch.Tensor) -> torch.Tensor:
    """Causal attention of each head over its kept tokens, written into out [L, H, D] (zeros elsewhere)."""
    heads = query.shape[1]
    group = heads // key.shape[1]
    out.zero_()
    for width in torch.unique(counts).tolist():  # one dense kernel per width class
        members = torch.nonzero(counts == width).flatten()  # [H_c]
        positions = kept[members, :width]  # [H_c, k]
        rows, kv_rows = members[:, None], (members // group)[:, None]
        attended = F.scaled_dot_product_attention(query[positions, rows], key[positions, kv_rows],
                                                  value[positions, kv_rows], is_causal=True, scale=scale)
        out[positions, rows] = attended  # [H_c, k, D] back to their rows
    return out


Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float, torch.Tensor],
                  torch.Tensor]  # (query, key, value, kept, counts, scale, out) -> out, as attend_kept


def token_sparse_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float,
                           config: SparsityConfig, out: torch.Tensor | None = None, attend: Attend | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """query [L, H, D], key/value [L, H_kv, D] -> (out [L, H, D], counts [H]); writes into ``out`` if given.

    ``attend`` replaces ``attend_kept`` for the compressed attention (vLLM's plugin passes vLLM's own
    CPU kernel, which is faster than SDPA on CPUs); it also serves the every-token case then.
    """
    length, heads, _ = query.shape
    if out is None:
        out = query.new_empty(query.shape[0], heads, value.shape[2])
    if config.coverage == 0 or length <= config.window:  # every token kept: dense causal attention
        counts = torch.full((heads,), length, device=query.device)
        if attend is not None:
            return attend(query, key, value, torch.arange(length).expand(heads, length), counts, scale, out), counts
        group = heads // key.shape[1]
        attended = F.scaled_dot_product_attention(
            query.transpose(0, 1), key.transpose(0, 1).repeat_interleave(group, 0),
            value.transpose(0, 1).repeat_interleave(group, 0), is_causal=True, scale=scale)  # [H, L, D]
        out.copy_(attended.transpose(0, 1))
        return out, counts
    kept, counts = select_tokens(token_scores(query, key, config.window, scale), config)
    (attend or attend_kept)(query, key, value, kept, counts, scale, out)
    out[length - config.window:] = window_attention(query, key, value, config.window, scale)
    return out, counts
