"""Per-API-key budgets: requests per minute and tokens per minute (token buckets).

Requests are charged on arrival. Tokens (prompt + generated) are charged when a
generation ends, because only then are they known; a key whose token bucket is
empty is refused until it refills. Keys are held only as hashes.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass


class RateLimited(Exception):
    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class _Bucket:
    capacity: float
    level: float
    per_second: float
    updated: float

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.per_second)
        self.updated = now

    def seconds_until(self, amount: float) -> float:
        return max(0.0, (amount - self.level) / self.per_second)


class KeyRateLimiter:
    """Token buckets per key; a limit of None means unlimited."""

    def __init__(
        self,
        requests_per_minute: int | None,
        tokens_per_minute: int | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rpm = requests_per_minute
        self._tpm = tokens_per_minute
        self._clock = clock
        self._requests: dict[str, _Bucket] = {}
        self._tokens: dict[str, _Bucket] = {}

    @property
    def enabled(self) -> bool:
        return self._rpm is not None or self._tpm is not None

    def _bucket(self, table: dict[str, _Bucket], key: str, per_minute: int, now: float) -> _Bucket:
        bucket = table.get(key)
        if bucket is None:
            bucket = table[key] = _Bucket(per_minute, per_minute, per_minute / 60.0, now)
        bucket.refill(now)
        return bucket

    def admit(self, api_key: str) -> None:
        """Take one request from the key's budget, or raise RateLimited with a Retry-After."""
        key, now = _identity(api_key), self._clock()
        if self._tpm is not None:
            tokens = self._bucket(self._tokens, key, self._tpm, now)
            if tokens.level <= 0:
                wait = math.ceil(tokens.seconds_until(1))
                raise RateLimited(f"token budget of {self._tpm} tokens per minute exhausted", wait)
        if self._rpm is not None:
            requests = self._bucket(self._requests, key, self._rpm, now)
            if requests.level < 1:
                wait = math.ceil(requests.seconds_until(1))
                raise RateLimited(f"request budget of {self._rpm} requests per minute exhausted", wait)
            requests.level -= 1

    def charge_tokens(self, api_key: str, count: int) -> None:
        if self._tpm is None:
            return
        self._bucket(self._tokens, _identity(api_key), self._tpm, self._clock()).level -= count


def _identity(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()
