"""Token Sparse Attention (TSA) on a GPU: a Triton scoring pass and a causal flash attention over kept tokens.

Token Sparse Attention ("Token Sparse Attention: Efficient Long-Context Inference with Interleaved
Token Selection") runs a prefill layer's causal attention on a per-head subset of the prompt's
tokens; ``reference`` states the rule. Here the two steps that cost O(L²)-ish FLOPs run as Triton
kernels and the selection in between (a sort and a cumulative sum over [H, L] floats) stays in
torch (``vectorised.select_tokens``, on the scores' device): it gives the padded kept positions
[H, k_max] and each head's own count [H] (heads differ; ``reference.select_tokens``):

* scoring (``token_scores_triton``): the mean, over the last W query rows, of each row's full
  causal softmax over all L keys. Softmax needs each row's max and sum before any probability is
  known, so it takes two passes over the key blocks. Both kernels run one program per
  (head, key block), not one per head: one program per head would leave most of a GPU idle
  (32 heads against 132 SMs) and walk all L keys serially. Pass 1 writes each block's per-row
  max and sum of exponentials ([H, blocks, W], tiny); torch folds them into the row statistics;
  pass 2 recomputes the block's logits, normalises them with those statistics and sums the
  W rows, so each program writes its own score slice: no atomics, deterministic.
* attention (``sparse_attention_triton``): FlashAttention-2 style online softmax in float32 over
  each head's compressed sequence (kept positions, ascending, so "compressed index j ≤ i" is the
  causal mask). The paper's compress and decompress steps are fused into the loads and the store:
  Q, K and V rows are read through the kept index (grouped-query heads read key/value head
  h // (H / H_kv) directly, no repeated copy), and each output row is written straight to its
  original position in ``out``, which is zero-filled first so the rows a head dropped are 0.
  Heads of one key/value group keep different positions, so they cannot share K/V tiles: one
  program per (query block, head), the grid sized for the widest head; each program bounds itself
  by its head's count, so a program whose block starts at or past counts[h] exits at once and the
  -1 padding after counts[h] is never read (a head costs its own count², not k_max²).

Head dims are padded to a power of two ≥ 16 with masks (64 and 128 need none; 80 works).
Float32 inputs use IEEE float32 dot products (not TF32) so results match the reference to ~1e-5;
bf16/fp16 inputs use the tensor cores with float32 accumulation. Everything also runs under
``TRITON_INTERPRET=1`` on CPU tensors, which is how the CPU-only test suite checks it
(small blocks there, to keep the interpreter fast).
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from kernels.token_sparse_attention import vectorised
from kernels.token_sparse_attention.reference import SparsityConfig

LOG2E = 1.0 / math.log(2.0)  # exp(x) = exp2(x · log2 e): the kernels work in base 2


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """a @ b with float32 accumulation; UPCAST (interpreter only: its dot reads bf16 as raw uint16) in float32."""
    if UPCAST:
        product = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        product = tl.dot(a, b, input_precision=PRECISION)
    return product


@triton.jit
def _window_logits(q_ptr, key, head, first, row0, rows, cols, dims, stride_ql, stride_qh, qk_scale,
                   HEAD_DIM: tl.constexpr, BLOCK_W: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """Base-2 logits [BLOCK_W, BLOCK_N] of window rows row0.. against one key block; future and padding -inf."""
    window_rows = row0 + tl.arange(0, BLOCK_W)  # [BW] index inside the window
    row_valid = window_rows < rows
    positions = first + window_rows  # [BW] query positions in the prompt
    q = tl.load(q_ptr + positions.to(tl.int64)[:, None] * stride_ql + head * stride_qh + dims[None, :],
                mask=row_valid[:, None] & (dims[None, :] < HEAD_DIM), other=0.0)  # [BW, BD]
    logits = _dot(q, tl.trans(key), PRECISION, UPCAST) * qk_scale  # [BW, BN]
    visible = row_valid[:, None] & (cols[None, :] <= positions[:, None])  # causal; cols < L follows
    return tl.where(visible, logits, -float("inf")), window_rows, row_valid


@triton.jit
def _score_stats_kernel(q_ptr, k_ptr, max_ptr, sum_ptr, length, rows, group, qk_scale,
                        stride_ql, stride_qh, stride_kl, stride_kh,
                        HEAD_DIM: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_D: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """Pass 1, program (head, key block): per window row, this block's max logit and sum of exp2(logit - max)."""
    head = tl.program_id(0)
    block = tl.program_id(1)
    blocks = tl.num_programs(1)
    cols = block * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN] key positions
    dims = tl.arange(0, BLOCK_D)
    key = tl.load(k_ptr + cols.to(tl.int64)[:, None] * stride_kl + (head // group) * stride_kh + dims[None, :],
                  mask=(cols[:, None] < length) & (dims[None, :] < HEAD_DIM), other=0.0)  # [BN, BD]
    first = length - rows
    for row0 in range(0, rows, BLOCK_W):
        logits, window_rows, row_valid = _window_logits(q_ptr, key, head, first, row0, rows, cols, dims, stride_ql,
                                                        stride_qh, qk_scale, HEAD_DIM, BLOCK_W, PRECISION, UPCAST)
        block_max = tl.max(logits, axis=1)  # [BW], -inf where the whole block is in a row's future
        shift = tl.where(block_max == -float("inf"), 0.0, block_max)
        block_sum = tl.sum(tl.exp2(logits - shift[:, None]), axis=1)  # [BW]
        offset = (head * blocks + block) * rows + window_rows
        tl.store(max_ptr + offset, block_max, mask=row_valid)
        tl.store(sum_ptr + offset, block_sum, mask=row_valid)


@triton.jit
def _score_kernel(q_ptr, k_ptr, row_max_ptr, row_inv_sum_ptr, scores_ptr, length, rows, group, qk_scale,
                  stride_ql, stride_qh, stride_kl, stride_kh,
                  HEAD_DIM: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_D: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """Pass 2, program (head, key block): scores[head, block] = mean over window rows of the normalised softmax."""
    head = tl.program_id(0)
    block = tl.program_id(1)
    cols = block * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    dims = tl.arange(0, BLOCK_D)
    key = tl.load(k_ptr + cols.to(tl.int64)[:, None] * stride_kl + (head // group) * stride_kh + dims[None, :],
                  mask=(cols[:, None] < length) & (dims[None, :] < HEAD_DIM), other=0.0)  # [BN, BD]
    first = length - rows
    total = tl.zeros([BLOCK_N], dtype=tl.float32)
    for row0 in range(0, rows, BLOCK_W):
        logits, window_rows, row_valid = _window_logits(q_ptr, key, head, first, row0, rows, cols, dims, stride_ql,
                                                        stride_qh, qk_scale, HEAD_DIM, BLOCK_W, PRECISION, UPCAST)
        row_max = tl.load(row_max_ptr + head * rows + window_rows, mask=row_valid, other=0.0)  # [BW]
        row_inv_sum = tl.load(row_inv_sum_ptr + head * rows + window_rows, mask=row_valid, other=0.0)  # [BW]
        probabilities = tl.exp2(logits - row_max[:, None]) * row_inv_sum[:, None]  # [BW, BN], 0 where masked
        total += tl.sum(probabilities, axis=0)
    tl.store(scores_ptr + head * length + cols, total / rows, mask=cols < length)


@triton.jit
def _sparse_flash_kernel(q_ptr, k_ptr, v_ptr, kept_ptr, counts_ptr, out_ptr, stride_kept, group, qk_scale,
                         stride_ql, stride_qh, stride_kl, stride_kh, stride_vl, stride_vh, stride_ol, stride_oh,
                         HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_D: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """Program (query block, head): causal attention of the head's kept rows over its kept keys (the first
    counts[head] entries of its kept row), written at the rows' positions."""
    start_m = tl.program_id(0)
    head = tl.program_id(1)
    count = tl.load(counts_ptr + head).to(tl.int32)  # this head's kept tokens; its kept row pads past them
    if start_m * BLOCK_M >= count:  # the grid is sized for the widest head: nothing here for this one
        return
    kv_head = head // group
    dims = tl.arange(0, BLOCK_D)
    dim_valid = dims[None, :] < HEAD_DIM  # [1, BD]
    kept_row = kept_ptr + head.to(tl.int64) * stride_kept
    rows = start_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM] compressed indices
    row_valid = rows < count
    q_pos = tl.load(kept_row + rows, mask=row_valid, other=0)  # [BM] original positions (int64)
    q = tl.load(q_ptr + q_pos[:, None] * stride_ql + head * stride_qh + dims[None, :],
                mask=row_valid[:, None] & dim_valid, other=0.0)  # [BM, BD], gathered
    m_i = tl.full([BLOCK_M], -float("inf"), dtype=tl.float32)  # running row max (base 2)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running row sum
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # Blocks left of the diagonal: every key is visible to every row and inside [0, count) (start_m·BM < count,
    # BLOCK_N divides BLOCK_M): no masks.
    for start_n in range(0, start_m * BLOCK_M, BLOCK_N):
        k_pos = tl.load(kept_row + start_n + tl.arange(0, BLOCK_N))  # [BN]
        key = tl.load(k_ptr + k_pos[:, None] * stride_kl + kv_head * stride_kh + dims[None, :], mask=dim_valid,
                      other=0.0)
        value = tl.load(v_ptr + k_pos[:, None] * stride_vl + kv_head * stride_vh + dims[None, :], mask=dim_valid,
                        other=0.0)
        logits = _dot(q, tl.trans(key), PRECISION, UPCAST) * qk_scale  # [BM, BN]
        m_new = tl.maximum(m_i, tl.max(logits, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(logits - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + _dot(p.to(value.dtype), value, PRECISION, UPCAST)
        m_i = m_new
    # The diagonal block(s): causal mask in compressed indices (exact: kept positions ascend), plus the tail.
    for start_n in range(start_m * BLOCK_M, tl.minimum((start_m + 1) * BLOCK_M, count), BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)  # [BN]
        col_valid = cols < count
        k_pos = tl.load(kept_row + cols, mask=col_valid, other=0)
        key = tl.load(k_ptr + k_pos[:, None] * stride_kl + kv_head * stride_kh + dims[None, :],
                      mask=col_valid[:, None] & dim_valid, other=0.0)
        value = tl.load(v_ptr + k_pos[:, None] * stride_vl + kv_head * stride_vh + dims[None, :],
                        mask=col_valid[:, None] & dim_valid, other=0.0)
        logits = _dot(q, tl.trans(key), PRECISION, UPCAST) * qk_scale
        logits = tl.where((cols[None, :] <= rows[:, None]) & col_valid[None, :], logits, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(logits, axis=1))  # finite: column start_m·BM is visible to every row
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(logits - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + _dot(p.to(value.dtype), value, PRECISION, UPCAST)
        m_i = m_new
    result = acc / l_i[:, None]
    tl.store(out_ptr + q_pos[:, None] * stride_ol + head * stride_oh + dims[None, :],
             result.to(out_ptr.dtype.element_ty), mask=row_valid[:, None] & dim_valid)  # decompress


def _last_dim_contiguous(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.stride(-1) == 1 else tensor.contiguous()


def _precision(tensor: torch.Tensor) -> str:
    return "ieee" if tensor.dtype == torch.float32 else "tf32"  # ignored for 16-bit inputs


def _upcast(tensor: torch.Tensor) -> bool:
    return _interpreted() and tensor.dtype == torch.bfloat16


def token_scores_triton(query: torch.Tensor, key: torch.Tensor, window: int, scale: float) -> torch.Tensor:
    """query [L, H, D], key [L, H_kv, D] -> scores [H, L] float32, as ``reference.token_scores``."""
    query, key = _last_dim_contiguous(query), _last_dim_contiguous(key)
    length, heads, dim = query.shape
    rows = min(window, length)
    block_n = 16 if _interpreted() else 64
    block_w = 16 if _interpreted() else (32 if query.dtype == torch.float32 else 64)
    blocks = triton.cdiv(length, block_n)
    common = {"HEAD_DIM": dim, "BLOCK_W": block_w, "BLOCK_N": block_n,
              "BLOCK_D": max(16, triton.next_power_of_2(dim)), "PRECISION": _precision(query), "UPCAST": _upcast(query)}
    strides = (query.stride(0), query.stride(1), key.stride(0), key.stride(1))
    group, qk_scale = heads // key.shape[1], scale * LOG2E
    block_max = torch.empty(heads, blocks, rows, dtype=torch.float32, device=query.device)  # [H, B, W]
    block_sum = torch.empty_like(block_max)  # [H, B, W]
    _score_stats_kernel[(heads, blocks)](query, key, block_max, block_sum, length, rows, group, qk_scale,
                                         *strides, **common)
    row_max = block_max.amax(dim=1)  # [H, W]: finite, key 0 is visible to every row
    row_sum = (block_sum * torch.exp2(block_max - row_max[:, None])).sum(dim=1)  # [H, W]
    scores = torch.empty(heads, length, dtype=torch.float32, device=query.device)  # [H, L]
    _score_kernel[(heads, blocks)](query, key, row_max.contiguous(), row_sum.reciprocal().contiguous(), scores,
                                   length, rows, group, qk_scale, *strides, **common)
    return scores


def sparse_attention_triton(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kept: torch.Tensor,
                            counts: torch.Tensor, scale: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """query [L, H, D], key/value [L, H_kv, D], kept [H, k_max] (head h: kept[h, :counts[h]] ascending, then
    padding, never read), counts [H] -> out [L, H, D] (0 at each head's dropped rows)."""
    query, key, value = (_last_dim_contiguous(t) for t in (query, key, value))
    _, heads, dim = query.shape
    widest = kept.shape[1]
    if out is None:
        out = torch.empty_like(query)  # [L, H, D]
    target = _last_dim_contiguous(out)
    target.zero_()  # the rows no head keeps stay 0 (reference.decompress)
    if widest:
        if _interpreted():
            block_m, block_n, warps, stages = 16, 16, 4, 1
        elif query.dtype == torch.float32 or dim > 128:
            block_m, block_n, warps, stages = 64, 32, 4, 2
        else:
            block_m, block_n, warps, stages = 128, 64, 8 if dim > 64 else 4, 3
        kept = kept.to(device=query.device, dtype=torch.int64).contiguous()
        counts = counts.to(device=query.device, dtype=torch.int64).contiguous()
        _sparse_flash_kernel[(triton.cdiv(widest, block_m), heads)](
            query, key, value, kept, counts, target, widest, heads // key.shape[1], scale * LOG2E,
            query.stride(0), query.stride(1), key.stride(0), key.stride(1), value.stride(0), value.stride(1),
            target.stride(0), target.stride(1), HEAD_DIM=dim, BLOCK_M=block_m, BLOCK_N=block_n,
            BLOCK_D=max(16, triton.next_power_of_2(dim)), PRECISION=_precision(query),
            UPCAST=_upcast(query), num_warps=warps, num_stages=stages)
    if target is not out:
        out.copy_(target)
    return out


def token_sparse_attention_triton(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float,
                                  config: SparsityConfig, out: torch.Tensor | None = None
                                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """query [L, H, D], key/value [L, H_kv, D] -> (out [L, H, D], counts [H]: tokens each head kept), as
    ``reference.token_sparse_attention``.

    With ``coverage = 0``, or a window covering the whole prompt (all tokens protected), every token is
    kept whatever the scores, so the scoring pass is skipped (counts all L, as ``vectorised``).
    """
    length, heads, _ = query.shape
    if config.coverage == 0 or length <= config.window:  # every token kept: skip the scoring pass
        kept = torch.arange(length, device=query.device).expand(heads, length).contiguous()  # [H, L]
        counts = torch.full((heads,), length, device=query.device)
    else:
        scores = token_scores_triton(query, key, config.window, scale)  # [H, L]
        kept, counts = vectorised.select_tokens(scores, config)  # [H, k_max], [H], on the scores' device
    out = sparse_attention_triton(query, key, value, kept, counts, scale, out)
    if length > config.window:  # the window's rows attend densely ([W, L] per head: torch's matmuls suffice)
        out[length - config.window:] = vectorised.window_attention(query, key, value, config.window, scale)
    return out, counts
