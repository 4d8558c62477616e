"""What the sparse attention (engine core) and the gateway's channel agree on; imports nothing heavy.

Each sparse layer pass of a prompt sends one datagram record: which request (a hash of the
gateway's request id), which layer, the prompt's length, how many tokens every head kept, and
the seconds the sparse attention took. The attention sends it before the step's output leaves
the engine core, and a Unix datagram is in the receiver's queue once ``send`` returns, so a
gateway that drains the socket when the request finishes has every record of it.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct

SOCKET_ENV = "LEANSERVE_SPARSE_PREFILL_SOCKET"  # the channel's socket path, inherited by vLLM's processes
RECORD = struct.Struct("<16sHIIf")  # request tag, layer, prompt tokens, tokens kept per head, seconds


def request_tag(request_id: str) -> bytes:
    """16 bytes naming a gateway request id inside vLLM (both sides compute it)."""
    return hashlib.blake2b(request_id.encode(), digest_size=16).digest()


class RecordSender:
    """The engine core's end: fire-and-forget datagrams; never blocks or fails a forward pass."""

    def __init__(self, path: str | None = None) -> None:
        self._path = path if path is not None else os.environ.get(SOCKET_ENV)
        self._socket: socket.socket | None = None
        self.dropped = 0

    def send(self, tag: bytes, layer: int, tokens: int, kept: int, seconds: float) -> None:
        if not self._path:
            return
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)
            self._socket.sendto(RECORD.pack(tag, layer, tokens, kept, seconds), self._path)
        except OSError:  # the gateway is gone or its queue is full: figures are lost, answers are not
            self.dropped += 1
