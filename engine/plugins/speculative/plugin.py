"""Speculative decoding as a leanserve plugin: ``--speculative`` -> vLLM's ``speculative_config``.

Lossless: vLLM's rejection sampler verifies every draft against the target. Per request,
``extra_body={"speculative": {"enabled": false}}`` opts out (opt_out.py: vLLM's scheduler
drops that request's drafts). What a request saved is in its ``usage["speculative"]``, from vLLM's
per-request spec-decode metrics (``per_request_spec_decode_metrics="summary"``): every accepted
draft token is a target forward pass the request did not need.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer

from engine.plugin import EngineContext, FinishedRequest, Plugin, RequestAccounting, StepObserver
from engine.plugins.speculative.config import (
    OPT_OUT_SCHEDULER,
    SpeculationSpec,
    draft_tokens,
    parse_speculative,
    target_parameters,
    vllm_speculative_config,
)
from engine.plugins.speculative.stats import METRICS, SpeculationObserver, request_usage


def _parse(value: object) -> object:
    return parse_speculative(value) if isinstance(value, str) else value  # ValueError names the flag


Speculation = Annotated[SpeculationSpec, BeforeValidator(_parse), PlainSerializer(str, return_type=str)]


class SpeculativeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    speculative: Speculation | None = Field(None, description="ngram | suffix[:KNOB=VALUE,...] | draft:MODEL | mtp[:HEAD_DIR]")
    num_speculative_tokens: int | None = Field(None, gt=0, le=16, description="draft length K (default per method)")
    speculative_max_batch: int | None = Field(
        None, ge=0, le=4096,
        description="draft only in steps that run at most this many requests (0: never; default: 2 for mtp and "
                    "draft, and for every method on a target of >= 1B parameters; otherwise no limit)")
    speculative_min_acceptance: float | None = Field(
        None, ge=0.0, lt=1.0,
        description="verify a request's next draft only while its recent acceptance gives it at least this chance, "
                    "times the requests in the step, of being reached and accepted (0: every draft; default: 0.05 "
                    "for mtp and draft, 0 for ngram; suffix sizes its own drafts)")


class SpeculativeOptions(BaseModel):
    """Per request (``extra_body={"speculative": {"enabled": false}}``): no drafts for this request."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, strict=True)


class SpeculativePlugin(Plugin):
    name = "speculative"
    settings_model = SpeculativeSettings
    request_options = SpeculativeOptions
    metrics = METRICS

    def enabled(self, settings: SpeculativeSettings) -> bool:
        return settings.speculative is not None

    def engine_args(self, settings: SpeculativeSettings, context: EngineContext) -> dict[str, Any]:
        spec = settings.speculative
        draft_path = context.resolve_model(spec.model) if spec.method == "draft" else None
        config = vllm_speculative_config(spec, settings.num_speculative_tokens, context.served_model_name, draft_path,
                                         settings.speculative_max_batch, target_parameters(context.model_path))
        return {"speculative_config": config, "scheduler_cls": OPT_OUT_SCHEDULER,
                "per_request_spec_decode_metrics": "summary"}  # each finished choice's drafts: request_finished

    def register_in_vllm(self, settings: SpeculativeSettings) -> None:
        from engine.plugins.speculative.numba_threads import keep_numba_off_openmp
        from engine.plugins.speculative.quiet_steps import skip_speculative_work_in_steps_without_drafts

        keep_numba_off_openmp()
        skip_speculative_work_in_steps_without_drafts()

    def sampling_args(self, settings: SpeculativeSettings, options: BaseModel | None) -> dict[str, Any] | None:
        return {"enabled": options.enabled} if isinstance(options, SpeculativeOptions) else None

    def request_finished(self, settings: SpeculativeSettings, options: BaseModel | None,
                         finished: FinishedRequest) -> RequestAccounting | None:
        outputs = getattr(finished.final_output, "outputs", None) or []
        return RequestAccounting(usage=request_usage([output.spec_decode_metrics for output in outputs]))

    def step_observer(self, settings: SpeculativeSettings, context: EngineContext) -> StepObserver:
        longest = draft_tokens(settings.speculative, settings.num_speculative_tokens, context.served_model_name)
        return SpeculationObserver(settings.speculative.method, longest)


PLUGIN = SpeculativePlugin()
