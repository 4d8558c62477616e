"""Suffix decoding (Oliaro et al., "SuffixDecoding", 2024) as a vLLM ``custom_class`` proposer.

Drafts come from text the engine has already seen: the longest suffix of a
request's sequence that also occurs earlier, in its own prompt and output or in
the outputs of recent requests, proposes the tokens that followed it there. No
draft model runs, so it costs only CPU time in the engine's step loop, and it
pays off where outputs repeat their inputs or each other (code edits, agents,
lists, templated answers). The target model verifies every draft, so drafts
change speed, never output.

Enable with ``speculative_config={"method": "custom_class", "model":
"engine.plugins.speculative.suffix.SuffixProposer", "num_speculative_tokens": K}``.
vLLM builds the class from its config alone, so the knobs (``SuffixParams``,
``--speculative suffix:KEY=VALUE,...``) travel in the speculative config's fields
for vLLM's own suffix method (``SuffixParams.as_speculative_config``).

vLLM 0.32 gives a custom proposer only the persistent batch's rows, no request
ids, so requests are followed by content: a row whose tokens no longer extend
what was last seen there holds another request (or its request moved row), and
a request that left the batch has its output archived for the others.

Drafts are ragged, 0..K tokens per row. vLLM allows that for ``custom_class``:
it refuses asynchronous scheduling for this method, and the synchronous
scheduler stores each row's list as is (``Scheduler.update_draft_token_ids``)
and verifies per-request draft counts, as for its own ngram and suffix methods.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING

import numpy as np

from engine.plugins.speculative.suffix_index import OutputArchive, RequestIndex, SuffixParams, speculate

if TYPE_CHECKING:
    from vllm.config import VllmConfig

logger = logging.getLogger(__name__)

# Requests that left the batch, kept so one that comes back (preempted, or skipped a step) resumes its index.
_DETACHED = 64

__all__ = ["SuffixParams", "SuffixProposer"]


def _k_by_batch(vllm_config: VllmConfig) -> list[int] | None:
    """Draft length by batch size (index = requests in the step) from the config's
    ``num_speculative_tokens_per_batch_size``, which vLLM applies to its own proposers only."""
    schedule = getattr(vllm_config.speculative_config, "num_speculative_tokens_per_batch_size", None)
    if not schedule:
        return None
    from vllm.v1.spec_decode.dynamic.utils import build_dynamic_sd_schedule_lookup

    return build_dynamic_sd_schedule_lookup(schedule, vllm_config.scheduler_config.max_num_seqs,
                                            vllm_config.speculative_config.num_speculative_tokens)


class SuffixProposer:
    """Drafts for every row of vLLM's batch from the request's own tokens and recent outputs."""

    def __init__(self, vllm_config: VllmConfig, params: SuffixParams | None = None) -> None:
        self.k = vllm_config.speculative_config.num_speculative_tokens
        self.k_by_batch = _k_by_batch(vllm_config)
        self.max_model_len = vllm_config.model_config.max_model_len
        self.params = params or SuffixParams.from_speculative_config(vllm_config.speculative_config)
        logger.info("suffix decoding: up to %d drafts, %s", self.k, self.params)
        self._failed = False
        self._reset()

    def _reset(self) -> None:
        self._rows: dict[int, RequestIndex] = {}
        self._detached: deque[RequestIndex] = deque(maxlen=_DETACHED)
        self._archive = OutputArchive(self.params)

    def load_model(self, *args: object, **kwargs: object) -> None:
        """Nothing to load; vLLM's model runner calls this on its drafter after loading the target."""

    def propose(
        self,
        sampled_token_ids: list[list[int]],
        num_tokens_no_spec: np.ndarray,
        token_ids_cpu: np.ndarray,
        slot_mappings: object = None,
    ) -> list[list[int]]:
        """One draft of 0..K tokens per batch row; [] for rows still in prefill (nothing sampled).

        Never raises: a failure would kill the engine, while a missing draft only costs
        speed, so on error the state is dropped and this step proposes nothing.
        """
        try:
            live = {i: int(num_tokens_no_spec[i]) for i, sampled in enumerate(sampled_token_ids) if sampled}
            self._track(live, sampled_token_ids, token_ids_cpu)  # even when not drafting: requests stay followed
            k = self.k_by_batch[min(len(sampled_token_ids), len(self.k_by_batch) - 1)] if self.k_by_batch else self.k
            requests = len(sampled_token_ids)
            return [
                self._draft(self._rows[i], min(k, self.max_model_len - live[i] - 1), requests) if i in live else []
                for i in range(requests)
            ]
        except Exception:
            if not self._failed:
                logger.exception("suffix proposer failed; dropping its state, no drafts this step")
            self._failed = True
            self._reset()
            return [[] for _ in sampled_token_ids]

    def _track(self, live: dict[int, int], sampled_token_ids: list[list[int]], token_ids_cpu: np.ndarray) -> None:
        """Match each live row to its request: the one seen there before, else one that moved or came back."""
        rows: dict[int, RequestIndex] = {}
        changed = []
        for i, n in live.items():
            request = self._rows.get(i)
            if request is not None and request.extend(token_ids_cpu[i, :n]):
                rows[i] = request
            else:
                changed.append(i)
        claimed = {id(r) for r in rows.values()}
        if changed:
            spare = [r for r in self._rows.values() if id(r) not in claimed] + list(self._detached)
            for i in changed:
                row = token_ids_cpu[i, : live[i]]
                request = next((r for r in spare if r.extend(row)), None)
                if request is None:
                    request = RequestIndex(row, len(row) - len(sampled_token_ids[i]), self.params.anchor_width)
                else:
                    spare.remove(request)
                rows[i] = request
            claimed = {id(r) for r in rows.values()}
            self._detached = deque((r for r in self._detached if id(r) not in claimed), maxlen=_DETACHED)
        for request in self._rows.values():
            if id(request) not in claimed:
                self._detach(request)
        self._rows = rows

    def _detach(self, request: RequestIndex) -> None:
        """Archive the output a request added since it was last archived, with its left context."""
        start = max(request.archived - self.params.max_depth, 0)
        self._archive.add(request.tokens[start : request.n], request.archived - start)
        request.archived = request.n
        self._detached.append(request)

    def _draft(self, request: RequestIndex, max_tokens: int, requests: int) -> list[int]:
        """The request's best draft in a step of ``requests`` (its estimated probabilities: ``benchmarks/suffix_replay.py``)."""
        return self._best_draft(request, max_tokens, requests)[0]

    def _best_draft(self, request: RequestIndex, max_tokens: int, requests: int) -> tuple[list[int], list[float]]:
        """The better-scoring draft of the request's own tokens and the archive's (own wins ties), and
        each token's estimated acceptance probability."""
        if max_tokens <= 0 or request.last_key is None:
            return [], []
        back = min(self.params.max_depth, request.n)
        pattern = request.tokens[request.n - back : request.n][::-1]
        best_score, best, best_probs = 0.0, [], []
        for before, after in (
            request.occurrences(back, max_tokens),
            self._archive.occurrences(int(request.last_key), back, max_tokens),
        ):
            if len(before):
                score, draft, probs = speculate(pattern, before, after, max_tokens, self.params, best_score, requests)
                if draft:
                    best_score, best, best_probs = score, draft, probs
        return best, best_probs
