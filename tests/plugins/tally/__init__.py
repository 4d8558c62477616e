"""``tally``: the smallest plugin that uses every part of the contract a user can see.

It is loaded like an out-of-tree plugin (``--plugins tests.plugins.tally``) and adds:
a switch (``--tally/--no-tally``), a flag (``--tally-weight``, also ``LEANSERVE_TALLY_WEIGHT``); a per-request option
(``"tally": {"label": ...}`` in the body, ``extra_body`` with the ``openai`` client);
a ``usage.tally`` figure (the request's generated tokens, and those times the weight);
a metric (``leanserve_tally_weighted_tokens_total{label}``); and registration inside
vLLM's processes (each writes its pid into ``--tally-marker-dir``), so a test can tell
that the engine core ran it. It saves nothing: it only proves the plumbing end to end.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from engine.plugin import FinishedRequest, Plugin, RequestAccounting
from engine.protocol import MetricSpec, MetricUpdate

WEIGHTED_TOKENS = "leanserve_tally_weighted_tokens"


class TallySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tally: bool = Field(True, description="tally: the switch")
    tally_weight: float = Field(1.0, gt=0, description="tally: weight of each generated token")
    tally_marker_dir: Path | None = Field(None, description="tally: where each vLLM process that registered it "
                                                            "writes a file named after its pid")


class TallyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str = Field(min_length=1, max_length=32, pattern=r"^[a-z0-9_-]+$")


class TallyPlugin(Plugin):
    name = "tally"
    settings_model = TallySettings
    request_options = TallyOptions
    metrics = (MetricSpec(WEIGHTED_TOKENS, "counter", "Generated tokens times --tally-weight (test plugin).",
                          ("label",)),)

    def enabled(self, settings: TallySettings) -> bool:
        return settings.tally

    def register_in_vllm(self, settings: TallySettings) -> None:
        if settings.tally_marker_dir is not None:
            settings.tally_marker_dir.mkdir(parents=True, exist_ok=True)
            (settings.tally_marker_dir / str(os.getpid())).write_text(str(settings.tally_weight))

    def sampling_args(self, settings: TallySettings, options: TallyOptions | None) -> dict | None:
        return None if options is None else {"label": options.label}

    def request_finished(self, settings: TallySettings, options: TallyOptions | None,
                         finished: FinishedRequest) -> RequestAccounting | None:
        if options is None:
            return None
        tokens = sum(finished.output_tokens)
        weighted = tokens * settings.tally_weight
        return RequestAccounting(usage={"tokens": tokens, "weighted_tokens": weighted},
                                 updates=(MetricUpdate(WEIGHTED_TOKENS, weighted, (options.label,)),))


PLUGIN = TallyPlugin()
