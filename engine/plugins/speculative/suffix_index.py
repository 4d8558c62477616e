"""The text index behind suffix decoding (Oliaro et al., "SuffixDecoding", 2024).

Each live request's own tokens, and an archive of recent requests' outputs, indexed by
the hash of their ``min_match``-grams; ``speculate`` picks the best-scoring draft among
the continuations of the longest matching suffixes. ``suffix.py`` drives it per batch row.
"""

from __future__ import annotations

import bisect
from array import array
from collections import deque
from dataclasses import dataclass

import numpy as np

# Most recent occurrences of the anchor n-gram examined per lookup: bounds the cost of frequent n-grams.
_MAX_CANDIDATES = 256
_ENDED = -1  # before the start of a text, or after its end (a separator in the archive)
_UNKNOWN = -2  # after the end of the request's text so far: not generated yet
_HASH_MUL = np.uint64(0x100000001B3)


@dataclass(frozen=True)
class SuffixParams:
    """Knobs of suffix decoding: the paper's and vLLM's built-in suffix method's, plus eager small steps.

    Small steps draft eagerly (``eager_*``): while a step runs at most ``eager_max_batch`` requests, a
    draft may start from a 1-token match and run to twice the match length. There the extra rows are
    nearly free (a 135M model verifying ≤ 9 rows on 2 AVX2 cores reads weights rather than computes), and
    on HumanEval / chat at concurrency 1 that gave 14% / 9% more tokens per step than the paper's
    (min_match 2, factor 1.0) in ``benchmarks/suffix_replay.py``; through the server, HumanEval alone
    went from 1.80× to 2.10× faster than no speculation (RESULTS.md, "Suffix decoding reaches 2×"). In
    larger steps rows cost compute and the eager drafts' lower acceptance did not pay (1.34× -> 1.22× at
    8 requests when every step was eager), so those keep the paper's knobs.
    """

    max_depth: int = 24  # longest suffix matched
    min_match: int = 2  # shortest suffix matched (steps above eager_max_batch requests)
    max_spec_factor: float = 1.0  # a draft has at most ceil(factor * match length) tokens (same steps)
    min_token_prob: float = 0.1  # stop extending once the draft's estimated probability drops below this
    max_cached_requests: int = 1000  # finished requests whose outputs are kept for the others
    max_cached_tokens: int = 1 << 20  # and at most this many tokens of them (4 MiB)
    eager_max_batch: int = 2  # steps running at most this many requests use the two knobs below (0: none)
    eager_min_match: int = 1
    eager_spec_factor: float = 2.0

    def __post_init__(self) -> None:
        if not (1 <= self.min_match <= self.max_depth and 1 <= self.eager_min_match <= self.max_depth):
            raise ValueError(f"need 1 <= min_match, eager_min_match <= max_depth, got {self.min_match}, "
                             f"{self.eager_min_match}, {self.max_depth}")
        if min(self.max_spec_factor, self.eager_spec_factor) < 0 or not 0 <= self.min_token_prob <= 1:
            raise ValueError(f"need max_spec_factor >= 0 and 0 <= min_token_prob <= 1, got {self.max_spec_factor}, "
                             f"{self.min_token_prob}")
        if self.max_cached_requests < 0:
            raise ValueError(f"need max_cached_requests >= 0, got {self.max_cached_requests}")

    def matching(self, requests: int) -> tuple[int, float]:
        """(shortest match, spec factor) for a step running ``requests`` requests."""
        if requests <= self.eager_max_batch:
            return self.eager_min_match, self.eager_spec_factor
        return self.min_match, self.max_spec_factor

    @property
    def anchor_width(self) -> int:
        """The n-gram the indexes are keyed on: the shortest match any step may use."""
        return min(self.min_match, self.eager_min_match) if self.eager_max_batch > 0 else self.min_match

    # vLLM builds a ``custom_class`` proposer from its config alone, so the knobs travel in the speculative
    # config's fields for vLLM's own suffix method, which mean the same. The others have no such field (vLLM
    # zeroes ngram's prompt_lookup_min for other methods, for one), so they are not flag knobs.
    _VLLM_FIELDS = (("max_depth", "suffix_decoding_max_tree_depth"), ("max_spec_factor", "suffix_decoding_max_spec_factor"),
                    ("min_token_prob", "suffix_decoding_min_token_prob"),
                    ("max_cached_requests", "suffix_decoding_max_cached_requests"))

    def as_speculative_config(self) -> dict[str, int | float]:
        """These knobs as vLLM ``speculative_config`` entries (``from_speculative_config`` reads them back)."""
        return {vllm_name: getattr(self, name) for name, vllm_name in self._VLLM_FIELDS}

    @classmethod
    def from_speculative_config(cls, speculative_config: object) -> SuffixParams:
        """The knobs ``as_speculative_config`` wrote; defaults for the ones absent or unset."""
        values = {name: getattr(speculative_config, vllm_name, None) for name, vllm_name in cls._VLLM_FIELDS}
        return cls(**{name: value for name, value in values.items() if value is not None})


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


