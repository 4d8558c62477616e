"""The sparse-prefill plugin's own logic, without an engine: which prompts go sparse, the layer list, the
prefix-cache salt, the per-request figures' way back to the gateway, and the accounting they become."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from engine.plugin import REQUEST_ID_KEY, FinishedRequest
from engine.plugins.sparse_prefill.channel import LayerPass, RecordChannel
from engine.plugins.sparse_prefill.plugin import (
    PLUGIN,
    SparsePrefillOptions,
    SparsePrefillSettings,
    estimated_seconds_saved,
)
from engine.plugins.sparse_prefill.rows import OPTIONS_KEY, EngineSparsity, plan_step
from engine.plugins.sparse_prefill.sparse_layers import resolve_layers
from engine.plugins.sparse_prefill.wire import RecordSender, request_tag
from engine.protocol import GenerationRequest, Prompt, SamplingOptions
from kernels.token_sparse_attention import SparsityConfig

CONFIG = EngineSparsity(frozenset({1, 2}), SparsityConfig(0.05, 16, 32), min_prompt=100)


def test_only_whole_long_prompts_that_did_not_opt_out_go_sparse():
    # rows: a 150-token prompt, a decode, a 99-token prompt, 150 new tokens after a cached prefix,
    # an opted-out 200-token prompt, a 120-token prompt at another coverage
    lengths = [150, 1, 99, 150, 200, 120]
    starts = [0]
    for length in lengths:
        starts.append(starts[-1] + length)
    seq_lens = [150, 500, 99, 400, 200, 120]
    args = [{REQUEST_ID_KEY: "a"}, None, {REQUEST_ID_KEY: "c"}, {}, {OPTIONS_KEY: {"enabled": False}},
            {REQUEST_ID_KEY: "f", OPTIONS_KEY: {"enabled": True, "coverage": 0.2, "window": 7}}]
    plan = plan_step(starts, seq_lens, args, CONFIG)
    assert [(row.start, row.end, row.request_id) for row in plan.sparse] == [(0, 150, "a"), (600, 720, "f")]
    assert plan.sparse[0].sparsity == CONFIG.sparsity
    assert plan.sparse[1].sparsity.coverage == 0.2 and plan.sparse[1].sparsity.window == 7
    assert plan.sparse[1].sparsity.min_tokens == 32
    assert plan.dense_requests == (1, 2, 3, 4)


def model_dir(tmp_path, layers: int = 30, nested: bool = False):
    config = {"num_hidden_layers": layers}
    (tmp_path / "config.json").write_text(json.dumps({"text_config": config} if nested else config))
    return str(tmp_path)


def test_layer_lists_resolve_and_are_checked_against_the_model(tmp_path):
    path = model_dir(tmp_path, 6)
    assert resolve_layers("all", path) == [0, 1, 2, 3, 4, 5]
    assert resolve_layers(" 5,3, 3 ", path) == [3, 5]
    for wrong in ("6", "-1", "x", ""):
        with pytest.raises(ValueError, match="sparse-prefill-layers"):
            resolve_layers(wrong, path)
    with pytest.raises(ValueError, match="no profiled layer list"):
        resolve_layers("auto", path)  # tmp_path's name has no shipped list
    assert resolve_layers("0,1", model_dir(tmp_path, 2, nested=True)) == [0, 1]


def test_the_salt_keeps_sparse_prompts_apart_by_coverage_and_leaves_others_plain():
    settings = SparsePrefillSettings(sparse_prefill=True, sparse_prefill_min_prompt=1000, sparse_prefill_coverage=0.05)
    salt = PLUGIN.cache_salt
    assert salt(settings, None, 999) is None
    assert salt(settings, None, 1000) == salt(settings, SparsePrefillOptions(), 5000) == "sparse_prefill:0.05:64"
    assert salt(settings, SparsePrefillOptions(enabled=False), 5000) is None
    assert salt(settings, SparsePrefillOptions(coverage=0.0), 5000) == "sparse_prefill:0.0:64"
    assert salt(settings, SparsePrefillOptions(window=512), 5000) == "sparse_prefill:0.05:512"


def test_request_options_are_strict():
    for bad in ({"coverage": 1.0}, {"coverage": -0.01}, {"coverage": "0.1"}, {"enabled": "no"}, {"layers": [1]},
                {"window": 0}, {"window": 1.5}, {"window": 10_000}):
        with pytest.raises(ValidationError):
            SparsePrefillOptions.model_validate(bad)
    assert PLUGIN.sampling_args(SparsePrefillSettings(), SparsePrefillOptions(coverage=0.1)) == \
        {"enabled": True, "coverage": 0.1, "window": None}
    assert PLUGIN.sampling_args(SparsePrefillSettings(), None) is None


def test_records_reach_the_channel_by_request_and_become_usage(monkeypatch):
    channel = RecordChannel()
    try:
        sender = RecordSender(channel.path)
        sender.send([(request_tag("req-1"), layer, 1000, kept, kept, 0.25) for layer, kept in ((3, 400), (5, 600))])
        for _ in range(30):  # more datagrams than a Unix socket queues: nobody reads, so some are given up
            sender.send([(request_tag("req-2"), 3, 2000, 2000, 2000, 1.0)])
        monkeypatch.setattr(PLUGIN, "_channel", channel)
        request = GenerationRequest("req-1", Prompt([1] * 1000), SamplingOptions(max_tokens=1))
        accounting = PLUGIN.request_finished(SparsePrefillSettings(sparse_prefill=True), None,
                                             FinishedRequest(request, (1,), None))
        assert accounting.usage["sparse_layer_passes"] == 2
        assert accounting.usage["tokens_scored"] == 2000 and accounting.usage["tokens_kept"] == 1000
        assert accounting.usage["attention_seconds"] == 0.5
        assert 1 <= len(channel.take("req-2")) < 30 and sender.dropped > 0
        assert channel.take("req-1") == []  # taken once
        dense = PLUGIN.request_finished(SparsePrefillSettings(sparse_prefill=True), None,
                                        FinishedRequest(GenerationRequest("req-3", Prompt([1]), SamplingOptions(max_tokens=1)),
                                                        (1,), None))
        assert dense.usage == {"sparse_layer_passes": 0, "tokens_scored": 0, "tokens_kept": 0, "attention_seconds": 0,
                               "attention_seconds_saved_estimate": 0}
    finally:
        channel.close()


def test_a_sender_without_a_gateway_drops_quietly():
    sender = RecordSender("/nonexistent/socket")
    sender.send([(request_tag("x"), 1, 10, 5, 5, 0.1)])
    assert sender.dropped == 1


def test_the_saving_estimate_follows_the_work_ratio():
    assert estimated_seconds_saved(LayerPass(1, 1000, 1000, 1000, 1.0), 64) == 0.0  # keeping everything saves nothing
    half = estimated_seconds_saved(LayerPass(1, 8192, 2048, 2048, 1.0), 64)
    assert 5 < half < 16  # 1/16 of the pairs, plus the window's scoring


@pytest.mark.parametrize("length", [1, 70, 300, 1100])
@pytest.mark.parametrize("coverage", [0.0, 0.2])
def test_vllms_kernel_attends_the_kept_tokens_as_the_reference_path_does(length, coverage):
    """The plugin's attention over kept tokens (vLLM's C++ kernel on a scratch paged cache) against SDPA's; block
    tails past a head's last key must not leak in (lengths not a multiple of the block)."""
    import functools

    import torch
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    from engine.plugins.sparse_prefill.paged_attend import attend_kept_paged
    from kernels.token_sparse_attention import vectorised

    generator = torch.Generator().manual_seed(length)
    query, key, value = (torch.randn(length, heads, 64, generator=generator) for heads in (9, 3, 3))
    key[::17] *= 4  # some tokens stand out, so coverage 0.2 drops the rest
    config = SparsityConfig(coverage, window=16, min_tokens=8)
    attend = functools.partial(attend_kept_paged, isa=_get_attn_isa(torch.float32, 128, 64, "auto"), block_size=128)
    expected, counts = vectorised.token_sparse_attention(query, key, value, 0.125, config)
    got, same_counts = vectorised.token_sparse_attention(query, key, value, 0.125, config, attend=attend)
    assert torch.equal(counts, same_counts) and torch.isfinite(got).all()
    assert torch.allclose(got, expected, atol=1e-4)
