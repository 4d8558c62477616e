"""The series entropy-adaptive switching declares (labels besides ``model``)."""

from __future__ import annotations

from engine.protocol import MetricSpec

TOKENS = "leanserve_adaptive_tokens"
SWITCHES = "leanserve_adaptive_switches"
CATCHUP_TOKENS = "leanserve_adaptive_catchup_tokens"
LARGE_FRACTION = "leanserve_adaptive_large_token_fraction"

METRICS = (
    MetricSpec(TOKENS, "counter", "Tokens returned, by the model that wrote them (writer=small|large).", ("writer",)),
    MetricSpec(SWITCHES, "counter", "Hand-overs between the two models."),
    MetricSpec(CATCHUP_TOKENS, "counter",
               "Tokens an incoming model prefilled at a hand-over (not found in its prefix cache)."),
    MetricSpec(LARGE_FRACTION, "gauge", "Fraction of returned tokens the large model wrote, since start "
                                        "(use the counters for windows)."),
)
