"""A learned multi-token draft head that vLLM serves as an EAGLE-1 drafter.

The head is one Llama decoder layer fed with the target's own last hidden state
and the embedding of the token that followed it:

    x   = fc([embed(token_{t+1}); h_t])                    (2H -> H, no bias)
    a   = self_attn(x)              (no input norm, RoPE at position t)
    r   = x + a
    out = r + mlp(rms_norm(r))                             (no final norm)
    logits = lm_head(out)           (the target's tied embedding, shared)

``out`` is trained to be the target's next hidden state, so vLLM can feed it
back for the next draft position. This module mirrors vLLM 0.32's
``EagleLlamaForCausalLM`` (vllm/model_executor/models/llama_eagle.py) term for
term; ``save_head`` writes the checkpoint layout vLLM loads with
``speculative_config={"method": "eagle", "model": <dir>}``. The embedding and
lm_head are the target's, borrowed at training time and shared by vLLM at
serving time, so the checkpoint holds only ~4M parameters for SmolLM2-135M.

Training unrolls the head for several draft steps (``forward_unrolled``) with
the attention pattern vLLM uses when drafting: step j at position t sees the
step-1 keys of positions <= t (computed from the target's true hidden states,
as vLLM's drafter KV cache holds them) plus its own earlier steps' keys at that
same position. Training on the head's own fed-back outputs is what keeps the
acceptance of the 2nd and later draft tokens from collapsing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

_WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class HeadShape:
    """The dimensions the head shares with its target model."""

    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rms_norm_eps: float

    @classmethod
    def from_target_config(cls, config: dict) -> HeadShape:
        rope = config.get("rope_parameters") or {}
        return cls(
            hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"],
            num_heads=config["num_attention_heads"],
            num_kv_heads=config.get("num_key_value_heads", config["num_attention_heads"]),
            head_dim=config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"],
            rope_theta=float(config.get("rope_theta") or rope.get("rope_theta", 10000.0)),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-5)),
        )


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def rope(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Llama's rotary embedding. x: [B, heads, T, D]; positions: [T] (shared by the batch)."""
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return x * emb.cos().to(x.dtype) + _rotate_half(x) * emb.sin().to(x.dtype)


