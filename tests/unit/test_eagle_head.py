"""The learned draft head: causal training maths and the checkpoint layout vLLM loads."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from engine.plugins.speculative.eagle_head import EagleHead, HeadShape, load_head, save_head

TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0, "num_hidden_layers": 3, "vocab_size": 100, "dtype": "float32",
}


def _head() -> EagleHead:
    torch.manual_seed(0)
    head = EagleHead(HeadShape.from_target_config(TINY_CONFIG))
    for parameter in head.parameters():
        torch.nn.init.normal_(parameter, std=0.2)
    return head


def test_unrolled_drafts_never_see_later_target_states() -> None:
    """Step j at position t may use tokens up to t+j but target hidden states only up to t,
    exactly what vLLM has when it drafts; a leak would inflate acceptance in training only."""
    head = _head()
    tokens, hidden = torch.randn(2, 10, 32), torch.randn(2, 10, 32)
    outputs = head.forward_unrolled(tokens, hidden, steps=3)
    t = 4
    changed_hidden = hidden.clone()
    changed_hidden[:, t + 1:] += 5.0
    changed_tokens = tokens.clone()
    changed_tokens[:, t + 3:] += 5.0  # the furthest token step 3 at t reads is t + 2
    for before, after in zip(outputs, head.forward_unrolled(changed_tokens, changed_hidden, steps=3), strict=True):
        torch.testing.assert_close(before[:, : t + 1], after[:, : t + 1])
        assert not torch.allclose(before[:, t + 1:], after[:, t + 1:])


def test_first_step_is_a_causal_decoder_layer_over_fc_inputs() -> None:
    """Step 1 equals running the layer on fc([token; hidden]) with a causal mask, position by position."""
    head = _head()
    tokens, hidden = torch.randn(1, 6, 32), torch.randn(1, 6, 32)
    full = head.forward_unrolled(tokens, hidden, steps=1)[0]
    for length in range(1, 7):
        prefix = head.forward_unrolled(tokens[:, :length], hidden[:, :length], steps=1)[0]
        torch.testing.assert_close(prefix[:, -1], full[:, length - 1], rtol=1e-4, atol=1e-5)


def test_checkpoint_has_vllm_eagle_names_and_round_trips(tmp_path) -> None:
    head = _head()
    save_head(head, TINY_CONFIG, tmp_path, dtype=torch.float32)
    names = set(load_file(str(tmp_path / "model.safetensors")))
    assert names == {
        "fc.weight", "layers.0.self_attn.q_proj.weight", "layers.0.self_attn.k_proj.weight",
        "layers.0.self_attn.v_proj.weight", "layers.0.self_attn.o_proj.weight",
        "layers.0.post_attention_layernorm.weight", "layers.0.mlp.gate_proj.weight",
        "layers.0.mlp.up_proj.weight", "layers.0.mlp.down_proj.weight",
    }  # no embed_tokens / lm_head: vLLM shares the target's
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["architectures"] == ["LlamaForCausalLM"]
    again = load_head(tmp_path)
    tokens, hidden = torch.randn(1, 5, 32), torch.randn(1, 5, 32)
    torch.testing.assert_close(again.forward_unrolled(tokens, hidden, 2)[1], head.forward_unrolled(tokens, hidden, 2)[1])
