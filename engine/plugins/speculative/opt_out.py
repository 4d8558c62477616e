"""Per-request opt-out of speculative decoding: vLLM's scheduler with one hook.

vLLM 0.32 speculates for every request of a batch; ``SamplingParams`` has no switch. The
scheduler, though, is configurable (``scheduler_cls``) and is where each step's drafts are
handed to requests (``update_draft_token_ids``). This subclass drops the drafts of requests
that asked for none (``extra_body={"speculative": {"enabled": false}}``, carried in
``SamplingParams.extra_args``), so they are scheduled one token per step and never verified.
Their drafter work (one forward for the batch) is still done; the target's verification of
their rows is not. Output is unchanged either way: speculation is lossless.
"""

from __future__ import annotations

from typing import Any

from vllm.v1.core.sched.scheduler import Scheduler


def wants_speculation(extra_args: dict[str, Any] | None) -> bool:
    """False when the request's ``speculative`` entry says ``enabled: false``."""
    options = (extra_args or {}).get("speculative") or {}
    return options.get("enabled", True) is not False


class OptOutScheduler(Scheduler):
    """vLLM's scheduler, except that requests which opted out keep no drafts."""

    def update_draft_token_ids(self, draft_token_ids: Any) -> None:
        super().update_draft_token_ids(draft_token_ids)
        for req_id in draft_token_ids.req_ids:
            request = self.requests.get(req_id)
            if request is not None and request.sampling_params is not None \
                    and not wants_speculation(request.sampling_params.extra_args):
                request.spec_token_ids = []
