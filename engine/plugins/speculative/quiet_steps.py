"""Steps that draft nothing skip vLLM's speculative work, so a draft-length schedule costs (almost) nothing.

Speculation must never make a busy server slower (issue 16: at concurrency 8 and 16, no method
below 0.98x of no speculation). The way to that is drafting nothing in large batches (vLLM's
``num_speculative_tokens_per_batch_size``, ``--speculative-max-batch``), where a verification step
costs more than the drafts it saves. But vLLM 0.32 keeps an engine with a speculative config on
its speculative path in every step, drafts or not. Measured at batch 8 on this CPU
(``python -m benchmarks.spec_step_profile --batch 8``, "drafts off" rows, RESULTS.md):

- the drafter still runs when the step's draft length is 0: ``propose_draft_token_ids``
  (gpu_model_runner.py:4748) hands ``num_speculative_tokens=0`` to an EAGLE/MTP proposer, which
  still runs its whole forward (llm_base_proposer.py:512): 2.9 ms of a ~38 ms step; ngram still
  searches every request (0.17 ms);
- a step in which no request carries drafts is still sampled by the rejection sampler
  (``_sample``, gpu_model_runner.py:3437) instead of the plain sampler: 0.46 ms against 0.12.

Two wrappers on the CPU model runner remove both:

- ``propose_draft_token_ids`` returns no drafts, without running the drafter, when the scheduler
  already decided that the drafts of this step are not wanted (``num_spec_tokens_to_schedule`` is
  0: vLLM would truncate them to nothing). Not for ``custom_class`` proposers: suffix decoding
  follows every request's tokens in ``propose`` and reads the schedule itself.
- ``_sample`` uses the plain sampler when no request of the step has drafts. With zero drafts the
  rejection sampler only samples each request's bonus token from the target's distribution, which
  is what the plain sampler does, with the same sampling parameters and generators.

Lossless either way: verification is unchanged wherever there is a draft. The cost is that an
EAGLE drafter skipped for a while has no KV entries for those positions, so its first drafts after a
large batch shrinks may be accepted less often.
"""

from __future__ import annotations

import functools
from typing import Any

_PATCHED = "_leanserve_quiet_steps"


def skip_speculative_work_in_steps_without_drafts() -> None:
    """Wrap the CPU model runner's drafter call and sampler (idempotent; nothing on other platforms)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    if getattr(CPUModelRunner.propose_draft_token_ids, _PATCHED, False):
        return
    CPUModelRunner.propose_draft_token_ids = _skip_unwanted_drafts(CPUModelRunner.propose_draft_token_ids)
    CPUModelRunner._sample = _plain_sampler_without_drafts(CPUModelRunner._sample)


def no_drafts(sampled_token_ids: Any) -> Any:
    """What ``propose_draft_token_ids`` returns for "no drafts" in the form the runner expects.

    Lists for the CPU-token proposers (ngram): one empty draft per row; a ``[num_reqs, 0]`` tensor
    for the model proposers (EAGLE, MTP, draft model), whose ``sampled_token_ids`` is a tensor.
    """
    import torch

    if isinstance(sampled_token_ids, torch.Tensor):
        # [num_reqs, 0]
        return torch.zeros((sampled_token_ids.shape[0], 0), dtype=torch.int32, device=sampled_token_ids.device)
    return [[] for _ in sampled_token_ids]


def _skip_unwanted_drafts(original):
    @functools.wraps(original)
    def propose_draft_token_ids(self, scheduler_output, sampled_token_ids, *args, **kwargs):
        if scheduler_output.num_spec_tokens_to_schedule == 0 and self.speculative_config.method != "custom_class":
            return no_drafts(sampled_token_ids)
        return original(self, scheduler_output, sampled_token_ids, *args, **kwargs)

    setattr(propose_draft_token_ids, _PATCHED, True)
    return propose_draft_token_ids


def _plain_sampler_without_drafts(original):
    @functools.wraps(original)
    def _sample(self, logits, spec_decode_metadata):
        if spec_decode_metadata is not None and spec_decode_metadata.max_spec_len == 0:
            spec_decode_metadata = None  # no request has drafts: one token each, as without speculation
        return original(self, logits, spec_decode_metadata)

    return _sample
