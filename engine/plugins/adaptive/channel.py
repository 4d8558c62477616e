"""The gateway's end of the entropy side channel: datagrams in, per-request entropies out.

``EntropyTap`` (entropy.py) sends ``(tag, position, H)`` records from vLLM's engine core;
the token of the same position reaches the gateway by vLLM's own output path, so the two
race. ``EntropyChannel.entropy`` waits (briefly) for the record of a position; a record for
a position is overwritten by a later one for it (a chunked prefill samples, and discards,
a token on every chunk but the last).
"""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import uuid
from collections import defaultdict

from engine.plugins.adaptive.wire import RECORD, SOCKET_ENV


class EntropyChannel:
    """Binds the socket, publishes its path for vLLM's processes, and files incoming records by tag."""

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="leanserve-entropy-")
        self.path = os.path.join(self._dir, "tap.sock")
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(self.path)
        self._socket.setblocking(False)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._values: dict[bytes, dict[int, float]] = defaultdict(dict)
        self._arrived: dict[bytes, asyncio.Event] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def publish(self) -> None:
        """Make the path visible to engine processes started from now on (they inherit the environment)."""
        os.environ[SOCKET_ENV] = self.path

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._socket.fileno(), self._drain)

    def open(self) -> str:
        """A new tag for one engine request (hex, as ``SamplingParams.extra_args`` carries it)."""
        tag = uuid.uuid4().bytes
        self._arrived[tag] = asyncio.Event()
        return tag.hex()

    def close(self, tag: str) -> None:
        key = bytes.fromhex(tag)
        self._values.pop(key, None)
        self._arrived.pop(key, None)

    async def entropy(self, tag: str, position: int, timeout_s: float = 5.0) -> float | None:
        """The entropy of output position ``position`` of ``tag``; None if it never arrived."""
        key = bytes.fromhex(tag)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while position not in self._values.get(key, {}):
            event = self._arrived.get(key)
            remaining = deadline - asyncio.get_running_loop().time()
            if event is None or remaining <= 0:
                return None
            event.clear()
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                return None
        return self._values[key][position]

    def _drain(self) -> None:
        while True:
            try:
                payload = self._socket.recv(RECORD.size * 8192)
            except BlockingIOError:
                return
            for tag, position, value in RECORD.iter_unpack(payload):
                if tag in self._arrived:
                    self._values[tag][position] = value
                    self._arrived[tag].set()

    def shutdown(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._socket.fileno())
        self._socket.close()
        if os.path.exists(self.path):
            os.unlink(self.path)
        os.rmdir(self._dir)
