"""Start a server process on loopback and wait until it serves: shared by benchmarks and tests."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, log_path: Path, timeout_s: float = 900) -> None:
    """Poll ``url`` until it answers 200; fail early, with the log's tail, if the process exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server not ready after {timeout_s:.0f}s:\n{log_path.read_text()[-4000:]}")


def start_server(command: list[str], log_path: Path, ready_url: str, env: dict[str, str] | None = None,
                 timeout_s: float = 900, cwd: Path | None = None) -> subprocess.Popen:
    """Run ``command`` (in ``cwd``) with output to ``log_path``; return once ``ready_url`` answers 200."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env or os.environ.copy(), cwd=cwd)
    try:
        wait_ready(ready_url, process, log_path, timeout_s)
    except BaseException:
        process.kill()
        raise
    return process


def stop_server(process: subprocess.Popen, timeout_s: float = 60) -> None:
    """SIGTERM (leanserve drains, then exits), SIGKILL if it outlives ``timeout_s``."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
