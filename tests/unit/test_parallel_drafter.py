"""The one-forward parallel drafter: training sees what vLLM's single drafting forward sees,
and the checkpoint is what vLLM's EAGLE-3 loader reads (tiny random weights: mechanics only)."""

from __future__ import annotations

import json

import pytest
import torch

from engine.plugins.speculative.config import SpeculationSpec, is_parallel_drafter, vllm_speculative_config
from engine.plugins.speculative.eagle_head import HeadShape
from engine.plugins.speculative.parallel_head import (
    DrafterShape,
    ParallelDrafter,
    draft_vocabulary,
    load_drafter,
    parallel_layout,
    save_drafter,
)

TARGET = {"hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4, "num_key_value_heads": 2,
          "head_dim": 16, "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "vocab_size": 300, "num_hidden_layers": 8}


def _drafter(seed: int = 0, layers: int = 1) -> ParallelDrafter:
    torch.manual_seed(seed)
    drafter = ParallelDrafter(DrafterShape(HeadShape.from_target_config(TARGET), (2, 4, 5), 40, mask_token_id=7,
                                           num_layers=layers))
    drafter.draft_to_target.copy_(torch.arange(40) * 7 + 3)
    return drafter


def _inputs(drafter: ParallelDrafter, length: int, k: int, anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    real_embeds, aux = torch.randn(length, 64), torch.randn(length, 3 * 64)
    n_mask = anchors.numel() * (k - 1)
    mask_embed = torch.randn(64)
    embeds = torch.cat((real_embeds, mask_embed.expand(n_mask, -1)))
    hidden = torch.cat((drafter.fc(aux), drafter.mask_state().expand(n_mask, -1)))
    return embeds[None], hidden[None]


def test_a_mask_slot_sees_its_anchors_prefix_and_the_mask_slots_before_it() -> None:
    positions, attend = parallel_layout(5, 3, torch.tensor([1, 4]))
    assert positions.tolist() == [0, 1, 2, 3, 4, 2, 3, 5, 6]
    assert attend[:5, :5].equal(torch.ones(5, 5, dtype=torch.bool).tril())  # real slots: causal
    assert not attend[:5, 5:].any()  # no real slot reads a mask slot
    # mask slot 2 of anchor 1 (slot 6): real 0..1, then anchor 1's mask slots 1..2
    assert attend[6].nonzero().flatten().tolist() == [0, 1, 5, 6]
    assert attend[7].nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 7]


@pytest.mark.parametrize("layers", [1, 2])
@torch.no_grad()
def test_training_on_all_anchors_at_once_equals_vllms_one_forward_per_anchor(layers: int) -> None:
    """vLLM's drafting forward at anchor t is plain causal attention over real slots 0..t then
    k-1 mask slots at positions t+1.. t+k-1; the packed training layout must give the same outputs."""
    drafter, length, k = _drafter(layers=layers), 9, 4
    anchors = torch.arange(length)
    embeds, hidden = _inputs(drafter, length, k, anchors)
    positions, attend = parallel_layout(length, k, anchors)
    packed = drafter(embeds, hidden, positions, attend)[0]                          # [N, H]
    for t in (0, 3, 8):
        mask_rows = length + t * (k - 1) + torch.arange(k - 1)
        rows = torch.cat((torch.arange(t + 1), mask_rows))
        causal = torch.ones(rows.numel(), rows.numel(), dtype=torch.bool).tril()
        alone = drafter(embeds[:, rows], hidden[:, rows], torch.arange(t + k), causal)[0]
        assert torch.allclose(alone, packed[rows], atol=1e-5), t


def test_the_draft_vocabulary_is_the_most_frequent_ids_in_order() -> None:
    counts = torch.tensor([5, 0, 9, 1, 7, 0])
    assert draft_vocabulary(counts, 3).tolist() == [0, 2, 4]


@pytest.mark.parametrize("layers", [1, 2])
@torch.no_grad()
def test_the_checkpoint_is_what_vllms_eagle3_loader_reads_and_round_trips(tmp_path, layers: int) -> None:
    drafter = _drafter(layers=layers)
    save_drafter(drafter, TARGET, tmp_path, dtype=torch.float32)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["Eagle3LlamaForCausalLM"] and config["mask_token_id"] == 7
    assert config["draft_vocab_size"] == 40 and config["num_hidden_layers"] == layers
    assert config["eagle_config"] == {"eagle_aux_hidden_state_layer_ids": [2, 4, 5], "use_aux_hidden_state": True}
    from safetensors.torch import load_file

    tensors = load_file(str(tmp_path / "model.safetensors"))
    # vLLM maps draft id i to target id i + d2t[i]; the embedding stays the target's
    assert (tensors["d2t"] + torch.arange(40)).equal(drafter.draft_to_target)
    assert tensors["midlayer.self_attn.q_proj.weight"].shape == (64, 128)  # reads [norm(embed); norm(hidden)]
    if layers == 2:  # later layers read the residual stream only, as vLLM's layer_idx > 0
        assert tensors["layers.1.self_attn.q_proj.weight"].shape == (64, 64)
        assert "layers.1.hidden_norm.weight" not in tensors
    assert tensors["mask_hidden"].shape == (3 * 64,) and not any("embed_tokens" in name for name in tensors)
    again = load_drafter(tmp_path)
    embeds, hidden = _inputs(drafter, 6, 3, torch.arange(6))
    positions, attend = parallel_layout(6, 3)
    assert torch.allclose(drafter.logits(drafter(embeds, hidden, positions, attend)),
                          again.logits(again(embeds, hidden, positions, attend)), atol=1e-5)
    assert is_parallel_drafter(tmp_path)


def test_a_qwen2_targets_drafter_config_loads_as_a_one_layer_llama(tmp_path) -> None:
    """Qwen2 configs list one attention type per layer (and sliding-window fields); a drafter config that
    inherited them would fail transformers' validation in vLLM's loader (28 layer types for 1 layer)."""
    from transformers import AutoConfig

    qwen2 = {**TARGET, "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "max_window_layers": 8,
             "layer_types": ["full_attention"] * 8, "sliding_window": None, "use_sliding_window": False}
    save_drafter(_drafter(), qwen2, tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert config.model_type == "llama" and config.num_hidden_layers == 1 and config.num_attention_heads == 4


def test_mtp_serves_a_parallel_drafter_with_vllms_parallel_drafting(tmp_path) -> None:
    save_drafter(_drafter(), TARGET, tmp_path)
    config = vllm_speculative_config(SpeculationSpec("mtp", str(tmp_path)), None, "SmolLM2-135M-Instruct")
    assert config == {"method": "eagle3", "model": str(tmp_path), "num_speculative_tokens": 2,
                      "parallel_drafting": True, "num_speculative_tokens_per_batch_size": [(1, 2, 2), (3, 3, 0)]}
    (tmp_path / "metrics.json").write_text(json.dumps({"serve_draft_tokens": 3}))  # the recipe's best K
    assert vllm_speculative_config(SpeculationSpec("mtp", str(tmp_path)), None, "x")["num_speculative_tokens"] == 3
    assert vllm_speculative_config(SpeculationSpec("mtp", str(tmp_path)), 5, "x")["num_speculative_tokens"] == 5


@pytest.mark.parametrize("k", [2, 3])
def test_the_mask_slots_share_one_learned_state(k: int) -> None:
    drafter = _drafter()
    positions, attend = parallel_layout(4, k)
    assert positions.numel() == 4 * k and attend.shape == (4 * k, 4 * k)
    assert drafter.mask_state().shape == (64,) and drafter.mask_hidden.requires_grad


def test_a_recipe_stopped_mid_stage_resumes_at_the_first_missing_shard(tmp_path) -> None:
    """A large target's data takes several sessions: each finished shard is kept, a killed one is redone."""
    from engine.plugins.speculative.train_drafter import sharded

    built: list[list[int]] = []

    def square(part: list[int], fail_at: int | None = None) -> list[int]:
        if fail_at in part:
            raise KeyboardInterrupt  # the session ends while this shard is in progress
        built.append(part)
        return [x * x for x in part]

    with pytest.raises(KeyboardInterrupt):
        sharded(tmp_path, "squares", list(range(10)), 4, lambda part: square(part, fail_at=5))
    assert built == [[0, 1, 2, 3]] and sorted(p.name for p in tmp_path.iterdir()) == ["squares-000.pt"]
    assert sharded(tmp_path, "squares", list(range(10)), 4, square) == [x * x for x in range(10)]
    assert built == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]  # the first shard was read back, not rebuilt


def test_a_drafter_reading_fewer_taps_trains_on_those_columns_of_the_gathered_streams() -> None:
    """The stage cache holds three taps; a one-tap drafter (a 4x smaller fc at a 1.5B target's width)
    must read exactly the chosen layer's residual stream, or it learns on features vLLM never hands it."""
    from engine.plugins.speculative.train_drafter import select_taps

    per_layer = [torch.full((5, 4), float(layer)) for layer in (2, 14, 25)]
    aux = torch.cat(per_layer, dim=-1)                                            # [T, 3 * H]
    assert select_taps(aux, (2, 14, 25), (25,)).equal(per_layer[2])
    assert select_taps(aux, (2, 14, 25), (25, 2)).equal(torch.cat((per_layer[2], per_layer[0]), dim=-1))
    assert select_taps(aux, (2, 14, 25), (2, 14, 25)) is aux
    with pytest.raises(ValueError, match=r"taps \[7\] were not gathered"):
        select_taps(aux, (2, 14, 25), (7,))


@torch.no_grad()
def test_a_one_tap_drafter_declares_its_single_layer_to_vllm(tmp_path) -> None:
    """vLLM sizes the drafter's fc from the length of ``eagle_aux_hidden_state_layer_ids`` and captures
    those layers in the target: a one-tap checkpoint must say one layer and carry an H x H fc."""
    torch.manual_seed(0)
    shape = DrafterShape(HeadShape.from_target_config(TARGET), (5,), 40, mask_token_id=7)
    drafter = ParallelDrafter(shape)
    save_drafter(drafter, TARGET, tmp_path, dtype=torch.float32)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [5]
    from safetensors.torch import load_file

    tensors = load_file(str(tmp_path / "model.safetensors"))
    assert tensors["fc.weight"].shape == (64, 64) and tensors["mask_hidden"].shape == (64,)
    assert load_drafter(tmp_path).fc.weight.equal(drafter.fc.weight)


def test_the_recipe_never_serves_a_single_draft_where_two_were_replayed() -> None:
    """One draft verifies 2 rows, which this CPU's GEMM runs slower than 3 (RESULTS.md, the verification cost curve)."""
    from engine.plugins.speculative.train_drafter import serve_draft_tokens

    def replay(*tokens_per_step: float) -> dict[str, dict]:
        return {str(k): {"mean_tokens_per_target_step": t} for k, t in enumerate(tokens_per_step, start=1)}

    assert serve_draft_tokens(replay(1.379, 1.393, 1.393)) == 2   # the mask slot adds little: still 2, not 1
    assert serve_draft_tokens(replay(1.30, 1.45, 1.46, 1.46)) == 2
    assert serve_draft_tokens(replay(1.30, 1.45, 1.55, 1.56)) == 3  # later drafts still pay: the shortest near the best
    assert serve_draft_tokens(replay(1.2)) == 1                      # only K = 1 was replayed
