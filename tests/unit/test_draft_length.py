"""Per-request draft length from recent acceptance (engine/plugins/speculative/draft_length.py).

What the scheduler does with it (only the kept prefix is verified; greedy answers unchanged) is
tests/integration/test_speculative.py, whose servers run with the default ``--speculative-min-acceptance``.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from engine.plugins.speculative.draft_length import DraftLengths, draft_length

DRAFTS = [11, 12, 13, 14]


def _next_drafts(lengths: DraftLengths, request_id: str, batch_size: int = 1) -> list[int]:
    """One step: plan ``request_id`` in a batch of ``batch_size`` requests, then cut its proposed drafts."""
    lengths.plan([request_id, *(f"other-{i}" for i in range(batch_size - 1))], len(DRAFTS))
    return lengths.keep(request_id, list(DRAFTS))


@pytest.mark.parametrize(("alpha", "min_accept", "expected"), [
    (0.9, 0.1, 4),   # 0.9**4 = 0.66: every draft is likely reached and accepted
    (0.5, 0.1, 3),   # 0.5**3 = 0.125 >= 0.1 > 0.5**4
    (0.3, 0.1, 1),   # 0.3 >= 0.1 > 0.09
    (0.05, 0.1, 0),  # not even the first draft
    (0.5, 0.0, 4),   # no threshold: all K
])
def test_the_draft_length_is_the_longest_prefix_likely_to_be_accepted(alpha, min_accept, expected):
    assert draft_length(alpha, 4, min_accept) == expected


def test_a_request_with_no_verifications_yet_keeps_every_draft():
    assert _next_drafts(DraftLengths(0.1), "new", 1) == DRAFTS


def test_a_request_whose_drafts_are_accepted_keeps_drafting_fully():
    lengths = DraftLengths(0.1)
    for _ in range(20):
        lengths.observe("copying", 4, 4)
    assert _next_drafts(lengths, "copying", 1) == DRAFTS


def test_rejected_drafts_shorten_the_next_ones_then_stop_them():
    lengths = DraftLengths(0.1)
    kept = []
    for _ in range(16):
        drafts = _next_drafts(lengths, "prose", 1)
        kept.append(len(drafts))
        if drafts:
            lengths.observe("prose", len(drafts), 0)  # every first draft rejected
    assert 0 in kept, kept
    until_stopped = kept[:kept.index(0)]
    assert until_stopped[0] == 4 and until_stopped == sorted(until_stopped, reverse=True), kept  # shrinks, then stops


def test_a_request_that_stopped_drafting_probes_again_and_recovers():
    lengths = DraftLengths(0.1)
    for _ in range(10):
        lengths.observe("turns", 4, 0)
    assert _next_drafts(lengths, "turns", 1) == []
    probes = [len(_next_drafts(lengths, "turns", 1)) for _ in range(16)]
    assert probes.count(2) == 2 and set(probes) == {0, 2}, probes  # a probe every PROBE_EVERY steps (2 drafts alone)
    for _ in range(24):  # the text turned into something the drafter predicts
        drafts = _next_drafts(lengths, "turns", 1)
        if drafts:
            lengths.observe("turns", len(drafts), len(drafts))
    assert _next_drafts(lengths, "turns", 1) == DRAFTS


def _one_draft_request(lengths: DraftLengths) -> None:
    """Verifications that leave ``alpha`` where exactly one draft is worth it at batch 1 (0.1 <= alpha < 0.32)."""
    for step in range(30):
        lengths.observe("mid", 4, 1 if step % 5 == 0 else 0)
    assert 0.1 <= lengths._requests["mid"].alpha < 0.1 ** 0.5


def test_a_request_running_alone_verifies_two_drafts_where_one_was_planned():
    lengths = DraftLengths(0.1)
    _one_draft_request(lengths)
    assert lengths.plan(["mid"], 4) == 2 and lengths.keep("mid", list(DRAFTS)) == DRAFTS[:2]


def test_in_a_batch_or_with_one_draft_at_most_a_single_draft_stays_single():
    lengths = DraftLengths(0.05)
    _one_draft_request(lengths)
    assert lengths.plan(["mid", "other"], 4) == 4 and lengths.keep("mid", list(DRAFTS)) == DRAFTS[:1]  # 2 * 0.05
    assert lengths.plan(["mid"], 1) == 1 and lengths.keep("mid", list(DRAFTS)) == DRAFTS[:1]  # K = 1


def test_requests_are_estimated_separately_and_finished_ones_are_dropped():
    lengths = DraftLengths(0.1)
    for _ in range(10):
        lengths.observe("good", 4, 4)
        lengths.observe("bad", 4, 0)
    assert lengths.plan(["good", "bad"], 4) == 4
    assert lengths.keep("good", list(DRAFTS)) == DRAFTS and lengths.keep("bad", list(DRAFTS)) == []
    lengths.plan(["good"], 4)  # "bad" finished
    assert lengths.plan(["good", "bad"], 4) == 4 and lengths.keep("bad", list(DRAFTS)) == DRAFTS  # a new "bad"


def test_a_step_where_no_request_wants_drafts_plans_none():
    lengths = DraftLengths(0.1)
    for _ in range(10):
        lengths.observe("a", 4, 0)
        lengths.observe("b", 4, 0)
    assert lengths.plan(["a", "b"], 4) == 0


class _Request:
    def __init__(self, request_id: str, extra_args: dict | None = None) -> None:
        self.request_id = request_id
        self.sampling_params = SimpleNamespace(extra_args=extra_args)
        self.spec_token_ids: list[int] = []
        self.is_prefill_chunk = False

    def is_finished(self) -> bool:
        return False


def _scheduler(monkeypatch, requests: dict, min_accept: float):
    """leanserve's scheduler with only what its draft hooks touch (vLLM's own parts stubbed: its
    ``schedule`` runs every request with K = 4)."""
    from vllm.v1.core.sched.scheduler import Scheduler

    from engine.plugins.speculative.opt_out import OptOutScheduler

    monkeypatch.setattr(Scheduler, "schedule", lambda self: SimpleNamespace(num_spec_tokens_to_schedule=4))
    scheduler = object.__new__(OptOutScheduler)
    scheduler.requests = requests
    scheduler.running = list(requests.values())
    scheduler.structured_output_manager = SimpleNamespace(validate_tokens=lambda request, tokens: list(tokens))
    scheduler.log_stats = False
    scheduler.draft_lengths = DraftLengths(min_accept) if min_accept else None
    return scheduler


def _step(scheduler, drafts: dict[str, list[int]]) -> tuple[int, dict[str, list[int]]]:
    """One step: schedule (the step's K), then the drafts proposed after it; returns K and the drafts kept."""
    k = scheduler.schedule().num_spec_tokens_to_schedule
    scheduler.update_draft_token_ids(SimpleNamespace(req_ids=list(drafts), draft_token_ids=list(drafts.values())))
    return k, {rid: scheduler.requests[rid].spec_token_ids for rid in drafts}


def test_the_scheduler_verifies_fewer_drafts_of_a_request_whose_drafts_are_rejected(monkeypatch):
    requests = {rid: _Request(rid) for rid in ("prose", "code")}
    requests["off"] = _Request("off", {"speculative": {"enabled": False}})
    scheduler = _scheduler(monkeypatch, requests, 0.05)
    everything = {rid: list(DRAFTS) for rid in requests}
    assert _step(scheduler, everything) == (4, {"prose": DRAFTS, "code": DRAFTS, "off": []})
    for _ in range(6):  # what vLLM's update_from_output reports after each verification
        scheduler.make_spec_decoding_stats(None, 4, 0, None, "prose")
        scheduler.make_spec_decoding_stats(None, 4, 4, None, "code")
    k, kept = _step(scheduler, everything)
    assert k == 4 and kept["code"] == DRAFTS and kept["off"] == []
    assert len(kept["prose"]) < 2 and kept["prose"] == DRAFTS[:len(kept["prose"])]


def test_a_step_in_which_no_request_wants_drafts_asks_the_drafter_for_none(monkeypatch):
    scheduler = _scheduler(monkeypatch, {rid: _Request(rid) for rid in ("a", "b")}, 0.05)
    for _ in range(12):
        scheduler.make_spec_decoding_stats(None, 4, 0, None, "a")
        scheduler.make_spec_decoding_stats(None, 4, 0, None, "b")
    assert scheduler.schedule().num_spec_tokens_to_schedule == 0  # quiet_steps.py then skips the drafter


def test_with_no_minimum_acceptance_every_draft_is_verified(monkeypatch):
    scheduler = _scheduler(monkeypatch, {"prose": _Request("prose")}, 0.0)
    for _ in range(6):
        scheduler.make_spec_decoding_stats(None, 4, 0, None, "prose")
    assert _step(scheduler, {"prose": list(DRAFTS)}) == (4, {"prose": DRAFTS})


@pytest.mark.parametrize(("alpha_accepted", "batch_size", "expected"), [
    (4, 1, 4), (4, 8, 4), (4, 19, 4),  # always accepted: worth verifying at any batch below 1 / min_accept
    (4, 20, 0),                         # 20 * 0.05 = 1: no draft can pay
    (2, 1, 4), (2, 8, 2), (2, 16, 0),   # two of four accepted (alpha 2/3): shorter as the batch grows, then none
])
def test_larger_batches_verify_fewer_drafts(alpha_accepted, batch_size, expected):
    lengths = DraftLengths(0.05)
    for _ in range(30):
        lengths.observe("r", 4, alpha_accepted)
    assert len(_next_drafts(lengths, "r", batch_size)) == expected


def test_a_new_request_drafts_fully_unless_the_batch_is_too_large_for_any_draft():
    lengths = DraftLengths(0.05)
    assert _next_drafts(lengths, "new", 8) == DRAFTS
    assert _next_drafts(lengths, "new", 20) == []

