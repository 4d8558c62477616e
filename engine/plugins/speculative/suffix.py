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
vLLM builds the class from its config alone, so it runs on ``SuffixParams()``;
other knobs need a subclass that passes its own.

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

import bisect
import logging
from array import array
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from vllm.config import VllmConfig

logger = logging.getLogger(__name__)

# Most recent occurrences of the anchor n-gram examined per lookup: bounds the cost of frequent n-grams.
_MAX_CANDIDATES = 256
# Requests that left the batch, kept so one that comes back (preempted, or skipped a step) resumes its index.
_DETACHED = 64
_ENDED = -1  # before the start of a text, or after its end (a separator in the archive)
_UNKNOWN = -2  # after the end of the request's text so far: not generated yet
_HASH_MUL = np.uint64(0x100000001B3)


@dataclass(frozen=True)
class SuffixParams:
    """Knobs of suffix decoding; the defaults are the paper's and vLLM's built-in suffix method's."""

    max_depth: int = 24  # longest suffix matched
    min_match: int = 2  # shortest suffix matched; also the n-gram that anchors the index
    max_spec_factor: float = 1.0  # a draft has at most ceil(factor * match length) tokens
    min_token_prob: float = 0.1  # stop extending once the draft's estimated probability drops below this
    max_cached_requests: int = 1000  # finished requests whose outputs are kept for the others
    max_cached_tokens: int = 1 << 20  # and at most this many tokens of them (4 MiB)

    def __post_init__(self) -> None:
        if not 1 <= self.min_match <= self.max_depth:
            raise ValueError(f"need 1 <= min_match <= max_depth, got {self.min_match}, {self.max_depth}")


def _anchor_keys(tokens: np.ndarray, width: int) -> np.ndarray:
    """Hash of each ``width``-gram of ``tokens``; entry j is the n-gram ending before position j + width.

    A collision only adds a candidate that the exact match check then drops.
    """
    count = max(len(tokens) - width + 1, 0)
    keys = np.zeros(count, np.uint64)
    for j in range(width):
        keys = keys * _HASH_MUL + tokens[j : j + count].astype(np.uint64)
    return keys


