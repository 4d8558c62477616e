"""The one exception -> HTTP error table (service/errors.py), and the gateway answering through it."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest

from engine.protocol import EngineDeadError, InvalidRequestError
from service.admission import AdmissionRejected
from service.errors import APIError, api_error
from service.rate_limit import RateLimited
from tests.unit.fake_engine import BAD_TEMPLATE, FakeEngine
from tests.unit.test_gateway_mechanics import completion, run, running_app


class _NarrowerInvalid(InvalidRequestError):
    pass


@pytest.mark.parametrize("error,expected", [
    (InvalidRequestError("bad stop", param="stop"), (400, "invalid_request_error", "stop", "invalid_value", "bad stop")),
    (_NarrowerInvalid("bad", param="x"), (400, "invalid_request_error", "x", "invalid_value", "bad")),
    (EngineDeadError("gone"), (503, "service_unavailable_error", None, "engine_dead", "engine failed: gone")),
    (RateLimited("budget", 7), (429, "rate_limit_error", None, "rate_limit_exceeded", "budget")),
    (AdmissionRejected("full"), (429, "rate_limit_error", None, "rate_limit_exceeded", "full")),
    (TimeoutError(), (408, "timeout_error", None, "request_timeout",
                      "the request did not finish within its deadline")),
])
def test_known_errors_map_to_their_status(error, expected):
    told = api_error(error, retry_after_s=3)
    assert (told.status_code, told.type, told.param, told.code, told.message) == expected


def test_retry_after_comes_from_the_error_or_the_server():
    assert api_error(RateLimited("budget", 7), retry_after_s=3).headers == {"Retry-After": "7"}
    assert api_error(AdmissionRejected("full"), retry_after_s=3).headers == {"Retry-After": "3"}
    assert api_error(AdmissionRejected("full")).headers is None  # mid-stream: no header can be sent


def test_api_errors_pass_through_and_unknown_errors_are_not_mapped():
    error = APIError(413, "too big", code="request_too_large")
    assert api_error(error) is error
    assert api_error(ValueError("surprise")) is None


@pytest.mark.parametrize("stream", [False, True])
def test_chat_template_error_is_400_naming_messages(stream):
    body = {"model": "fake", "messages": [{"role": "user", "content": BAD_TEMPLATE}], "stream": stream}

    async def scenario():
        async with running_app(FakeEngine()) as (_, client):
            return await client.post("/v1/chat/completions", json=body)

    response = run(scenario())
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "messages")


def test_admission_refusal_carries_the_servers_retry_after():
    async def scenario():
        async with running_app(FakeEngine(step_s=0.01), max_running_requests=1, max_queued_requests=0,
                               retry_after_s=9) as (app, client):
            busy = asyncio.create_task(client.post("/v1/completions", json=completion(max_tokens=30)))
            while app.state.server.admission.in_flight == 0:
                await asyncio.sleep(0.005)
            refused = await client.post("/v1/completions", json=completion())
            return refused, await busy

    refused, served = run(scenario())
    assert refused.status_code == 429 and refused.headers["retry-after"] == "9"
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert served.status_code == 200


def _service_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "service":
            names |= {f"service.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("service."):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.startswith("service.")}
    return names


def test_service_modules_import_no_circle():
    """TYPE_CHECKING imports count too: a circle there is one refactoring away from a real one."""
    root = Path(__file__).resolve().parents[2] / "service"
    graph = {f"service.{path.stem}": _service_imports(path) for path in root.glob("*.py")}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join((*path, module))
        if module in done:
            return
        for imported in graph.get(module, ()):
            visit(imported, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())
