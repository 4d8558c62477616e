"""When to hand the pen to the other model: switching policies over per-token entropy.

A policy sees, token by token, the entropy (nats) of the distribution the *active* model
sampled from, and answers which model writes the next token. Both shipped rules keep a
window of the last ``window`` entropies and a minimum dwell (tokens written by a model
before it may hand over again), so that one odd token does not cause a costly switch.

* ``ead``      Entropy Adaptive Decoding (Ruan et al., 2025): the large model while the
               window's mean entropy is above ``threshold``, the small one otherwise.
* ``quantile`` a token-uncertainty quantile, as "Language Model Cascades: Token-level
               uncertainty and beyond" (Gupta et al., 2024) found better than a mean: the
               large model while the window's ``quantile``-th entropy is above ``threshold``,
               so a few very uncertain tokens in a window decide, not the average.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Model = Literal["small", "large"]


@dataclass
class SwitchPolicy:
    """One request's switching state; ``observe`` is called once per generated token."""

    threshold: float
    window: int = 4
    min_dwell: int = 4
    active: Model = "small"
    _recent: deque[float] = field(default_factory=deque)
    _dwell: int = 0

    def __post_init__(self) -> None:
        # At threshold 0 every token counts as uncertain: the large model writes from the start.
        # Otherwise the small model starts, free to hand over at its first uncertain token.
        self.active = "large" if self.threshold <= 0 else "small"
        self._dwell = self.min_dwell

    def observe(self, entropy: float) -> Model:
        """Record the active model's entropy at this token; return the model for the next token."""
        self._recent.append(entropy)
        while len(self._recent) > self.window:
            self._recent.popleft()
        self._dwell += 1
        wanted: Model = "large" if self.uncertainty() >= self.threshold else "small"
        if wanted != self.active and self._dwell >= self.min_dwell:
            self.active, self._dwell = wanted, 0
            self._recent.clear()  # the incoming model's entropies are on its own scale
        return self.active

    def uncertainty(self) -> float:
        raise NotImplementedError


@dataclass
class MeanEntropy(SwitchPolicy):
    """EAD's rule: the mean entropy over the window."""

    def uncertainty(self) -> float:
        return float(np.mean(self._recent)) if self._recent else 0.0


@dataclass
class QuantileEntropy(SwitchPolicy):
    """LM Cascades' rule: a high quantile of the window's entropies."""

    quantile: float = 0.8

    def uncertainty(self) -> float:
        return float(np.quantile(list(self._recent), self.quantile)) if self._recent else 0.0


POLICIES: dict[str, type[SwitchPolicy]] = {"ead": MeanEntropy, "quantile": QuantileEntropy}
