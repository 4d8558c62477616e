"""The gateway's end of the sparse-prefill records: a Unix datagram socket, read when a request ends.

``wire.RecordSender`` in the engine core sends a datagram of records per step; the records of a
request are in this socket's queue before the request's last output reaches the gateway (wire.py
says why), so ``take`` drains what is queued and hands back that request's records. The event
loop also reads the socket as datagrams arrive (``watch``): its queue holds only a few.
Records of requests that never finish (aborted) are forgotten oldest first.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import socket
import tempfile
from collections import OrderedDict
from dataclasses import dataclass

from engine.plugins.sparse_prefill.wire import RECORD, SOCKET_ENV, request_tag

MAX_PENDING_REQUESTS = 4096


@dataclass(frozen=True)
class LayerPass:
    """One sparse layer's work on one prompt."""

    layer: int
    tokens: int  # prompt length L
    kept: int  # tokens a head attended over, on average over the layer's heads
    kept_rms: int  # their root mean square: a head's attention work goes with its count squared
    seconds: float  # sparse attention time (score, select, attend, scatter)


class RecordChannel:
    """Binds the socket, publishes its path for vLLM's processes, and files records by request."""

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="leanserve-sparse-")
        self.path = os.path.join(self._dir, "records.sock")
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(self.path)
        self._socket.setblocking(False)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._pending: OrderedDict[bytes, list[LayerPass]] = OrderedDict()
        self._loop: asyncio.AbstractEventLoop | None = None
        atexit.register(self.close)

    def publish(self) -> None:
        """Make the path visible to engine processes started from now on (they inherit the environment)."""
        os.environ[SOCKET_ENV] = self.path

    def watch(self) -> None:
        """Read records as they arrive from now on (called in the event loop; once is enough)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self._socket.fileno(), self._drain)

    def take(self, request_id: str) -> list[LayerPass]:
        """Every record of ``request_id`` received so far, removed from the channel."""
        self._drain()
        return self._pending.pop(request_tag(request_id), [])

    def _drain(self) -> None:
        while True:
            try:
                payload = self._socket.recv(1 << 20)
            except (BlockingIOError, OSError):
                return
            for tag, *figures in RECORD.iter_unpack(payload):
                self._pending.setdefault(tag, []).append(LayerPass(*figures))
                self._pending.move_to_end(tag)
            while len(self._pending) > MAX_PENDING_REQUESTS:
                self._pending.popitem(last=False)

    def close(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._socket.fileno())
            self._loop = None
        if self._socket.fileno() < 0:
            return
        self._socket.close()
        if os.path.exists(self.path):
            os.unlink(self.path)
        if os.path.isdir(self._dir):
            os.rmdir(self._dir)
