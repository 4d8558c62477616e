"""Attention over each head's kept tokens with vLLM's own CPU attention kernel, not PyTorch's SDPA.

On these CPUs PyTorch's SDPA is many times slower than vLLM's C++ kernel
(``ops.cpu_attention_with_kv_cache``), so a sparse layer that ran its compressed sets through SDPA
cost as much as the dense layer it replaced (benchmarks/RESULTS.md). The C++ kernel reads K/V
from a paged cache and takes a batch of variable-length sequences; every query head's compressed
sequence becomes one such sequence (one head, its own length: no rounding to a common width), its
keys and values are written into a scratch paged cache with vLLM's own ``cpu_attn_reshape_and_cache``,
and one call attends all heads causally. The scratch cache has the layout, block size and data type
of the model's cache, so the kernel variant (ISA) the metadata builder chose for the layer fits it.
"""

from __future__ import annotations

import torch
from vllm import _custom_ops as ops
from vllm import envs


def attend_kept_paged(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kept: torch.Tensor,
                      counts: torch.Tensor, scale: float, out: torch.Tensor, isa: str, block_size: int,
                      kv_cache_dtype: str = "auto") -> torch.Tensor:
    """query [L, H, D], key/value [L, H_kv, D], kept [H, k_max] (-1 pads), counts [H] -> out [L, H, D]."""
    heads, widest = kept.shape
    group = heads // key.shape[1]
    dim = query.shape[2]
    counts = counts.to(torch.int32)
    valid = torch.arange(widest)[None, :] < counts[:, None]  # [H, k_max]
    positions = kept[valid]  # [T]: head 0's kept positions, then head 1's, ...
    head_of = torch.arange(heads)[:, None].expand(heads, widest)[valid]  # [T]
    rows = int(counts.sum())
    # every head's sequence in whole blocks of its own: [H, blocks per head]
    blocks_per_head = (counts + block_size - 1) // block_size
    first_block = torch.cumsum(blocks_per_head, 0) - blocks_per_head
    table_width = int(blocks_per_head.max())
    block_table = (first_block[:, None] + torch.arange(table_width, dtype=torch.int32)[None, :]).to(torch.int32)
    index_in_head = torch.arange(widest)[None, :].expand(heads, widest)[valid]  # [T]
    slots = first_block.long()[head_of] * block_size + index_in_head  # [T]
    # zeros: the kernel reads whole blocks, and garbage past a head's last key (NaN x 0 weight) would leak in
    scratch = query.new_zeros(int(blocks_per_head.sum()), 1, block_size * 2, dim)
    key_cache, value_cache = scratch.chunk(2, dim=2)  # [blocks, 1, block_size, D] each
    ops.cpu_attn_reshape_and_cache(key[positions, head_of // group][:, None], value[positions, head_of // group][:, None],
                                   key_cache, value_cache, slots, isa, kv_cache_dtype=kv_cache_dtype)
    query_start_loc = torch.zeros(heads + 1, dtype=torch.int32)
    query_start_loc[1:] = torch.cumsum(counts, 0)
    schedule = ops.cpu_attn_get_scheduler_metadata(
        num_reqs=heads, num_heads=1, num_kv_heads=1, head_dim=dim, seq_lens=counts, dtype=query.dtype,
        query_start_loc=query_start_loc, causal=True, sliding_window_size=-1, isa=isa,
        enable_kv_split=envs.VLLM_CPU_ATTN_SPLIT_KV, dynamic_causal=None, kv_cache_dtype=kv_cache_dtype)
    attended = query.new_empty(rows, 1, value.shape[2])  # [T, 1, D]
    ops.cpu_attention_with_kv_cache(
        query=query[positions, head_of][:, None].contiguous(), key_cache=key_cache, value_cache=value_cache,
        output=attended, query_start_loc=query_start_loc, seq_lens=counts, scale=scale, causal=True,
        alibi_slopes=None, sliding_window=-1, block_table=block_table, softcap=0, scheduler_metadata=schedule,
        s_aux=None, dynamic_causal=None, kv_cache_dtype=kv_cache_dtype)
    out.zero_()
    out[positions, head_of] = attended[:, 0]
    return out
