"""One streamed request against an OpenAI-compatible server, timed chunk by chunk.

Timing is client-side (``time.perf_counter``), so it includes the HTTP stack of the target:
that is the point of comparing a gateway with the bare engine. Token counts come from the
server's own ``usage`` (``stream_options.include_usage``); every failure is kept as a
result with a type, never dropped.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import httpx

from benchmarks.bench.datasets import BenchRequest


@dataclass
class RequestResult:
    """What one request did. Times are seconds; ``start_s`` is relative to the run's start."""

    index: int
    ok: bool
    start_s: float = 0.0
    status: int | None = None
    error_type: str | None = None
    error_message: str | None = None
    ttft_s: float | None = None
    e2el_s: float | None = None
    chunk_times_s: list[float] = field(default_factory=list)  # arrival of each token-bearing chunk, from send
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    usage_reported: bool = False

    @property
    def tpot_s(self) -> float | None:
        """(last − first token) / (tokens − 1): decode speed without the prefill."""
        if not self.ok or not self.output_tokens or self.output_tokens < 2 or self.ttft_s is None:
            return None
        return (self.e2el_s - self.ttft_s) / (self.output_tokens - 1)

    @property
    def itl_s(self) -> list[float]:
        """Per-token inter-token latencies from chunk gaps; a chunk carrying k tokens gives k gaps of 1/k.

        Chunks do not say how many tokens they carry; the server's usage count does in total,
        so the tokens after the first chunk are spread evenly over the later chunks.
        """
        gaps = [b - a for a, b in zip(self.chunk_times_s, self.chunk_times_s[1:])]
        if not self.ok or not gaps:
            return []
        tokens_after_first = (self.output_tokens or len(self.chunk_times_s)) - 1
        if tokens_after_first <= len(gaps):
            return gaps
        per_chunk = tokens_after_first / len(gaps)
        itl = []
        for i, gap in enumerate(gaps):  # whole tokens per chunk, summing to exactly tokens_after_first
            tokens = round((i + 1) * per_chunk) - round(i * per_chunk)
            itl += [gap / tokens] * tokens
        return itl


@dataclass(frozen=True)
class Endpoint:
    """Where and how to send: base URL (no ``/v1``), model name, API and sampling options."""

    base_url: str
    model: str
    api: str = "completions"  # or "chat"
    api_key: str | None = None
    ignore_eos: bool = True
    temperature: float = 0.0
    extra_body: dict = field(default_factory=dict)  # merged into every request (plugins' per-request options)

    @property
    def url(self) -> str:
        return f"{self.base_url}/v1/{'chat/completions' if self.api == 'chat' else 'completions'}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def build_payload(endpoint: Endpoint, request: BenchRequest) -> dict:
    """The JSON body: streamed, with usage, fixed length when ``ignore_eos``."""
    payload: dict = {
        "model": endpoint.model,
        "max_tokens": request.max_tokens,
        "temperature": endpoint.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if endpoint.ignore_eos:
        payload["ignore_eos"] = True
    if endpoint.api == "chat":
        content: str | list = request.prompt
        if request.images or request.videos:
            content = [{"type": "text", "text": request.prompt},
                       *({"type": "image_url", "image_url": {"url": url}} for url in request.images),
                       *({"type": "video_url", "video_url": {"url": url}} for url in request.videos)]
        payload["messages"] = [{"role": "user", "content": content}]
    else:
        payload["prompt"] = request.prompt
    return {**payload, **endpoint.extra_body}


def _error_code(body: bytes) -> str:
    try:
        error = json.loads(body).get("error") or {}
        return str(error.get("code") or error.get("type") or "unknown")
    except (ValueError, AttributeError):
        return "unparsable_body"


def _chunk_has_token(choice: dict, api: str) -> bool:
    """A chunk that carries generated output (not chat's bare role announcement). A choice's finishing chunk
    counts even without text: its last token may decode to nothing yet (part of a multi-byte character)."""
    if choice.get("finish_reason") is not None:
        return True
    if api == "chat":
        delta = choice.get("delta") or {}
        content = delta.get("content")
        return content is not None and not (content == "" and "role" in delta)
    return choice.get("text") is not None


async def send(client: httpx.AsyncClient, endpoint: Endpoint, request: BenchRequest, index: int,
               run_start: float) -> RequestResult:
    """Send one request, stream the answer, and time it; never raises for server or network faults."""
    sent = time.perf_counter()
    result = RequestResult(index=index, ok=False, start_s=sent - run_start)
    try:
        async with client.stream("POST", endpoint.url, json=build_payload(endpoint, request),
                                 headers=endpoint.headers) as response:
            result.status = response.status_code
            if response.status_code != 200:
                body = await response.aread()
                result.error_type = f"http_{response.status_code}:{_error_code(body)}"
                result.error_message = body[:300].decode(errors="replace")
                return result
            done = False
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                now = time.perf_counter()
                event = json.loads(data)
                if "error" in event:
                    error = event["error"] or {}
                    result.error_type = f"stream_error:{error.get('code') or error.get('type') or 'unknown'}"
                    result.error_message = str(error.get("message", ""))[:300]
                    return result
                if any(_chunk_has_token(choice, endpoint.api) for choice in event.get("choices") or []):
                    result.chunk_times_s.append(now - sent)
                if event.get("usage"):
                    result.usage_reported = True
                    result.prompt_tokens = event["usage"].get("prompt_tokens")
                    result.output_tokens = event["usage"].get("completion_tokens")
            if not done:
                result.error_type = "stream_incomplete"
                return result
    except httpx.TimeoutException as exc:
        result.error_type = f"timeout:{type(exc).__name__}"
        result.error_message = str(exc)[:300]
        return result
    except asyncio.CancelledError:
        result.error_type = "cancelled_at_deadline"
        return result
    except (httpx.HTTPError, OSError, ValueError) as exc:
        result.error_type = f"transport:{type(exc).__name__}"
        result.error_message = str(exc)[:300]
        return result
    if not result.chunk_times_s:
        result.error_type = "no_tokens"
        return result
    if not result.usage_reported:
        result.error_type = "no_usage"  # the server ignored include_usage: token counts unknown
        return result
    result.ok = True
    result.ttft_s = result.chunk_times_s[0]
    result.e2el_s = result.chunk_times_s[-1]
    return result