class EagleHead(nn.Module):
    """The trainable part of the drafter; the embedding and lm_head stay the target's."""

    def __init__(self, shape: HeadShape) -> None:
        super().__init__()
        self.shape = shape
        hidden, inter = shape.hidden_size, shape.intermediate_size
        kv_width = shape.num_kv_heads * shape.head_dim
        self.fc = nn.Linear(2 * hidden, hidden, bias=False)
        self.q_proj = nn.Linear(hidden, shape.num_heads * shape.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, kv_width, bias=False)
        self.v_proj = nn.Linear(hidden, kv_width, bias=False)
        self.o_proj = nn.Linear(shape.num_heads * shape.head_dim, hidden, bias=False)
        self.post_attention_layernorm = nn.RMSNorm(hidden, eps=shape.rms_norm_eps)
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)
        inv_freq = 1.0 / (shape.rope_theta ** (torch.arange(0, shape.head_dim, 2).float() / shape.head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def _rope(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return rope(x, positions, self.inv_freq)

    def _project(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        batch, length, _ = x.shape
        s = self.shape
        q = self.q_proj(x).view(batch, length, s.num_heads, s.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, s.num_kv_heads, s.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, s.num_kv_heads, s.head_dim).transpose(1, 2)
        q, k = self._rope(q, positions), self._rope(k, positions)
        group = s.num_heads // s.num_kv_heads
        return q, k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)

    def _finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        batch, _, length, _ = attn.shape
        residual = x + self.o_proj(attn.transpose(1, 2).reshape(batch, length, -1))
        normed = self.post_attention_layernorm(residual)
        return residual + self.down_proj(F.silu(self.gate_proj(normed)) * self.up_proj(normed))

    def forward_unrolled(self, token_embeds: torch.Tensor, target_hidden: torch.Tensor, steps: int) -> list[torch.Tensor]:
        """Draft ``steps`` positions ahead from every position of a batch of sequences.

        token_embeds: [B, T, H], embedding of token t+1 at index t (the last index is unused
        padding for step 1); target_hidden: [B, T, H], the target's hidden state at t.
        Returns one [B, T, H] tensor per step: step j's output at index t predicts the
        target's hidden state at t + j (valid where t + j < T).
        """
        batch, length, _ = target_hidden.shape
        positions = torch.arange(length, device=target_hidden.device)
        scale = 1.0 / math.sqrt(self.shape.head_dim)
        x = self.fc(torch.cat((token_embeds, target_hidden), dim=-1))
        q, k1, v1 = self._project(x, positions)
        out = self._finish(x, F.scaled_dot_product_attention(q, k1, v1, is_causal=True))
        outputs = [out]
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        extra_k: list[torch.Tensor] = []
        extra_v: list[torch.Tensor] = []
        for step in range(1, steps):
            # The token fed at step j+1 from index t is token t+1+j: shift the embeddings left.
            shifted = torch.zeros_like(token_embeds)
            shifted[:, : length - step] = token_embeds[:, step:]
            x = self.fc(torch.cat((shifted, out), dim=-1))
            q, k, v = self._project(x, positions + step)
            extra_k.append(k)
            extra_v.append(v)
            scores = torch.matmul(q, k1.transpose(-1, -2)) * scale
            scores = scores.masked_fill(~causal, float("-inf"))
            diagonal = torch.stack([(q * ek).sum(-1) * scale for ek in extra_k], dim=-1)
            weights = torch.softmax(torch.cat((scores, diagonal), dim=-1), dim=-1)
            attn = torch.matmul(weights[..., :length], v1)
            attn = attn + (weights[..., length:, None] * torch.stack(extra_v, dim=-2)).sum(-2)
            out = self._finish(x, attn)
            outputs.append(out)
        return outputs


def _vllm_names(head: EagleHead) -> dict[str, str]:
    layer = "layers.0."
    return {
        "fc.weight": "fc.weight",
        "q_proj.weight": layer + "self_attn.q_proj.weight",
        "k_proj.weight": layer + "self_attn.k_proj.weight",
        "v_proj.weight": layer + "self_attn.v_proj.weight",
        "o_proj.weight": layer + "self_attn.o_proj.weight",
        "post_attention_layernorm.weight": layer + "post_attention_layernorm.weight",
        "gate_proj.weight": layer + "mlp.gate_proj.weight",
        "up_proj.weight": layer + "mlp.up_proj.weight",
        "down_proj.weight": layer + "mlp.down_proj.weight",
    }


def save_head(head: EagleHead, target_config: dict, out_dir: Path, dtype: torch.dtype = torch.float16) -> None:
    """Write ``config.json`` + ``model.safetensors`` in the layout vLLM's EAGLE loader reads."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    state = head.state_dict()
    tensors = {vllm: state[ours].detach().to("cpu", dtype).contiguous() for ours, vllm in _vllm_names(head).items()}
    save_file(tensors, str(out_dir / _WEIGHTS_FILE))
    config = dict(target_config)
    config["num_hidden_layers"] = 1
    config["architectures"] = ["LlamaForCausalLM"]
    config.pop("_model_name_or_path", None)
    config["torch_dtype"] = config["dtype"] = str(dtype).removeprefix("torch.")
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def load_head(head_dir: Path, device: str | torch.device = "cpu") -> EagleHead:
    """Read a head written by ``save_head`` back into float32 (evaluation, fine-tuning)."""
    from safetensors.torch import load_file

    config = json.loads((head_dir / "config.json").read_text())
    head = EagleHead(HeadShape.from_target_config(config))
    tensors = load_file(str(head_dir / _WEIGHTS_FILE))
    head.load_state_dict({ours: tensors[vllm].float() for ours, vllm in _vllm_names(head).items()})
    return head.to(device)
