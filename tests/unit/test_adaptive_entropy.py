"""Entropy-adaptive switching, the parts that need no model: exact entropy, the tap's batch
bookkeeping, the side channel over a real Unix socket, and the switching policies."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
import torch
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

from engine.plugins.adaptive.channel import EntropyChannel
from engine.plugins.adaptive.entropy import EntropyTap, entropy_nats
from engine.plugins.adaptive.policy import MeanEntropy, QuantileEntropy, TokenDeferral


def test_entropy_matches_the_definition_on_a_real_vocabulary_size():
    torch.manual_seed(0)
    logits = torch.randn(5, 49152) * torch.tensor([[0.1], [1.0], [4.0], [20.0], [60.0]])  # flat ... peaked
    exact = torch.distributions.Categorical(logits=logits.double()).entropy().float()
    assert torch.allclose(entropy_nats(logits), exact, atol=2e-4, rtol=1e-5)
    assert entropy_nats(torch.tensor([[0.0, -1e9, -1e9]])).item() == pytest.approx(0.0, abs=1e-6)
    assert entropy_nats(torch.zeros(1, 8)).item() == pytest.approx(torch.log(torch.tensor(8.0)).item(), rel=1e-6)


def _params(tag: str | None) -> SimpleNamespace:
    return SimpleNamespace(extra_args={"adaptive": {"tap": tag}} if tag else None)


def test_tap_follows_rows_through_adds_moves_and_removals(monkeypatch, tmp_path):
    tap = EntropyTap(None, torch.device("cpu"), False)
    a, b = "11" * 16, "22" * 16
    out_a, out_b = [1, 2], [3]
    tap.update_state(BatchUpdate(3, removed=[], moved=[],
                                 added=[(0, _params(a), None, out_a), (1, _params(None), None, []),
                                        (2, _params(b), None, out_b)]))
    assert {row: tag.hex() for row, (tag, _) in tap._rows.items()} == {0: a, 2: b}
    tap.update_state(BatchUpdate(3, removed=[], added=[], moved=[(0, 1, MoveDirectionality.SWAP)]))
    assert {row: tag.hex() for row, (tag, _) in tap._rows.items()} == {1: a, 2: b}
    tap.update_state(BatchUpdate(2, removed=[1], added=[], moved=[(2, 0, MoveDirectionality.UNIDIRECTIONAL)]))
    assert {row: tag.hex() for row, (tag, _) in tap._rows.items()} == {0: b}
    logits = torch.randn(1, 10)
    assert tap.apply(logits) is logits  # no socket configured: measures nothing, changes nothing
    assert not tap.is_argmax_invariant()


def test_entropies_cross_a_real_socket_to_the_right_request(monkeypatch):
    async def scenario():
        channel = EntropyChannel()
        channel.publish()
        channel.start()
        try:
            tag, other = channel.open(), channel.open()
            tap = EntropyTap(None, torch.device("cpu"), False)
            tokens = [7, 8]
            tap.update_state(BatchUpdate(2, removed=[], moved=[],
                                         added=[(0, _params(tag), None, tokens), (1, _params(other), None, [])]))
            logits = torch.stack([torch.zeros(16), torch.tensor([30.0] + [0.0] * 15)])
            returned = tap.apply(logits.clone())
            assert torch.equal(returned, logits)  # untouched
            first = await channel.entropy(tag, 2, timeout_s=2)
            second = await channel.entropy(other, 0, timeout_s=2)
            missing = await channel.entropy(tag, 3, timeout_s=0.05)
            channel.close(tag)
            return first, second, missing
        finally:
            channel.shutdown()

    monkeypatch.delenv("LEANSERVE_ADAPTIVE_ENTROPY_SOCKET", raising=False)
    first, second, missing = asyncio.run(scenario())
    assert first == pytest.approx(torch.log(torch.tensor(16.0)).item(), rel=1e-6)  # position = tokens so far
    assert second == pytest.approx(0.0, abs=1e-6)
    assert missing is None


def test_ead_switches_on_the_window_mean_after_the_dwell():
    policy = MeanEntropy(threshold=1.0, window=2, min_dwell=2)
    assert [policy.observe(h) for h in (0.2, 3.0)] == ["small", "large"]  # mean 1.6 > 1, dwell 2 reached
    assert [policy.observe(h) for h in (0.1, 0.1, 0.1)] == ["large", "small", "small"]  # dwell, then low mean


def test_quantile_rule_reacts_to_a_few_uncertain_tokens_the_mean_averages_away():
    entropies = (0.1, 0.1, 0.1, 2.5, 0.1)
    mean = MeanEntropy(threshold=1.0, window=5, min_dwell=1)
    quantile = QuantileEntropy(threshold=1.0, window=5, min_dwell=1, quantile=0.8)
    assert [mean.observe(h) for h in entropies] == ["small"] * 5  # the mean stays at or below 0.58
    # The 0.8-quantile of (0.1, 0.1, 0.1, 2.5) is above 1: the large model takes over; the window
    # restarts with its own entropies, and one confident token (dwell 1) hands back.
    assert [quantile.observe(h) for h in entropies] == ["small", "small", "small", "large", "small"]


def test_token_deferral_hands_over_at_the_uncertain_token_itself_with_no_dwell_on_the_small_side():
    policy = TokenDeferral(threshold=1.0, window=2, min_dwell=3)
    # A single uncertain token, right at the start: the mean and the dwell of the other rules would let it pass.
    assert policy.observe(1.5) == "large"
    # The large model writes at least 3 tokens, then hands back once its last 2 entropies are both low.
    assert [policy.observe(h) for h in (0.1, 2.0, 0.1, 0.1)] == ["large", "large", "large", "small"]
    assert [policy.observe(h) for h in (0.2, 0.99, 1.0)] == ["small", "small", "large"]


def test_token_deferral_at_threshold_zero_never_leaves_the_large_model():
    policy = TokenDeferral(threshold=0.0, window=1, min_dwell=1)
    assert policy.active == "large"
    assert {policy.observe(0.0) for _ in range(10)} == {"large"}
