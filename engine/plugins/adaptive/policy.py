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
* ``token``    token-level deferral, LM Cascades' own setting: the small model hands a
               token to the large one the moment *that token's* entropy reaches
               ``threshold`` (no window, no dwell on the small side: its uncertain token is
               discarded and rewritten); the large model writes at least ``min_dwell``
               tokens and hands back once its last ``window`` entropies are all below
               ``threshold``.

Why ``token`` wins: teacher-forcing both Qwen2.5-Coder models on the large one's HumanEval
answers, only 2.2% of positions have a different greedy token in the two models, and the
small model's own entropy at a position ranks them almost perfectly (the most uncertain 10%
of positions hold 97% of them). The windowed rules decide on the token *after* an uncertain
one, dilute a single uncertain token in the mean, and block hand-overs during the dwell, so
they leave many of those positions to the small model (EAD at 0.3 nats: 39%; token-level
deferral at 0.2: 2%; ``python -m benchmarks.adaptive_replay``, benchmarks/RESULTS.md).
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


@dataclass
class TokenDeferral(SwitchPolicy):
    """Token-level deferral: the small model's uncertain token goes to the large model at once."""

    def observe(self, entropy: float) -> Model:
        if self.active == "small":
            if entropy >= self.threshold:
                self.active, self._dwell = "large", 0
                self._recent.clear()
            return self.active
        self._recent.append(entropy)
        while len(self._recent) > self.window:
            self._recent.popleft()
        self._dwell += 1
        if self._dwell >= self.min_dwell and len(self._recent) == self.window and self.uncertainty() < self.threshold:
            self.active, self._dwell = "small", 0
        return self.active

    def uncertainty(self) -> float:
        """The large model's highest entropy in the window: it hands back once all of them are low."""
        return max(self._recent, default=0.0)


POLICIES: dict[str, type[SwitchPolicy]] = {"ead": MeanEntropy, "quantile": QuantileEntropy, "token": TokenDeferral}
