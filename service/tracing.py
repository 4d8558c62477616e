"""OpenTelemetry traces of every /v1 request, exported over OTLP (``--otlp-traces-endpoint``).

One SERVER span per HTTP request (joined to the caller's trace by a W3C ``traceparent``
header), and under it one span per phase of each generation, built from the same
timestamps as the latency metrics: ``gateway`` (validation, tokenization, until a slot is
asked for), ``admission`` (waiting for a running slot), ``queue`` (vLLM's scheduler queue),
``prefill`` (to the first token) and ``decode`` (to the last). What each plugin saved
(the ``usage`` figures) becomes attributes ``leanserve.<plugin>.<figure>``. The same
endpoint is handed to vLLM (``otlp_traces_endpoint``), whose ``llm_request`` span arrives as
a child of ours: the engine receives our span's ``traceparent`` with the request.

leanserve keeps its own ``TracerProvider`` rather than the global one: vLLM installs its
own provider globally in this process when tracing is on, and OpenTelemetry allows only one.
The protocol follows ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` with vLLM's default (gRPC), so
both export the same way to the same collector.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Span, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()


def span_exporter(endpoint: str) -> SpanExporter:
    """OTLP over gRPC (default) or HTTP/protobuf, as ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` says."""
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter(endpoint=endpoint)
    raise ValueError(f"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL={protocol!r}: use grpc or http/protobuf")


def _wall_ns(monotonic_s: float, offset_ns: int) -> int:
    return int(monotonic_s * 1e9) + offset_ns


@dataclass
class GenerationPhases:
    """Monotonic timestamps of one generation, as ``service.generation`` takes them."""

    arrival_s: float
    slot_asked_s: float
    admitted_s: float | None = None
    scheduled_s: float | None = None
    first_token_s: float | None = None
    last_token_s: float | None = None
    attributes: dict[str, int | float | str | list[str]] = field(default_factory=dict)


class RequestTrace:
    """The span of one HTTP request; generations add their phases to it."""

    def __init__(self, span: Span, tracer: Tracer) -> None:
        self.span = span
        self._tracer = tracer
        # Monotonic seconds -> epoch nanoseconds, fixed once per request.
        self._offset_ns = time.time_ns() - int(time.monotonic() * 1e9)

    def engine_headers(self) -> dict[str, str]:
        """``traceparent`` of this span, for vLLM's ``trace_headers`` (its span joins ours)."""
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=set_span_in_context(self.span))
        return carrier

    def add_generation(self, phases: GenerationPhases, usage: Mapping[str, Mapping[str, float]] | None) -> None:
        """Child spans for the phases that happened; usage figures as attributes of the request span."""
        marks = [("gateway", phases.arrival_s, phases.slot_asked_s),
                 ("admission", phases.slot_asked_s, phases.admitted_s),
                 ("queue", phases.admitted_s, phases.scheduled_s),
                 ("prefill", phases.scheduled_s, phases.first_token_s),
                 ("decode", phases.first_token_s, phases.last_token_s)]
        context = set_span_in_context(self.span)
        for name, start, end in marks:
            if start is None or end is None:
                continue
            child = self._tracer.start_span(name, context=context, start_time=_wall_ns(start, self._offset_ns))
            child.end(end_time=_wall_ns(max(end, start), self._offset_ns))
        self.span.set_attributes(phases.attributes)
        for plugin, figures in (usage or {}).items():
            for figure, value in figures.items():
                if isinstance(value, int | float):
                    self.span.set_attribute(f"leanserve.{plugin}.{figure}", value)

    def finish(self, status_code: int) -> None:
        self.span.set_attribute("http.response.status_code", status_code)
        if status_code >= 500:
            self.span.set_status(Status(StatusCode.ERROR))
        self.span.end()


class Tracing:
    """Owns the exporter; starts one ``RequestTrace`` per traced HTTP request."""

    def __init__(self, endpoint: str, model_name: str, exporter: SpanExporter | None = None) -> None:
        resource = Resource.create({"service.name": "leanserve", "leanserve.model": model_name})
        self._provider = TracerProvider(resource=resource)
        self._provider.add_span_processor(BatchSpanProcessor(exporter or span_exporter(endpoint)))
        self._tracer = self._provider.get_tracer("leanserve")
        self.model_name = model_name

    def start_request(self, method: str, path: str, headers: Mapping[str, str]) -> RequestTrace:
        parent = _PROPAGATOR.extract(headers)
        span = self._tracer.start_span(
            f"{method} {path}", context=parent, kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path, "gen_ai.request.model": self.model_name},
        )
        return RequestTrace(span, self._tracer)

    def shutdown(self) -> None:
        """Flush what is still queued (on server exit)."""
        self._provider.shutdown()
