"""Steps without drafts skip vLLM's speculative work (engine/plugins/speculative/quiet_steps.py).

The wrappers are checked on a stand-in runner: which of vLLM's own methods they call, and with what.
That the server's answers stay token-identical with them installed is tests/integration/test_speculative.py
(every speculative server installs them); what they save is benchmarks/spec_step_profile.py --batch 8.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from engine.plugins.speculative import quiet_steps


class Recorder:
    """Stands in for the runner method a wrapper wraps: records each call, answers ``result``."""

    def __init__(self, result: object) -> None:
        self.calls: list[tuple] = []
        self.result = result

    def __call__(self, runner, *args, **kwargs):
        self.calls.append(args)
        return self.result


def _runner(method: str) -> SimpleNamespace:
    return SimpleNamespace(speculative_config=SimpleNamespace(method=method))


def test_the_drafter_does_not_run_when_the_scheduler_wants_no_drafts():
    drafter = Recorder("drafts")
    propose = quiet_steps._skip_unwanted_drafts(drafter)
    sampled = torch.tensor([[5], [7], [9]])  # [num_reqs, 1]: an EAGLE/MTP runner's sampled tokens
    drafts = propose(_runner("eagle3"), SimpleNamespace(num_spec_tokens_to_schedule=0), sampled, "metadata")
    assert drafter.calls == []
    assert drafts.shape == (3, 0) and drafts.dtype == torch.int32
    assert propose(_runner("ngram"), SimpleNamespace(num_spec_tokens_to_schedule=0), [[5], [], [9]]) == [[], [], []]


def test_the_drafter_runs_when_drafts_are_wanted_or_the_proposer_follows_requests_itself():
    drafter = Recorder("drafts")
    propose = quiet_steps._skip_unwanted_drafts(drafter)
    assert propose(_runner("eagle3"), SimpleNamespace(num_spec_tokens_to_schedule=2), [[5]], "metadata") == "drafts"
    # suffix decoding (custom_class) tracks every request's tokens in propose: it always runs
    assert propose(_runner("custom_class"), SimpleNamespace(num_spec_tokens_to_schedule=0), [[5]]) == "drafts"
    assert len(drafter.calls) == 2 and drafter.calls[0][2] == "metadata"


def test_a_step_without_drafts_uses_the_plain_sampler():
    sample = Recorder("sampled")
    wrapped = quiet_steps._plain_sampler_without_drafts(sample)
    logits = torch.zeros(3, 8)
    wrapped(_runner("ngram"), logits, SimpleNamespace(max_spec_len=0))
    wrapped(_runner("ngram"), logits, None)
    with_drafts = SimpleNamespace(max_spec_len=2)
    wrapped(_runner("ngram"), logits, with_drafts)
    assert [call[1] for call in sample.calls] == [None, None, with_drafts]


def test_installing_twice_wraps_once():
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    before = CPUModelRunner.propose_draft_token_ids, CPUModelRunner._sample
    try:
        quiet_steps.skip_speculative_work_in_steps_without_drafts()
        once = CPUModelRunner.propose_draft_token_ids, CPUModelRunner._sample
        quiet_steps.skip_speculative_work_in_steps_without_drafts()
        assert (CPUModelRunner.propose_draft_token_ids, CPUModelRunner._sample) == once
        assert once[0] is not before[0] or getattr(before[0], quiet_steps._PATCHED, False)
    finally:
        CPUModelRunner.propose_draft_token_ids, CPUModelRunner._sample = before
