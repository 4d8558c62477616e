"""Exact next-token entropy, measured inside vLLM as each token is sampled.

Entropy Adaptive Decoding (Ruan et al., "Entropy Adaptive Decoding: Dynamic Model
Switching for Efficient Inference") switches on the Shannon entropy of the active
model's *full* next-token distribution, before temperature. vLLM 0.32's V1 runner has
no per-token side output, and asking for the full distribution as logprobs costs ~1.2 MB
and 150k Python objects per token in the gateway. So this pass-through logits processor
runs in the engine core, reads the raw fp32 logits of the rows a request tagged
(``SamplingParams.extra_args["adaptive"]["tap"]``), and computes per row, in one O(V) pass,

    H = -sum_i p_i log p_i,   log p = log_softmax(z)        (nats)

It returns the logits untouched (so sampling is unchanged) and sends one datagram per
engine step, ``(tag, position, H)`` per tagged row, to the Unix socket the gateway bound
(``channel.py``); the path reaches the engine core in an environment variable.
vLLM refuses custom logits processors when speculative decoding is on.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

from engine.plugins.adaptive.wire import MAX_RECORDS, RECORD, SOCKET_ENV, TAP_KEY

if TYPE_CHECKING:
    from vllm.config import VllmConfig


def entropy_nats(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of softmax(logits) along the last axis, in float32: [rows, V] -> [rows]."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)  # [rows, V]; stable where logZ - E[z] would cancel
    return (-(log_probs.exp() * log_probs).sum(dim=-1)).clamp_min(0.0)  # [rows]


class EntropyTap(LogitsProcessor):
    """Measures, never changes: the entropy of each tagged row's next-token distribution."""

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        del vllm_config, device, is_pin_memory
        self._rows: dict[int, tuple[bytes, list[int]]] = {}  # batch row -> (tag, live output token list)
        self._path = os.environ.get(SOCKET_ENV)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) if self._path else None

    def is_argmax_invariant(self) -> bool:
        return False  # so that vLLM calls it for greedy requests too

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for row in batch_update.removed:
            self._rows.pop(row, None)
        for row, params, _, output_token_ids in batch_update.added:
            tag = ((params.extra_args or {}).get("adaptive") or {}).get(TAP_KEY)
            if tag:
                self._rows[row] = (bytes.fromhex(tag), output_token_ids)
            else:
                self._rows.pop(row, None)
        for first, second, directionality in batch_update.moved:
            moving = self._rows.pop(first, None)
            staying = self._rows.pop(second, None)
            if directionality.name == "SWAP" and staying is not None:
                self._rows[first] = staying
            if moving is not None:
                self._rows[second] = moving

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self._rows or self._socket is None:
            return logits
        rows = sorted(row for row in self._rows if row < logits.shape[0])
        entropies = entropy_nats(logits[rows]).tolist()
        payload = b"".join(
            RECORD.pack(self._rows[row][0], len(self._rows[row][1]), value) for row, value in zip(rows, entropies)
        )
        for start in range(0, len(payload), RECORD.size * MAX_RECORDS):
            try:
                self._socket.sendto(payload[start:start + RECORD.size * MAX_RECORDS], self._path)
            except OSError:
                return logits  # the gateway went away or is slow: never fail the engine step
        return logits
