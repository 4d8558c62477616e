"""What speculative decoding reports: the series it declares and how vLLM's step stats feed them.

vLLM sums spec-decode counts per scheduler step in ``SchedulerStats.spec_decoding_stats``
(num_drafts, num_draft_tokens, num_accepted_tokens, num_accepted_tokens_per_pos); reading
them there is the documented way, without scraping vLLM's own ``vllm:spec_decode_*`` series.
The same stats carry the number of running requests, which gives how many of the requests a step ran
had no drafts verified: speculation turning itself off under load (``--speculative-max-batch``, the
acceptance rule of draft_length.py), a drafter with nothing to propose, or a request's opt-out.
"""

from __future__ import annotations

from typing import Any

from engine.protocol import MetricSpec, MetricUpdate

DRAFTS = "leanserve_spec_decode_drafts"
DRAFT_TOKENS = "leanserve_spec_decode_draft_tokens"
ACCEPTED_TOKENS = "leanserve_spec_decode_accepted_tokens"
ACCEPTED_BY_POSITION = "leanserve_spec_decode_accepted_tokens_by_position"
ACCEPTANCE_RATE = "leanserve_spec_decode_acceptance_rate"
MEAN_ACCEPTED_LENGTH = "leanserve_spec_decode_mean_accepted_length"
BY_ACCEPTED_LENGTH = "leanserve_spec_decode_drafts_by_accepted_length"
REQUEST_STEPS = "leanserve_spec_decode_request_steps"

METRICS = (
    MetricSpec(DRAFTS, "counter", "Target steps of a request that verified draft tokens (speculative decoding).",
               ("method",)),
    MetricSpec(DRAFT_TOKENS, "counter", "Draft tokens proposed for verification.", ("method",)),
    MetricSpec(ACCEPTED_TOKENS, "counter",
               "Draft tokens the target accepted: each one is a target forward pass saved.", ("method",)),
    MetricSpec(ACCEPTED_BY_POSITION, "counter", "Accepted draft tokens by position in the draft (0 = first).",
               ("method", "position")),
    MetricSpec(BY_ACCEPTED_LENGTH, "counter",
               "Target steps with drafts, by how many drafts the target accepted (the accepted-length histogram).",
               ("method", "accepted")),
    MetricSpec(REQUEST_STEPS, "counter",
               "Requests run by engine steps, by whether drafts of theirs were verified (drafted=true) or not "
               "(drafted=false: no drafts wanted at that batch size or acceptance, none proposed, opted out, prefill).",
               ("method", "drafted")),
    MetricSpec(ACCEPTANCE_RATE, "gauge", "Accepted / proposed draft tokens since start (use the counters for windows).",
               ("method",)),
    MetricSpec(MEAN_ACCEPTED_LENGTH, "gauge",
               "Tokens emitted per target step with drafts since start: 1 + accepted / drafts.", ("method",)),
)


