"""Server-sent events framing and the priming that keeps early errors out of the stream.

A streamed response must commit to HTTP 200 before its first byte. Running the
event generator up to its first event *before* returning the response turns
admission refusals and engine validation errors into ordinary JSON errors with
the right status; only failures after the first token become an SSE error event.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse

from service.errors import api_error, error_body

logger = logging.getLogger(__name__)

DONE = "data: [DONE]\n\n"


def encode_event(payload: dict) -> str:
    return "data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")) + "\n\n"


async def _with_first(first: str, rest: AsyncIterator[str]) -> AsyncIterator[str]:
    yield first
    try:
        async for event in rest:
            yield event
    except Exception as error:
        told = api_error(error)  # no Retry-After: the headers went out with the first event
        if told is None:
            raise
        yield encode_event(error_body(told.message, told.type, told.param, told.code))
        yield DONE
    finally:
        await rest.aclose()


async def primed_event_stream(events: AsyncIterator[str]) -> StreamingResponse:
    """Start ``events``; errors before its first event propagate to the caller."""
    try:
        first = await anext(events)
    except BaseException:
        await events.aclose()
        raise
    return StreamingResponse(
        _with_first(first, events),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
