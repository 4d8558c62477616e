"""Token-sparse prefill attention (TSA): score, select, compress, attend, decompress.

``reference`` is the readable specification; ``vectorised`` the batched PyTorch path used on
CPUs (and the plugin's path inside vLLM); ``triton_kernels`` the GPU kernels (the scoring pass and
causal attention over the compressed per-head sets); ``benchmark`` compares them with dense
attention. ``token_sparse_attention`` picks the fastest path for the tensors' device.
"""

from __future__ import annotations

import torch

from kernels.token_sparse_attention import vectorised
from kernels.token_sparse_attention.reference import SparsityConfig

__all__ = ["SparsityConfig", "token_sparse_attention"]


def token_sparse_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float,
                           config: SparsityConfig, out: torch.Tensor | None = None,
                           attend: vectorised.Attend | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """query [L, H, D], key/value [L, H_kv, D] -> (output [L, H, D], tokens each head kept [H]): Triton on a GPU."""
    if query.is_cuda:
        from kernels.token_sparse_attention.triton_kernels import token_sparse_attention_triton

        return token_sparse_attention_triton(query, key, value, scale, config, out)
    return vectorised.token_sparse_attention(query, key, value, scale, config, out, attend)
