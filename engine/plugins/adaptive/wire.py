"""What the entropy tap (engine core) and the channel (gateway) agree on; imports nothing heavy."""

from __future__ import annotations

import struct

SOCKET_ENV = "LEANSERVE_ADAPTIVE_ENTROPY_SOCKET"  # the channel's socket path, inherited by vLLM's processes
TAP_KEY = "tap"  # SamplingParams.extra_args["adaptive"]["tap"]: the request's tag, 32 hex digits
RECORD = struct.Struct("<16sid")  # tag (16 bytes), output position, entropy in nats
MAX_RECORDS = 4096  # per datagram, well under the socket's size limit