class SpeculationObserver:
    """Turns each engine step's spec-decode counts into metric updates; keeps the totals
    the two since-start gauges need (one observer per engine). ``draft_tokens`` is K, the
    longest draft: the positions and accepted lengths whose series exist from the start."""

    def __init__(self, method: str, draft_tokens: int) -> None:
        self._method = (method,)
        self._draft_tokens = draft_tokens
        self._drafts = self._proposed = self._accepted = 0

    def __call__(self, scheduler_stats: Any) -> list[MetricUpdate]:
        if scheduler_stats is None:
            return self._series_at_zero()
        stats = getattr(scheduler_stats, "spec_decoding_stats", None)
        updates = self._request_steps(scheduler_stats.num_running_reqs, stats.num_drafts if stats is not None else 0)
        if stats is None or stats.num_drafts == 0:
            return updates
        self._drafts += stats.num_drafts
        self._proposed += stats.num_draft_tokens
        self._accepted += stats.num_accepted_tokens
        method = self._method
        updates += [
            MetricUpdate(DRAFTS, stats.num_drafts, method),
            MetricUpdate(DRAFT_TOKENS, stats.num_draft_tokens, method),
            MetricUpdate(ACCEPTED_TOKENS, stats.num_accepted_tokens, method),
        ]
        updates += [
            MetricUpdate(ACCEPTED_BY_POSITION, accepted, (*method, str(position)))
            for position, accepted in enumerate(stats.num_accepted_tokens_per_pos) if accepted
        ]
        updates += [MetricUpdate(BY_ACCEPTED_LENGTH, count, (*method, str(length)))
                    for length, count in enumerate(accepted_length_counts(stats.num_drafts,
                                                                          stats.num_accepted_tokens_per_pos)) if count]
        updates.append(MetricUpdate(ACCEPTANCE_RATE, self._accepted / self._proposed if self._proposed else 0.0, method))
        updates.append(MetricUpdate(MEAN_ACCEPTED_LENGTH, 1.0 + self._accepted / self._drafts, method))
        return updates

    def _series_at_zero(self) -> list[MetricUpdate]:
        """Every counter series the observer can move, grown by 0 so that it exists before traffic.

        A series born mid-window has only an approximate ``rate()`` (Prometheus extrapolates each
        series from its own first sample), so the panels' ratios of a position born with the first
        long draft to the drafts counter could exceed 1; vLLM creates its per-position series at zero for
        the same reason."""
        method = self._method
        updates = [MetricUpdate(name, 0, method) for name in (DRAFTS, DRAFT_TOKENS, ACCEPTED_TOKENS)]
        updates += [MetricUpdate(ACCEPTED_BY_POSITION, 0, (*method, str(position)))
                    for position in range(self._draft_tokens)]
        updates += [MetricUpdate(BY_ACCEPTED_LENGTH, 0, (*method, str(length)))
                    for length in range(self._draft_tokens + 1)]
        updates += [MetricUpdate(REQUEST_STEPS, 0, (*method, drafted)) for drafted in ("true", "false")]
        return updates

    def _request_steps(self, running: int, drafted: int) -> list[MetricUpdate]:
        """The step's requests with and without verified drafts.

        ``running`` is counted when the step's output has been processed: requests that finished in it
        are no longer there, so the drafted count can exceed it by those (clipped at 0 without drafts);
        over an answer of a hundred tokens that is under 1% of its steps.
        """
        updates = [MetricUpdate(REQUEST_STEPS, drafted, (*self._method, "true"))] if drafted else []
        if running > drafted:
            updates.append(MetricUpdate(REQUEST_STEPS, running - drafted, (*self._method, "false")))
        return updates


def accepted_length_counts(drafts: int, accepted_per_position: list[int]) -> list[int]:
    """How many drafts had 0, 1, ..., K tokens accepted.

    Acceptance stops at the first rejected draft, so ``accepted_per_position[j]`` counts the
    drafts with at least j+1 accepted; the histogram is the difference of neighbours.
    """
    at_least = [drafts, *accepted_per_position, 0]
    return [at_least[j] - at_least[j + 1] for j in range(len(at_least) - 1)]


def request_usage(per_choice: list[Any]) -> dict[str, int]:
    """A finished request's ``usage["speculative"]`` from vLLM's per-choice ``RequestSpecDecodeMetrics``.

    ``histogram[j]`` counts the verifications in which ``j`` drafts were accepted, so their sum is the target
    steps that verified drafts and ``sum(j * histogram[j])`` the accepted tokens: target forward passes saved.
    A choice without metrics (none reported) counts zero. vLLM attaches a choice's metrics to the output in
    which that choice finishes; the plugin sees the request's last output, so with ``n > 1`` a choice that
    finished earlier is missing (FinishedRequest would have to gather them across outputs).
    """
    verified = accepted = drafted = 0
    for metrics in per_choice:
        if metrics is None:
            continue
        verified += sum(metrics.histogram)
        accepted += sum(j * count for j, count in enumerate(metrics.histogram))
        drafted += metrics.num_draft_tokens
    return {"draft_tokens": drafted, "accepted_tokens": accepted, "steps_with_drafts": verified}
