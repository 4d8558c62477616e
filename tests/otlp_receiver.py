"""An OTLP/gRPC trace receiver for the tests: what a collector would get, decoded into ``ReceivedSpan``s.

It serves OpenTelemetry's own ``TraceService`` (``opentelemetry-proto``), so the server
under test exports exactly as it would to a real collector (Jaeger, Tempo, the
OpenTelemetry Collector).
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from dataclasses import dataclass

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from benchmarks.local_server import free_port


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    start_ns: int
    end_ns: int
    kind: int
    attributes: dict
    service: str

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


def _value(any_value):
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self.receiver = receiver

    def Export(self, request, context):  # the gRPC method's name
        for resource_spans in request.resource_spans:
            resource = {attr.key: _value(attr.value) for attr in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.receiver.add(ReceivedSpan(
                        name=span.name, trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(), start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano, kind=span.kind,
                        attributes={attr.key: _value(attr.value) for attr in span.attributes},
                        service=str(resource.get("service.name", "")),
                    ))
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    """Listens on 127.0.0.1; ``endpoint`` is what ``--otlp-traces-endpoint`` takes."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self), self._server)
        self._server.add_insecure_port(f"127.0.0.1:{self.port}")
        self._server.start()

    def add(self, span: ReceivedSpan) -> None:
        with self._lock:
            self._spans.append(span)

    def spans(self, trace_id: str | None = None) -> list[ReceivedSpan]:
        with self._lock:
            return [span for span in self._spans if trace_id is None or span.trace_id == trace_id]

    def wait_for(self, trace_id: str, names: set[str], timeout_s: float = 30) -> list[ReceivedSpan]:
        """The spans of one trace, once every name in ``names`` has arrived (exporters batch: ~5 s)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.spans(trace_id)
            if names <= {span.name for span in found}:
                return found
            time.sleep(0.2)
        raise AssertionError(f"trace {trace_id}: wanted {sorted(names)}, got {[s.name for s in self.spans(trace_id)]}")

    def close(self) -> None:
        self._server.stop(grace=None)
