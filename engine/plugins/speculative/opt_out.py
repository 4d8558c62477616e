"""vLLM's scheduler with leanserve's two per-request draft rules: the opt-out and the draft length.

vLLM 0.32 speculates for every request of a batch, with the same K; ``SamplingParams`` has no switch.
The scheduler, though, is configurable (``scheduler_cls``) and is where each step's drafts are handed
to requests (``update_draft_token_ids``) and where each verification's outcome is counted
(``make_spec_decoding_stats``). This subclass

- drops the drafts of requests that asked for none (``extra_body={"speculative": {"enabled": false}}``,
  carried in ``SamplingParams.extra_args``), so they are scheduled one token per step and never verified;
- keeps, of every other request's drafts, only the prefix that its recent acceptance and the batch
  size make worth verifying (draft_length.py; ``--speculative-min-acceptance``, by default for the
  drafter methods only; not for suffix decoding, which already drafts by confidence).

Their drafter work (one forward for the batch) is still done; the target's verification of the
dropped rows is not. Output is unchanged either way: speculation is lossless.
"""

from __future__ import annotations

from typing import Any

from vllm.v1.core.sched.scheduler import Scheduler

from engine.plugins.speculative.config import DEFAULT_MIN_ACCEPTANCE
from engine.plugins.speculative.draft_length import DraftLengths

# Methods that draft by their own confidence: their draft length is theirs.
SELF_PACED = ("custom_class",)


def wants_speculation(extra_args: dict[str, Any] | None) -> bool:
    """False when the request's ``speculative`` entry says ``enabled: false``."""
    options = (extra_args or {}).get("speculative") or {}
    return options.get("enabled", True) is not False


def _min_acceptance() -> float:
    """``--speculative-min-acceptance`` as handed to this vLLM process (engine/registry.py), or the method's default."""
    from engine.registry import handed_over

    for item in handed_over():
        if item.plugin.name == "speculative" and item.settings.speculative is not None:
            chosen = item.settings.speculative_min_acceptance
            return DEFAULT_MIN_ACCEPTANCE[item.settings.speculative.method] if chosen is None else chosen
    return 0.0


class OptOutScheduler(Scheduler):
    """vLLM's scheduler, except that opted-out requests keep no drafts and the others keep those worth verifying."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        spec = self.vllm_config.speculative_config
        min_accept = _min_acceptance()
        self.draft_lengths = (DraftLengths(min_accept) if spec is not None and min_accept > 0
                              and spec.method not in SELF_PACED else None)

    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        output = super().schedule(*args, **kwargs)
        if self.draft_lengths is not None and output.num_spec_tokens_to_schedule > 0:
            # All or nothing for the step: a parallel drafter (EAGLE-3 parallel_drafting) computes its K
            # slots in one forward whatever K is, and vLLM 0.32 reshapes its output by the step's K, so a
            # smaller K would be wrong there; keep() shortens each request's drafts instead.
            if self.draft_lengths.plan([request.request_id for request in self.running],
                                       output.num_spec_tokens_to_schedule) == 0:
                output.num_spec_tokens_to_schedule = 0
        return output

    def update_draft_token_ids(self, draft_token_ids: Any) -> None:
        super().update_draft_token_ids(draft_token_ids)
        for req_id in draft_token_ids.req_ids:
            request = self.requests.get(req_id)
            if request is None or request.sampling_params is None:
                continue
            if not wants_speculation(request.sampling_params.extra_args):
                request.spec_token_ids = []
            elif self.draft_lengths is not None:
                request.spec_token_ids = self.draft_lengths.keep(req_id, request.spec_token_ids)

    def make_spec_decoding_stats(self, spec_decoding_stats: Any, num_draft_tokens: int, num_accepted_tokens: int,
                                 num_invalid_spec_tokens: dict[str, int] | None, request_id: str) -> Any:
        if self.draft_lengths is not None and num_draft_tokens:
            self.draft_lengths.observe(request_id, num_draft_tokens, num_accepted_tokens)
        return super().make_spec_decoding_stats(spec_decoding_stats, num_draft_tokens, num_accepted_tokens,
                                                num_invalid_spec_tokens, request_id)
