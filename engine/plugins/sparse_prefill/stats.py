"""The series token-sparse prefill declares (labels besides ``model``)."""

from __future__ import annotations

from engine.protocol import MetricSpec

PROMPTS = "leanserve_sparse_prefill_prompts"
LAYER_TOKENS = "leanserve_sparse_prefill_layer_tokens"
ATTENTION_SECONDS = "leanserve_sparse_prefill_attention_seconds"

METRICS = (
    MetricSpec(PROMPTS, "counter", "Prompts prefilled with sparse attention (path=sparse) or densely "
                                   "(path=dense: short, a cached prefix, or opted out).", ("path",)),
    MetricSpec(LAYER_TOKENS, "counter", "Prompt tokens a sparse layer scored (stage=scored) and those each head "
                                        "attended over (stage=kept); kept/scored is the layer's kept fraction.",
               ("layer", "stage")),
    MetricSpec(ATTENTION_SECONDS, "counter", "Sparse prefill attention time (kind=sparse) and the dense time it "
                                             "saved, estimated from the attention work ratio (kind=saved_estimate).",
               ("kind",)),
)
