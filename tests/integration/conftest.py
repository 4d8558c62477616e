"""One real leanserve server (real vLLM, real default model) shared by the whole session."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from benchmarks.local_server import free_port, start_server, stop_server
from engine.catalogue import resolve_model
from service.settings import Settings
from tests.otlp_receiver import OtlpReceiver

API_KEY = "test-key-1"
SECOND_API_KEY = "test-key-2"
MAX_MODEL_LEN = 2048
MAX_BODY_BYTES = 256 * 1024
MAX_RUNNING = 4
MAX_QUEUED = 4
_START_TIMEOUT_S = 600


@dataclass(frozen=True)
class Server:
    base_url: str
    model: str
    model_dir: Path
    process: subprocess.Popen
    log_path: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}"}

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def serve_command(port: int, *flags: str) -> list[str]:
    return [sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--enforce-eager", *flags]


@pytest.fixture(scope="session")
def otlp() -> OtlpReceiver:
    """An OTLP trace receiver the session's servers export to (tests/otlp_receiver.py)."""
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="session")
def server(otlp: OtlpReceiver) -> Server:
    port = free_port()
    log_path = Path(tempfile.mkdtemp(prefix="leanserve-test-")) / "server.log"
    command = serve_command(
        port,
        "--api-key", API_KEY, "--api-key", SECOND_API_KEY, "--max-model-len", str(MAX_MODEL_LEN),
        "--max-body-bytes", str(MAX_BODY_BYTES), "--max-running-requests", str(MAX_RUNNING),
        "--max-queued-requests", str(MAX_QUEUED), "--kv-cache-gib", "1", "--otlp-traces-endpoint", otlp.endpoint,
    )
    base_url = f"http://127.0.0.1:{port}"
    process = start_server(command, log_path, f"{base_url}/ready", timeout_s=_START_TIMEOUT_S)
    try:
        resolved = resolve_model("default", Settings().cache_dir)
        yield Server(base_url, resolved.name, Path(resolved.path), process, log_path)
    finally:
        stop_server(process)


@pytest.fixture(scope="session")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def tokenizer(server: Server):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(server.model_dir)


def scrape(server: Server) -> dict[tuple[str, frozenset], float]:
    """Every sample on /metrics as {(name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    """One sample's value (0 when absent, as for a counter never incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)
