"""What the sparse attention (engine core) and the gateway's channel agree on; imports nothing heavy.

Each sparse layer pass of a prompt makes one record: which request (a hash of the
gateway's request id), which layer, the prompt's length, how many tokens a head kept (mean and root mean
square over heads: the attention work goes with the square), and the seconds the sparse attention took. The step's records leave in one datagram after its last
sparse layer, before the step's output leaves the engine core, and a Unix datagram is in the
receiver's queue once ``send`` returns, so a gateway that drains the socket when the request
finishes has every record of it.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct

SOCKET_ENV = "LEANSERVE_SPARSE_PREFILL_SOCKET"  # the channel's socket path, inherited by vLLM's processes
RECORD = struct.Struct("<16sHIIIf")  # request tag, layer, prompt tokens, kept per head (mean, root mean square), seconds


def request_tag(request_id: str) -> bytes:
    """16 bytes naming a gateway request id inside vLLM (both sides compute it)."""
    return hashlib.blake2b(request_id.encode(), digest_size=16).digest()


class RecordSender:
    """The engine core's end: one datagram per engine step; never fails a forward pass.

    A Unix datagram socket queues only ``net.unix.max_dgram_qlen`` (10) datagrams, so the records of
    a step travel together, and a full queue makes ``send`` wait briefly for the gateway to read
    (``SEND_TIMEOUT_S``) before it gives the figures up.
    """

    SEND_TIMEOUT_S = 0.2

    def __init__(self, path: str | None = None) -> None:
        self._path = path if path is not None else os.environ.get(SOCKET_ENV)
        self._socket: socket.socket | None = None
        self.dropped = 0

    def send(self, records: list[tuple[bytes, int, int, int, int, float]]) -> None:
        """Records of (tag, layer, prompt tokens, kept mean, kept rms, seconds), in one datagram."""
        if not self._path or not records:
            return
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.settimeout(self.SEND_TIMEOUT_S)
            self._socket.sendto(b"".join(RECORD.pack(*record) for record in records), self._path)
        except OSError:  # the gateway is gone or not reading: figures are lost, answers are not
            self.dropped += len(records)
