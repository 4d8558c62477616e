"""Per-request draft length from recent acceptance: drafts that will likely be rejected are not verified.

Every draft token costs the target one more row in the next verification forward; it pays only when
it is accepted. Where a request's drafts keep being rejected (chat, prose, a code block unlike its
prompt), verifying them is pure cost, and on a CPU under load it is what makes speculation slower
than none (RESULTS.md, issue 16). SpecDec++ (Huang et al., 2024, "SpecDec++: Boosting Speculative
Decoding via Adaptive Candidate Lengths") stops drafting where the probability that all drafts so
far are accepted falls below a threshold, and learns that probability with a head on the drafter. Here it is estimated per request from
its own recent verifications, which needs nothing from the drafter and works for every method:

- Acceptance is modelled as geometric: each draft token is accepted with probability ``alpha``
  given that the ones before it were. A verification with ``d`` drafts of which ``a`` were accepted
  is ``a`` successes and, when ``a < d``, one failure; ``alpha`` is successes / trials.
- Counts decay by ``DECAY`` every time the request is verified, so the estimate follows the text
  (about the last 8 verifications weigh in); they start from a prior worth ``PRIOR_TRIALS`` trials
  at ``PRIOR_ALPHA``, so a new request drafts fully until its own evidence says otherwise.
- The request drafts the longest ``L <= K`` with ``alpha ** L >= threshold``: the ``L``-th draft is
  kept only while the chance that it is reached and accepted is at least the threshold.
- The threshold is ``min_accept`` times the number of requests the next step runs. A verification
  row's cost is about fixed, but what it must beat grows with the batch: alone, a request's step
  yields one token for the whole forward, while in a batch of B it yields about B tokens, so a row
  that wins ``alpha ** L`` tokens is worth less in proportion (measured on this CPU, RESULTS.md
  "Side by side": the learned drafter gains 1.33x alone and loses 13-21% at 16 requests). At
  ``B * min_accept >= 1`` nothing is drafted.
- A request whose ``alpha`` falls below the threshold drafts nothing, except one draft every
  ``PROBE_EVERY`` steps: a probe that is accepted raises ``alpha`` again, so a request whose text
  turns predictable (a code block after prose) is back to full drafts within a few probes.
- A request running alone never verifies exactly one draft: where it would (an ``alpha`` between the
  threshold and its square root, or a probe) it verifies two. The drafter has run by then, so the
  second draft costs only its row, and on this CPU a verification of two rows is the slowest there
  is: oneDNN's 2-row GEMMs cost more than 1 or 3 rows (RESULTS.md, "one draft is the worst draft":
  a one-draft step costs 1.12x a plain step for SmolLM2-135M and 1.15-1.20x for Qwen2.5-Coder-1.5B
  through the server, a two-draft step 0.9-1.0x). With the rule the default model's learned drafter
  served chat 6.3% faster (RESULTS.md, session 37). In a batch the rows are many already and the
  rule does not apply.

Lossless: only drafts are removed, and verification is unchanged for the ones kept.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

PRIOR_ALPHA = 0.7
PRIOR_TRIALS = 2.0
DECAY = 0.88  # per verification: ~8 verifications of memory
PROBE_EVERY = 8  # steps without drafts before one probe draft
FEWEST_DRAFTS_ALONE = 2  # a lone request verifies 0 or at least this many drafts (never a 2-row step)


@dataclass
class Acceptance:
    """Decayed counts of one request's verified drafts: accepted tokens and trials."""

    accepted: float = PRIOR_ALPHA * PRIOR_TRIALS
    trials: float = PRIOR_TRIALS
    steps_without_drafts: int = 0

    @property
    def alpha(self) -> float:
        return self.accepted / self.trials

    def observe(self, num_drafts: int, num_accepted: int) -> None:
        """One verification: ``num_accepted`` of ``num_drafts`` drafts survived (a prefix of them)."""
        self.accepted = DECAY * self.accepted + num_accepted
        self.trials = DECAY * self.trials + num_accepted + (1 if num_accepted < num_drafts else 0)


def draft_length(alpha: float, max_drafts: int, min_accept: float) -> int:
    """The longest ``L <= max_drafts`` whose last draft is reached and accepted with chance ``>= min_accept``."""
    length, reach = 0, 1.0
    while length < max_drafts:
        reach *= alpha
        if reach < min_accept:
            break
        length += 1
    return length


def _never_one_draft(length: int, max_drafts: int) -> int:
    """A lone request's planned length with 1 raised to ``FEWEST_DRAFTS_ALONE`` (as far as ``max_drafts`` allows)."""
    return min(FEWEST_DRAFTS_ALONE, max_drafts) if length == 1 else length


class DraftLengths:
    """The scheduler's per-step questions: how many drafts each running request should get next.

    ``plan`` runs once per step, when the scheduler has chosen the step's requests: it fixes each
    request's draft length for the drafts proposed after this step (verified in the next one) and
    returns the longest; when that is 0 the step's K (vLLM's ``num_spec_tokens_to_schedule``) becomes 0,
    so a step in which no request wants drafts runs no drafter at all (quiet_steps.py). ``keep`` then cuts
    each request's proposed drafts to its planned length.
    """

    def __init__(self, min_accept: float) -> None:
        self.min_accept = min_accept
        self._requests: dict[str, Acceptance] = {}
        self._planned: dict[str, int] = {}

    def observe(self, request_id: str, num_drafts: int, num_accepted: int) -> None:
        self._requests.setdefault(request_id, Acceptance()).observe(num_drafts, num_accepted)

    def threshold(self, batch_size: int) -> float:
        """The chance of being reached and accepted a draft needs, in a step of ``batch_size`` requests."""
        return self.min_accept * max(batch_size, 1)

    def plan(self, request_ids: Collection[str], max_drafts: int) -> int:
        """Each running request's draft length for the next step; returns the longest (the step's K).

        A request with no verification yet gets ``max_drafts`` while drafting can pay at this batch
        size at all. Estimates of requests no longer running are dropped."""
        threshold = self.threshold(len(request_ids))
        self._requests = {rid: self._requests[rid] for rid in request_ids if rid in self._requests}
        self._planned = {rid: self._length(rid, max_drafts, threshold) for rid in request_ids}
        if len(self._planned) == 1:
            self._planned = {rid: _never_one_draft(length, max_drafts) for rid, length in self._planned.items()}
        return max(self._planned.values(), default=0)

    def keep(self, request_id: str, drafts: list[int]) -> list[int]:
        """The prefix of ``drafts`` planned for ``request_id`` (all of them if it was not planned)."""
        return drafts[:self._planned.get(request_id, len(drafts))]

    def _length(self, request_id: str, max_drafts: int, threshold: float) -> int:
        if threshold >= 1.0:
            return 0
        acceptance = self._requests.get(request_id)
        if acceptance is None:
            return max_drafts
        length = draft_length(acceptance.alpha, max_drafts, threshold)
        if length == 0:
            acceptance.steps_without_drafts += 1
            if acceptance.steps_without_drafts >= PROBE_EVERY:
                acceptance.steps_without_drafts, length = 0, 1
        return length
