"""Request traces on a scripted engine, exported over real OTLP/gRPC to a receiver in the test.

The real app, middleware and routes; only the engine is scripted. The live server's traces
(with vLLM's own span joined) are checked in tests/integration/test_tracing.py.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest

from tests.otlp_receiver import OtlpReceiver
from tests.unit.fake_engine import FakeEngine
from tests.unit.test_gateway_mechanics import completion, running_app

PHASES = {"gateway", "admission", "queue", "prefill", "decode"}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.fixture()
def receiver():
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()


class RecordingEngine(FakeEngine):
    """Remembers the trace headers each engine request carried (vLLM's ``trace_headers``)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.trace_headers: list = []

    async def generate(self, request):
        self.trace_headers.append(request.trace_headers)
        async for delta in super().generate(request):
            yield delta


def test_a_request_becomes_a_server_span_with_its_phases_under_the_callers_trace(receiver):
    engine = RecordingEngine(step_s=0.01)

    async def scenario():
        async with running_app(engine, otlp_traces_endpoint=receiver.endpoint) as (_, client):
            reply = await client.post("/v1/completions", json=completion(max_tokens=5),
                                      headers={"traceparent": f"00-{TRACE_ID}-{PARENT}-01"})
            assert reply.status_code == 200
        # Leaving the app's lifespan flushes the exporter.

    asyncio.run(scenario())
    spans = receiver.wait_for(TRACE_ID, {"POST /v1/completions", *PHASES})
    [root] = [span for span in spans if span.name == "POST /v1/completions"]
    assert root.parent_span_id == PARENT and root.kind == 2  # SPAN_KIND_SERVER
    assert root.service == "leanserve"
    assert root.attributes["http.response.status_code"] == 200
    assert root.attributes["gen_ai.usage.output_tokens"] == 5
    assert root.attributes["gen_ai.response.finish_reasons"] == ["length"]
    phases = {span.name: span for span in spans if span.name in PHASES}
    assert all(span.parent_span_id == root.span_id for span in phases.values())
    # In order, without overlap, inside the request span; decoding 5 steps of 10 ms takes >= 40 ms.
    ordered = [phases[name] for name in ("gateway", "admission", "queue", "prefill", "decode")]
    for before, after in itertools.pairwise(ordered):
        assert before.end_ns <= after.start_ns + 1_000_000, (before.name, after.name)
    assert root.start_ns <= ordered[0].start_ns and ordered[-1].end_ns <= root.end_ns
    assert phases["decode"].duration_s >= 0.035
    # The engine got our span's context, so vLLM's llm_request span becomes its child.
    [headers] = engine.trace_headers
    assert headers["traceparent"].split("-")[1:3] == [TRACE_ID, root.span_id]


def test_refused_requests_are_traced_with_their_status_and_untraced_servers_send_nothing(receiver):
    async def scenario():
        async with running_app(FakeEngine(), otlp_traces_endpoint=receiver.endpoint) as (_, client):
            assert (await client.post("/v1/completions", json=completion(max_tokens=0))).status_code == 400
            assert (await client.post("/v1/completions", json=completion(),
                                      headers={"Authorization": "Bearer wrong"})).status_code == 401
        async with running_app(FakeEngine()) as (_, client):
            assert (await client.post("/v1/completions", json=completion())).status_code == 200

    asyncio.run(scenario())
    statuses = sorted(span.attributes["http.response.status_code"] for span in receiver.spans()
                      if span.name == "POST /v1/completions")
    assert statuses == [400, 401]
    assert not any(span.name in PHASES for span in receiver.spans())  # no generation ran
