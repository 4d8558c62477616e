"""A drafter that proposes all K draft tokens in ONE forward: vLLM's EAGLE-3 parallel drafting.

The seed paper (Samragh et al., 2025, "Your LLM Knows the Future") appends K-1 mask tokens
behind the sequence and lets the model fill all of them in one pass. vLLM 0.32 runs that
idea with an EAGLE-3 drafter (``speculative_config={"method": "eagle3",
"parallel_drafting": true}``, vllm/v1/spec_decode/llm_base_proposer.py:817-955): per
request, the drafter's one forward holds

    slot at position t:      embed(x_{t+1})  with  fc(aux_t)        -> predicts x_{t+2}
    slot at position t+j:    embed(<mask>)   with  fc(mask_hidden)  -> predicts x_{t+2+j}

where ``aux_t`` is the concatenation of three of the target's residual-stream states at
position t (EAGLE-3, Li et al., 2025) and ``mask_hidden`` is learned. Each mask slot
attends to the request's real slots (the drafter's KV cache, filled from the target's
states) and to the mask slots before it. The drafter is one Llama layer whose attention
reads ``[norm(embed); norm(hidden)]`` (vllm/model_executor/models/llama_eagle3.py), and
its lm_head covers a reduced draft vocabulary (``d2t`` maps draft ids to target ids), so
the head's matmul is a tenth of the target's.

Where it differs from the seed: the seed fine-tunes the target itself with a gated LoRA
and samples with a small head; vLLM verifies with an unmodified target, so here the
"mask-filling" network is a separate one-layer drafter reading the target's states. The
target's path is untouched by construction, which is what the gated LoRA buys the seed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from engine.plugins.speculative.eagle_head import HeadShape, rope

_WEIGHTS_FILE = "model.safetensors"
# Target config fields that describe the target's own layer stack (Qwen2: one attention type per layer, sliding
# windows); the drafter's config must not inherit them (transformers rejects 28 layer types for 1 layer).
_TARGET_LAYOUT_KEYS = ("layer_types", "max_window_layers", "sliding_window", "use_sliding_window")


@dataclass(frozen=True)
class DrafterShape:
    """The drafter's own sizes; ``hidden_size`` must equal the target's (shared embedding)."""

    head: HeadShape
    aux_layers: tuple[int, ...]
    draft_vocab_size: int
    mask_token_id: int
    num_layers: int = 1


def default_aux_layers(num_layers: int) -> tuple[int, ...]:
    """vLLM's EAGLE-3 default: residual streams entering layers 2, L/2 and L-3."""
    return (2, num_layers // 2, num_layers - 3)


class DrafterLayer(nn.Module):
    """One Llama decoder layer of the drafter; the first reads ``[norm(embed); norm(hidden)]`` (2H wide)."""

    def __init__(self, s: HeadShape, first: bool) -> None:
        super().__init__()
        hidden, width = s.hidden_size, (2 if first else 1) * s.hidden_size
        self.first = first
        self.input_layernorm = nn.RMSNorm(hidden, eps=s.rms_norm_eps)
        if first:
            self.hidden_norm = nn.RMSNorm(hidden, eps=s.rms_norm_eps)
        self.q_proj = nn.Linear(width, s.num_heads * s.head_dim, bias=False)
        self.k_proj = nn.Linear(width, s.num_kv_heads * s.head_dim, bias=False)
        self.v_proj = nn.Linear(width, s.num_kv_heads * s.head_dim, bias=False)
        self.o_proj = nn.Linear(s.num_heads * s.head_dim, hidden, bias=False)
        self.post_attention_layernorm = nn.RMSNorm(hidden, eps=s.rms_norm_eps)
        self.gate_proj = nn.Linear(hidden, s.intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden, s.intermediate_size, bias=False)
        self.down_proj = nn.Linear(s.intermediate_size, hidden, bias=False)


class ParallelDrafter(nn.Module):
    """The trainable drafter; the token embedding stays the target's (frozen, shared).

    With one layer a mask slot's query is the same for every request (its token and hidden
    state are constants), so it can only pool the real slots by a fixed pattern; a second
    layer lets it ask about what the first layer read (``num_layers`` in ``DrafterShape``).
    """

    def __init__(self, shape: DrafterShape) -> None:
        super().__init__()
        self.shape = shape
        s = shape.head
        hidden, aux_width = s.hidden_size, s.hidden_size * len(shape.aux_layers)
        self.fc = nn.Linear(aux_width, hidden, bias=False)
        self.mask_hidden = nn.Parameter(torch.randn(aux_width) * 0.02)
        self.layers = nn.ModuleList(DrafterLayer(s, first=i == 0) for i in range(shape.num_layers))
        self.norm = nn.RMSNorm(hidden, eps=s.rms_norm_eps)
        self.lm_head = nn.Linear(hidden, shape.draft_vocab_size, bias=False)
        self.register_buffer("draft_to_target", torch.arange(shape.draft_vocab_size), persistent=False)
        inv_freq = 1.0 / (s.rope_theta ** (torch.arange(0, s.head_dim, 2).float() / s.head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def _attend(self, layer: DrafterLayer, x: torch.Tensor, positions: torch.Tensor,
                attend: torch.Tensor) -> torch.Tensor:
        """x: [B, N, width] -> the layer's attention output [B, N, H]."""
        s = self.shape.head
        batch, slots, _ = x.shape
        q = layer.q_proj(x).view(batch, slots, s.num_heads, s.head_dim).transpose(1, 2)
        k = layer.k_proj(x).view(batch, slots, s.num_kv_heads, s.head_dim).transpose(1, 2)
        v = layer.v_proj(x).view(batch, slots, s.num_kv_heads, s.head_dim).transpose(1, 2)
        q, k = rope(q, positions, self.inv_freq), rope(k, positions, self.inv_freq)
        group = s.num_heads // s.num_kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=attend, scale=1.0 / math.sqrt(s.head_dim))
        return layer.o_proj(attn.transpose(1, 2).reshape(batch, slots, -1))

    def forward(self, embeds: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor,
                attend: torch.Tensor) -> torch.Tensor:
        """The drafter, term for term as vLLM's ``Eagle3LlamaForCausalLM``.

        embeds: [B, N, H] token embeddings; hidden: [B, N, H] ``fc`` outputs (or the mask's);
        positions: [N]; attend: [N, N] bool, True where slot i may read slot j.
        Returns the normed output [B, N, H] that ``logits`` turns into draft-vocab scores.
        """
        residual, update = hidden, None  # vLLM keeps the residual stream and each layer's update apart
        for layer in self.layers:
            if layer.first:
                x = torch.cat((layer.input_layernorm(embeds), layer.hidden_norm(hidden)), dim=-1)  # [B, N, 2H]
            else:
                residual = residual + update
                x = layer.input_layernorm(residual)                                          # [B, N, H]
            residual = residual + self._attend(layer, x, positions, attend)
            normed = layer.post_attention_layernorm(residual)
            update = layer.down_proj(F.silu(layer.gate_proj(normed)) * layer.up_proj(normed))
        return self.norm(residual + update)

    def logits(self, out: torch.Tensor) -> torch.Tensor:
        """[..., H] -> [..., draft_vocab] scores (vLLM scatters them into the full vocabulary)."""
        return self.lm_head(out)

    def mask_state(self) -> torch.Tensor:
        """[H]: what every mask slot carries as its hidden state (vLLM: fc(mask_hidden))."""
        return self.fc(self.mask_hidden)


def parallel_layout(length: int, k: int, anchors: torch.Tensor | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Slot positions [N] and the attention pattern [N, N] for training on whole sequences.

    First the ``length`` real slots (slot t at position t), then for every anchor t (default:
    all positions) its k-1 mask slots, anchor-major (mask slot j of the a-th anchor at position
    t+j). A real slot sees real slots <= itself; mask slot (t, j) sees real slots <= t and mask
    slots (t, 1..j): exactly what it sees in vLLM's single drafting forward at anchor t.
    """
    real = torch.arange(length)
    anchors = real if anchors is None else anchors
    anchor = anchors.repeat_interleave(k - 1)                               # [A*(k-1)]
    offset = torch.arange(1, k).repeat(anchors.numel())                     # [A*(k-1)]
    positions = torch.cat((real, anchor + offset))                          # [N]
    slot_anchor = torch.cat((real, anchor))
    slot_offset = torch.cat((torch.zeros_like(real), offset))
    group = torch.cat((torch.full_like(real, -1), torch.arange(anchors.numel()).repeat_interleave(k - 1)))
    is_real = slot_offset == 0
    sees_real = is_real[None, :] & (slot_anchor[None, :] <= slot_anchor[:, None])
    sees_mask = (~is_real[None, :]) & (~is_real[:, None]) & (group[None, :] == group[:, None]) \
        & (slot_offset[None, :] <= slot_offset[:, None])
    return positions, sees_real | sees_mask


def draft_vocabulary(token_counts: torch.Tensor, size: int) -> torch.Tensor:
    """The ``size`` most frequent target ids, ascending: the draft vocabulary (d2t's source)."""
    return torch.sort(torch.topk(token_counts, size).indices).values


def _vllm_names(num_layers: int) -> dict[str, str]:
    """Our state-dict names -> the checkpoint's (layer 0 as ``midlayer.``, vLLM's EAGLE-3 layout)."""
    names = {"fc.weight": "fc.weight", "norm.weight": "norm.weight", "lm_head.weight": "lm_head.weight",
             "mask_hidden": "mask_hidden"}
    for i in range(num_layers):
        ours, theirs = f"layers.{i}.", "midlayer." if i == 0 else f"layers.{i}."
        norms = ("input_layernorm", "hidden_norm", "post_attention_layernorm") if i == 0 else (
            "input_layernorm", "post_attention_layernorm")
        for name in norms:
            names[f"{ours}{name}.weight"] = f"{theirs}{name}.weight"
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            names[f"{ours}{name}.weight"] = f"{theirs}self_attn.{name}.weight"
        for name in ("gate_proj", "up_proj", "down_proj"):
            names[f"{ours}{name}.weight"] = f"{theirs}mlp.{name}.weight"
    return names


def save_drafter(drafter: ParallelDrafter, target_config: dict, out_dir: Path,
                 dtype: torch.dtype = torch.float16) -> None:
    """Write ``config.json`` + ``model.safetensors`` as vLLM's ``Eagle3LlamaForCausalLM`` loads them."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    state = drafter.state_dict()
    names = _vllm_names(drafter.shape.num_layers)
    tensors = {vllm: state[ours].detach().to("cpu", dtype).contiguous() for ours, vllm in names.items()}
    ids = drafter.draft_to_target.to("cpu")
    tensors["d2t"] = (ids - torch.arange(ids.numel())).to(torch.int64)  # vLLM adds the draft id back
    save_file(tensors, str(out_dir / _WEIGHTS_FILE))
    s = drafter.shape
    config = {key: value for key, value in target_config.items()
              if not key.startswith("_") and key not in _TARGET_LAYOUT_KEYS}
    config.update({
        "architectures": ["Eagle3LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": s.num_layers,
        "intermediate_size": s.head.intermediate_size, "num_attention_heads": s.head.num_heads,
        "num_key_value_heads": s.head.num_kv_heads, "head_dim": s.head.head_dim,
        "draft_vocab_size": s.draft_vocab_size, "mask_token_id": s.mask_token_id,
        "target_hidden_size": s.head.hidden_size, "tie_word_embeddings": False,
        "eagle_config": {"eagle_aux_hidden_state_layer_ids": list(s.aux_layers), "use_aux_hidden_state": True},
        "torch_dtype": str(dtype).removeprefix("torch."), "dtype": str(dtype).removeprefix("torch."),
    })
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def load_drafter(head_dir: Path, device: str | torch.device = "cpu") -> ParallelDrafter:
    """Read a drafter written by ``save_drafter`` back into float32 (evaluation, fine-tuning)."""
    from safetensors.torch import load_file

    config = json.loads((head_dir / "config.json").read_text())
    shape = DrafterShape(HeadShape.from_target_config(config),
                         tuple(config["eagle_config"]["eagle_aux_hidden_state_layer_ids"]),
                         config["draft_vocab_size"], config["mask_token_id"], config["num_hidden_layers"])
    drafter = ParallelDrafter(shape)
    tensors = load_file(str(head_dir / _WEIGHTS_FILE))
    drafter.load_state_dict({ours: tensors[vllm].float().view_as(getattr_path(drafter, ours))
                             for ours, vllm in _vllm_names(shape.num_layers).items()})
    drafter.draft_to_target.copy_(tensors["d2t"] + torch.arange(shape.draft_vocab_size))
    return drafter.to(device)


def getattr_path(module: nn.Module, dotted: str) -> torch.Tensor:
    """``module.a.b`` from ``"a.b"`` (state-dict names to tensors)."""
    value = module
    for part in dotted.split("."):
        value = getattr(value, part)
    return value
