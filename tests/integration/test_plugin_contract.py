"""The plugin contract end to end: a plugin loaded by module path (tests/plugins/tally) gets its
flag, its per-request option, its ``usage`` figure and its metric on a real server, and vLLM's
engine-core process runs its registration (leanserve's ``vllm.general_plugins`` entry point).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import httpx
import openai
import pytest

from benchmarks.local_server import free_port, start_server, stop_server

from .conftest import MAX_MODEL_LEN, Server, sample, scrape, serve_command

WEIGHT = 2.5


@pytest.fixture(scope="module")
def tally_server(server: Server):
    """A second real server with the test plugin; ``server`` is depended on so both never load at once."""
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="leanserve-tally-"))
    command = serve_command(port, "--plugins", "tests.plugins.tally", "--tally-weight", str(WEIGHT),
                            "--tally-marker-dir", str(workdir / "markers"), "--max-model-len", str(MAX_MODEL_LEN),
                            "--kv-cache-gib", "1")
    base_url = f"http://127.0.0.1:{port}"
    process = start_server(command, workdir / "server.log", f"{base_url}/ready", timeout_s=600)
    try:
        yield Server(base_url, server.model, server.model_dir, process, workdir / "server.log"), workdir / "markers"
    finally:
        stop_server(process)


@pytest.fixture(scope="module")
def tally_client(tally_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{tally_server[0].base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def _chat(client: openai.OpenAI, model: str, **extra):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Name three colours."}], max_tokens=12, temperature=0,
        **extra,
    )


def test_usage_and_metric_follow_the_per_request_option(tally_server, tally_client):
    server, _ = tally_server
    before = scrape(server)
    reply = _chat(tally_client, server.model, extra_body={"tally": {"label": "blue"}})
    after = scrape(server)
    tally = reply.usage.model_extra["tally"]
    assert tally == {"tokens": reply.usage.completion_tokens, "weighted_tokens": WEIGHT * reply.usage.completion_tokens}
    moved = (sample(after, "leanserve_tally_weighted_tokens_total", model=server.model, label="blue")
             - sample(before, "leanserve_tally_weighted_tokens_total", model=server.model, label="blue"))
    assert moved == WEIGHT * reply.usage.completion_tokens


def test_without_the_option_the_plugin_reports_nothing(tally_server, tally_client):
    server, _ = tally_server
    reply = _chat(tally_client, server.model)
    assert "tally" not in (reply.usage.model_extra or {})
    assert reply.choices[0].message.content  # the plugin changes nothing else


def test_streamed_usage_and_several_prompts_add_up(tally_server, tally_client):
    server, _ = tally_server
    stream = tally_client.completions.create(
        model=server.model, prompt=["The sky is", "Water is"], max_tokens=6, n=2, temperature=0.7, seed=1,
        stream=True, stream_options={"include_usage": True}, extra_body={"tally": {"label": "multi"}},
    )
    usage = [chunk.usage for chunk in stream if chunk.usage is not None][-1]
    assert usage.completion_tokens > 6  # four choices
    assert usage.model_extra["tally"] == {"tokens": usage.completion_tokens,
                                          "weighted_tokens": WEIGHT * usage.completion_tokens}


@pytest.mark.parametrize(("option", "param"), [
    ({"label": "Not Allowed"}, "tally.label"),
    ({"label": "ok", "colour": "red"}, "tally.colour"),
    ("blue", "tally"),
])
def test_a_bad_option_is_a_400_naming_the_field(tally_server, option, param):
    server, _ = tally_server
    body = {"model": server.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "tally": option}
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_the_engine_core_process_ran_the_registration(tally_server):
    server, markers = tally_server
    pids = {int(path.name): path.read_text() for path in markers.iterdir()}
    assert set(pids.values()) == {str(WEIGHT)}  # the flag's value reached every process
    assert len(pids) >= 2 and set(pids) - {server.process.pid}, pids  # the gateway and at least one vLLM process


def test_the_plugin_flag_is_documented_in_help():
    import subprocess
    import sys

    help_text = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--plugins", "tests.plugins.tally",
                                "--help"], capture_output=True, text=True, timeout=120).stdout
    assert "--tally-weight" in help_text and "--tally-marker-dir" in help_text
