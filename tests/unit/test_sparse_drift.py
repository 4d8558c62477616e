"""The TSA layer profiler (engine/plugins/sparse_prefill/drift.py) and the layer lists shipped with it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from engine.plugins.sparse_prefill import drift as drift_mod
from engine.plugins.sparse_prefill.drift import LAYERS_DIR, layer_drift, load_layer_list, pick_sparse_layers

MODELS = Path.home() / ".cache" / "leanserve" / "models"
SHIPPED = ("SmolLM2-135M-Instruct", "Qwen2.5-Coder-0.5B-Instruct")


# pick_sparse_layers


def test_layer_0_is_never_picked_even_with_the_least_drift() -> None:
    drift = [0.0, 0.3, 0.2, 0.1]
    assert pick_sparse_layers(drift, count=3) == [1, 2, 3]
    assert 0 not in pick_sparse_layers(drift, fraction=1.0)
    assert pick_sparse_layers(drift, count=1) == [3]


def test_picks_the_lowest_drift_layers_sorted() -> None:
    drift = [0.9, 0.5, 0.1, 0.3, 0.05, 0.9]
    assert pick_sparse_layers(drift, count=2) == [2, 4]
    assert pick_sparse_layers(drift, count=3) == [2, 3, 4]
    assert pick_sparse_layers(drift, fraction=0.5) == [2, 3, 4]


def test_ties_go_to_the_lower_layer() -> None:
    assert pick_sparse_layers([1.0, 0.2, 0.1, 0.1, 0.1], count=2) == [2, 3]


@pytest.mark.parametrize(("fraction", "expected"), [(0.5, 15), (1 / 3, 10), (0.25, 8), (0.01, 1), (1.0, 29), (0.99, 29)])
def test_fraction_rounds_half_up_within_one_and_all_but_layer_0(fraction: float, expected: int) -> None:
    drift = [math.sin(i) + 1.5 for i in range(30)]
    picked = pick_sparse_layers(drift, fraction=fraction)
    assert len(picked) == expected
    assert picked == sorted(set(picked)) and 0 not in picked
    # they are the least-drift layers among 1..29
    worst_picked = max(drift[i] for i in picked)
    assert all(drift[i] >= worst_picked for i in range(1, 30) if i not in picked)


@pytest.mark.parametrize("kwargs", [
    {"fraction": 0.0}, {"fraction": -0.1}, {"fraction": 1.5}, {"fraction": float("nan")}, {"fraction": True},
    {"count": 0}, {"count": -1}, {"count": 6}, {"count": 2.5}, {"count": True},
    {"fraction": 0.5, "count": 2}, {},
])
def test_bad_fraction_or_count_is_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        pick_sparse_layers([0.5, 0.4, 0.3, 0.2, 0.1, 0.0], **kwargs)


@pytest.mark.parametrize("drift", [[], [0.1], [0.5, float("nan"), 0.1], [0.5, float("inf"), 0.1]])
def test_bad_drift_is_rejected(drift: list[float]) -> None:
    with pytest.raises(ValueError):
        pick_sparse_layers(drift, count=1)


# layer_drift on a tiny random-weight Llama


@pytest.fixture(scope="module")
def tiny() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config).eval()


def _ids(seed: int, length: int, batch: int = 1) -> torch.Tensor:
    return torch.randint(0, 128, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_layer_drift_is_finite_per_layer_and_within_0_2(tiny: LlamaForCausalLM) -> None:
    values = layer_drift(tiny, [_ids(1, 32, batch=2), _ids(2, 48)])
    assert len(values) == 4
    assert all(math.isfinite(v) and 0.0 <= v <= 2.0 for v in values)
    assert len(set(values)) > 1
    assert all(not layer._forward_hooks for layer in tiny.model.layers)  # hooks removed


def test_layer_drift_matches_hidden_states_across_each_layer(tiny: LlamaForCausalLM) -> None:
    ids = _ids(3, 40)
    with torch.inference_mode():
        hidden = tiny(input_ids=ids, output_hidden_states=True).hidden_states
    expected = [float((1 - torch.nn.functional.cosine_similarity(hidden[i], hidden[i + 1], dim=-1)).mean())
                for i in range(3)]  # hidden[4] has the final norm applied: the hook, not it, gives layer 3
    values = layer_drift(tiny, [ids])
    assert values[:3] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert values == pytest.approx(layer_drift(tiny.model, [ids[0]]), rel=1e-6)  # bare model, 1-D ids


def test_layer_drift_weighs_every_token_equally(tiny: LlamaForCausalLM) -> None:
    a, b = _ids(4, 16), _ids(5, 64)
    da, db, both = layer_drift(tiny, [a]), layer_drift(tiny, [b]), layer_drift(tiny, [a, b])
    assert both == pytest.approx([(16 * x + 64 * y) / 80 for x, y in zip(da, db)], rel=1e-6)


def test_a_layer_that_adds_nothing_has_no_drift_and_is_picked() -> None:
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
    values = layer_drift(model, [_ids(6, 32)])
    assert values[2] == pytest.approx(0.0, abs=1e-6)
    assert values[0] > 1e-3 and values[1] > 1e-3
    assert pick_sparse_layers(values, count=1) == [2]


def test_layer_drift_needs_tokens(tiny: LlamaForCausalLM) -> None:
    with pytest.raises(ValueError):
        layer_drift(tiny, [])


# prompts: the Austen text, last novel held out


def test_prompts_are_distinct_exact_windows_outside_the_held_out_novel() -> None:
    from benchmarks.bench import sources

    if not (sources.default_cache_dir() / "janeaustenr" / sources.AUSTEN_RDATA).with_suffix(".rdb").exists():
        pytest.skip("the Austen corpus is not in the bench cache")

    class Chars:
        def encode(self, text: str) -> list[int]:
            return [ord(c) for c in text]

    prompts = drift_mod.austen_prompts(Chars(), [300, 200], 3)
    assert [tuple(p.shape) for p in prompts] == [(1, 300)] * 3 + [(1, 200)] * 3
    texts = ["".join(map(chr, p[0].tolist())) for p in prompts]
    assert len(set(texts)) == 6
    assert texts == ["".join(map(chr, p[0].tolist())) for p in drift_mod.austen_prompts(Chars(), [300, 200], 3)]
    training = sources.austen_text(books=sources.AUSTEN_BOOKS[:-1])
    held_out = sources.austen_text(books=sources.AUSTEN_BOOKS[-1:])
    assert all(t in training and t not in held_out for t in texts)


# the shipped lists


def _shipped(name: str) -> dict:
    path = LAYERS_DIR / f"{name}.json"
    assert path.is_file(), f"{path} is missing"
    return json.loads(path.read_text())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_list_is_valid(name: str) -> None:
    data = _shipped(name)
    assert data["model"] == name
    n = data["num_layers"]
    assert len(data["drift"]) == n
    assert all(isinstance(d, float) and 0.0 <= d <= 2.0 for d in data["drift"])
    layers = data["sparse_layers"]
    assert layers and layers == sorted(set(layers))
    assert all(isinstance(i, int) and 1 <= i < n for i in layers)
    assert layers == pick_sparse_layers(data["drift"], count=len(layers))
    if data.get("fraction") is not None:
        assert layers == pick_sparse_layers(data["drift"], fraction=data["fraction"])
    for key in ("architecture", "lengths", "prompts", "command", "date", "torch", "transformers"):
        assert data[key]
    config = MODELS / name / "config.json"
    if not config.exists():
        pytest.skip(f"{config} is not present")
    assert n == json.loads(config.read_text())["num_hidden_layers"]
    assert data["architecture"] == json.loads(config.read_text())["architectures"][0]


@pytest.mark.parametrize("name", SHIPPED)
def test_load_layer_list_finds_the_list_by_model_directory(name: str) -> None:
    expected = _shipped(name)["sparse_layers"]
    for spelling in (str(MODELS / name), str(MODELS / name) + "/", MODELS / name, f"SomeOrg/{name}", name):
        assert load_layer_list(spelling) == expected


def test_load_layer_list_without_a_profile_is_none() -> None:
    assert load_layer_list("/nowhere/NoSuchModel-1B") is None
    assert load_layer_list("") is None


# layer sensitivity (sensitivity.py): the measure the shipped lists are picked by


def _tiny_probe_model():
    from transformers import AttentionInterface

    from engine.plugins.sparse_prefill.sensitivity import ATTENTION, _probe_attention

    AttentionInterface.register(ATTENTION, _probe_attention)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(config).eval().to(torch.float32).requires_grad_(False), ATTENTION


def test_layer_sensitivity_is_zero_where_nothing_is_dropped_and_positive_elsewhere():
    from engine.plugins.sparse_prefill.sensitivity import layer_sensitivity
    from kernels.token_sparse_attention import SparsityConfig

    model, attention = _tiny_probe_model()
    model.config._attn_implementation = attention
    prompts = [torch.randint(0, 100, (120,), generator=torch.Generator().manual_seed(1))]
    with torch.inference_mode():
        sparse = layer_sensitivity(model, prompts, SparsityConfig(coverage=0.5, window=8, min_tokens=4))
        every_token = layer_sensitivity(model, prompts, SparsityConfig(coverage=0.0, window=8, min_tokens=4))
    assert len(sparse) == 4 and all(0 <= value <= 2 for value in sparse)
    assert max(every_token) < 1e-6  # keeping every token is dense attention
    assert sparse[-1] < 1e-6  # the last layer's window rows attend densely and nothing after reads the others
    assert max(sparse[:-1]) > 1e-4  # dropping rows in an earlier layer reaches the answer rows