def _windows(
    buf: np.ndarray, ends: np.ndarray, live: tuple[int, int], back: int, ahead: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``back`` tokens before (nearest first) and ``ahead`` after each of ``ends`` in ``buf``.

    Positions are taken modulo ``len(buf)`` (a ring); those before ``live`` read as ended,
    those after it as unknown.
    """
    idx = ends[:, None] + np.arange(-back, ahead)
    tokens = np.where(idx < live[0], _ENDED, np.where(idx < live[1], buf[idx % len(buf)], _UNKNOWN))
    return tokens[:, back - 1 :: -1], tokens[:, back:]


class _Request:
    """One request's tokens and an index from anchor n-gram to the positions just after it.

    The sequence first seen is indexed in one vectorised pass (sorted hashes, searched by
    bisection), later tokens a step at a time in a dict, so no step rescans the sequence.
    """

    def __init__(self, tokens: np.ndarray, archived: int, width: int) -> None:
        self.width = width
        self.n = len(tokens)
        self.tokens = np.empty(max(2 * self.n, 64), np.int32)
        self.tokens[: self.n] = tokens
        self.archived = archived  # tokens before this are prompt or already in the archive
        keys = _anchor_keys(tokens, width)
        order = np.argsort(keys, kind="stable")
        self._first_keys, self._first_ends = keys[order], order + width
        self._later: dict[int, list[int]] = {}
        self.last_key = keys[-1] if len(keys) else None

    def extend(self, row: np.ndarray) -> bool:
        """Take on the new tokens of ``row`` if it continues this request; False (and no change) if not."""
        old, n = self.n, len(row)
        if n < old or row[old - 1] != self.tokens[old - 1] or not np.array_equal(row[:old], self.tokens[:old]):
            return False
        if n > old:
            if n > len(self.tokens):
                self.tokens = np.concatenate([self.tokens[:old], np.empty(n, np.int32)])
            self.tokens[old:n] = row[old:]
            start = max(old + 1 - self.width, 0)
            keys = _anchor_keys(self.tokens[start:n], self.width)
            for end, key in enumerate(keys.tolist(), start + self.width):
                self._later.setdefault(key, []).append(end)
            self.n = n
            self.last_key = keys[-1] if len(keys) else self.last_key
        return True

    def occurrences(self, back: int, ahead: int) -> tuple[np.ndarray, np.ndarray]:
        """Context windows (see ``_windows``) of the earlier occurrences of the current anchor n-gram."""
        key = self.last_key
        lo, hi = self._first_keys.searchsorted(key, "left"), self._first_keys.searchsorted(key, "right")
        ends = np.concatenate([self._first_ends[lo:hi], self._later.get(int(key), [])])
        ends = ends[ends < self.n][-_MAX_CANDIDATES:].astype(np.int64)
        return _windows(self.tokens, ends, (0, self.n), back, ahead)


class _Archive:
    """Recent requests' outputs in a ring buffer, indexed by anchor n-gram like ``_Request``.

    The oldest go first once more than ``max_cached_requests`` or ``max_cached_tokens`` are held.
    """

    def __init__(self, params: SuffixParams) -> None:
        self._width = params.min_match
        self._max_requests = params.max_cached_requests
        self._buf = np.full(params.max_cached_tokens, _ENDED, np.int32)
        self._head = 0  # absolute position of the next write; its slot is head % len(buf)
        self._spans: deque[tuple[int, int]] = deque()  # absolute [start, end) of each stored request
        self._index: dict[int, array] = {}  # anchor hash -> absolute end positions, ascending

    def add(self, tokens: np.ndarray, context: int) -> None:
        """Store ``tokens`` and a separator; the first ``context`` only give left context to matches."""
        excess = len(tokens) + 1 - len(self._buf)
        if excess > 0:
            tokens, context = tokens[excess:], max(context - excess, 0)
        first = max(context + 1, self._width)  # first indexed end; the last token has nothing after it
        if first >= len(tokens):
            return
        size = len(tokens) + 1
        while self._spans and (
            len(self._spans) >= self._max_requests or self._head + size - self._spans[0][0] > len(self._buf)
        ):
            self._evict()
        self._buf[np.arange(self._head, self._head + size) % len(self._buf)] = np.append(tokens, _ENDED)
        keys = _anchor_keys(tokens[first - self._width : len(tokens) - 1], self._width)
        for end, key in enumerate(keys.tolist(), self._head + first):
            positions = self._index.get(key)
            if positions is None:
                self._index[key] = array("q", (end,))
            else:
                positions.append(end)
        self._spans.append((self._head, self._head + size))
        self._head += size

    def _evict(self) -> None:
        """Drop the oldest request: every position before its end is stale, and leads its key's list."""
        start, end = self._spans.popleft()
        tokens = self._buf[np.arange(start, end - 1) % len(self._buf)]
        for key in set(_anchor_keys(tokens, self._width).tolist()):
            positions = self._index.get(key)
            if positions is not None:
                del positions[: bisect.bisect_left(positions, end)]
                if not positions:
                    del self._index[key]

    def occurrences(self, key: int, back: int, ahead: int) -> tuple[np.ndarray, np.ndarray]:
        """Context windows (see ``_windows``) of the most recent stored occurrences of anchor ``key``."""
        positions = self._index.get(key)
        ends = np.frombuffer(positions, np.int64)[-_MAX_CANDIDATES:].copy() if positions else np.empty(0, np.int64)
        live = (self._spans[0][0] if self._spans else self._head, self._head)
        return _windows(self._buf, ends, live, back, ahead)


def _greedy_path(after: np.ndarray, min_prob: float) -> tuple[float, list[int]]:
    """Follow the most frequent continuation of the occurrences (ties: the most recent one).

    A token's probability is the share of occurrences still on the path that continue
    with it, multiplied along the path; the score is the expected number of accepted
    tokens, the sum of those probabilities. An occurrence whose text ended counts against
    every continuation; one that runs into the request's own present has no say.
    """
    score, prob, path = 0.0, 1.0, []
    for depth in range(after.shape[1]):
        known = after[:, depth] != _UNKNOWN
        if not known.all():
            after = after[known]
        column = after[:, depth]
        tokens = column[column != _ENDED]
        if not len(tokens):
            break
        if (tokens == tokens[0]).all():
            token, count = int(tokens[0]), len(tokens)
        else:
            _, inverse, counts = np.unique(tokens, return_inverse=True, return_counts=True)
            freq = counts[inverse]
            pick = len(freq) - 1 - int(freq[::-1].argmax())
            token, count = int(tokens[pick]), int(freq[pick])
        prob *= count / len(column)
        if prob < min_prob:
            break
        path.append(token)
        score += prob
        if count < len(column):
            after = after[column == token]
    return score, path


def _speculate(
    pattern: np.ndarray, before: np.ndarray, after: np.ndarray, max_tokens: int, params: SuffixParams, floor: float
) -> tuple[float, list[int]]:
    """The best-scoring draft over the match lengths found, as in the paper, if it scores above ``floor``.

    Length L takes the occurrences matching at least the last L tokens and may draft
    ceil(max_spec_factor * L) tokens. Lengths are tried best bound first (that many tokens
    at the first token's probability, which later tokens cannot exceed) until no bound
    beats the best score, so usually one or two paths are followed, not one per length.
    Among equal bounds longer lengths go first, being more specific; the first to reach
    a score keeps it.
    """
    same = before == pattern
    match = np.where(same.all(axis=1), same.shape[1], same.argmin(axis=1))
    lengths = np.unique(match[match >= params.min_match])[::-1]
    limits = np.minimum(np.ceil(params.max_spec_factor * lengths), max_tokens).astype(np.int64)
    on_path = match >= lengths[:, None]  # (length, occurrence)
    tokens, ids = np.unique(after[:, 0], return_inverse=True)
    which, occurrence = np.nonzero(on_path)
    counts = np.bincount(which * len(tokens) + ids[occurrence], minlength=len(lengths) * len(tokens))
    counts = counts.reshape(len(lengths), len(tokens))
    if len(tokens) and tokens[0] == _ENDED:  # occurrences at the very end of their text
        counts[:, 0] = 0
    bounds = limits * counts.max(axis=1, initial=0) / np.maximum(on_path.sum(axis=1), 1)
    best_score, best = floor, []
    for j in np.argsort(-bounds, kind="stable").tolist():
        if bounds[j] <= best_score:
            break
        score, draft = _greedy_path(after[on_path[j], : limits[j]], params.min_token_prob)
        if score > best_score:
            best_score, best = score, draft
    return best_score, best


class SuffixProposer:
    """Drafts for every row of vLLM's batch from the request's own tokens and recent outputs."""

    def __init__(self, vllm_config: VllmConfig, params: SuffixParams = SuffixParams()) -> None:
        self.k = vllm_config.speculative_config.num_speculative_tokens
        self.max_model_len = vllm_config.model_config.max_model_len
        self.params = params
        self._failed = False
        self._reset()

    def _reset(self) -> None:
        self._rows: dict[int, _Request] = {}
        self._detached: deque[_Request] = deque(maxlen=_DETACHED)
        self._archive = _Archive(self.params)

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
            self._track(live, sampled_token_ids, token_ids_cpu)
            return [
                self._draft(self._rows[i], min(self.k, self.max_model_len - live[i] - 1)) if i in live else []
                for i in range(len(sampled_token_ids))
            ]
        except Exception:
            if not self._failed:
                logger.exception("suffix proposer failed; dropping its state, no drafts this step")
            self._failed = True
            self._reset()
            return [[] for _ in sampled_token_ids]

    def _track(self, live: dict[int, int], sampled_token_ids: list[list[int]], token_ids_cpu: np.ndarray) -> None:
        """Match each live row to its request: the one seen there before, else one that moved or came back."""
        rows: dict[int, _Request] = {}
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
                    request = _Request(row, len(row) - len(sampled_token_ids[i]), self.params.min_match)
                else:
                    spare.remove(request)
                rows[i] = request
            claimed = {id(r) for r in rows.values()}
            self._detached = deque((r for r in self._detached if id(r) not in claimed), maxlen=_DETACHED)
        for request in self._rows.values():
            if id(request) not in claimed:
                self._detach(request)
        self._rows = rows

    def _detach(self, request: _Request) -> None:
        """Archive the output a request added since it was last archived, with its left context."""
        start = max(request.archived - self.params.max_depth, 0)
        self._archive.add(request.tokens[start : request.n], request.archived - start)
        request.archived = request.n
        self._detached.append(request)

    def _draft(self, request: _Request, max_tokens: int) -> list[int]:
        """The better-scoring draft of the request's own tokens and the archive's (own wins ties)."""
        if max_tokens <= 0 or request.last_key is None:
            return []
        back = min(self.params.max_depth, request.n)
        pattern = request.tokens[request.n - back : request.n][::-1]
        best_score, best = 0.0, []
        for before, after in (
            request.occurrences(back, max_tokens),
            self._archive.occurrences(int(request.last_key), back, max_tokens),
        ):
            if len(before):
                score, draft = _speculate(pattern, before, after, max_tokens, self.params, best_score)
                if draft:
                    best_score, best = score, draft
        return best