class RequestIndex:
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


class OutputArchive:
    """Recent requests' outputs in a ring buffer, indexed by anchor n-gram like ``RequestIndex``.

    The oldest go first once more than ``max_cached_requests`` or ``max_cached_tokens`` are held.
    """

    def __init__(self, params: SuffixParams) -> None:
        self._width = params.anchor_width
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


def _greedy_path(after: np.ndarray, min_prob: float) -> tuple[float, list[int], list[float]]:
    """Follow the most frequent continuation of the occurrences (ties: the most recent one).

    A token's probability is the share of occurrences still on the path that continue
    with it, multiplied along the path; the score is the expected number of accepted
    tokens, the sum of those probabilities, which are returned too (one per draft token).
    An occurrence whose text ended counts against every continuation; one that runs into
    the request's own present has no say.
    """
    score, prob, path, probs = 0.0, 1.0, [], []
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
        probs.append(prob)
        score += prob
        if count < len(column):
            after = after[column == token]
    return score, path, probs


def speculate(
    pattern: np.ndarray, before: np.ndarray, after: np.ndarray, max_tokens: int, params: SuffixParams, floor: float,
    requests: int = 1,
) -> tuple[float, list[int], list[float]]:
    """The best-scoring draft over the match lengths found, as in the paper, if it scores above ``floor``.

    Length L (at least the shortest match for a step of ``requests``, ``SuffixParams.matching``) takes
    the occurrences matching at least the last L tokens and may draft ceil(factor * L) tokens. Lengths are tried best bound first (that many tokens
    at the first token's probability, which later tokens cannot exceed) until no bound
    beats the best score, so usually one or two paths are followed, not one per length.
    Among equal bounds longer lengths go first, being more specific; the first to reach
    a score keeps it. Returns the score, the draft and each draft token's estimated
    probability of being accepted (with the ones before it).
    """
    min_match, spec_factor = params.matching(requests)
    same = before == pattern
    match = np.where(same.all(axis=1), same.shape[1], same.argmin(axis=1))
    lengths = np.unique(match[match >= min_match])[::-1]
    limits = np.minimum(np.ceil(spec_factor * lengths), max_tokens).astype(np.int64)
    on_path = match >= lengths[:, None]  # (length, occurrence)
    tokens, ids = np.unique(after[:, 0], return_inverse=True)
    which, occurrence = np.nonzero(on_path)
    counts = np.bincount(which * len(tokens) + ids[occurrence], minlength=len(lengths) * len(tokens))
    counts = counts.reshape(len(lengths), len(tokens))
    if len(tokens) and tokens[0] == _ENDED:  # occurrences at the very end of their text
        counts[:, 0] = 0
    bounds = limits * counts.max(axis=1, initial=0) / np.maximum(on_path.sum(axis=1), 1)
    best_score, best, best_probs = floor, [], []
    for j in np.argsort(-bounds, kind="stable").tolist():
        if bounds[j] <= best_score:
            break
        score, draft, probs = _greedy_path(after[on_path[j], : limits[j]], params.min_token_prob)
        if score > best_score:
            best_score, best, best_probs = score, draft, probs
    return best_score, best, best_probs

