"""Which prompts of an engine step take the sparse path, from the step's attention metadata alone.

A prompt goes sparse when its whole prompt is in this step (no cached prefix, not a later chunk),
it has at least ``min_prompt`` tokens, and its request did not opt out. Everything else in the
step (decodes, short prompts, the new tokens after a prefix-cache hit) stays with vLLM's dense
kernel. The plugin turns chunked prefill off, so a long prompt always arrives whole.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from engine.plugin import REQUEST_ID_KEY
from kernels.token_sparse_attention import SparsityConfig

OPTIONS_KEY = "sparse_prefill"  # SamplingParams.extra_args["sparse_prefill"]: {"enabled", "coverage", "window"}


@dataclass(frozen=True)
class EngineSparsity:
    """The server's settings, as the attention backend needs them inside vLLM."""

    layers: frozenset[int]
    sparsity: SparsityConfig
    min_prompt: int


@dataclass(frozen=True)
class SparseRow:
    """One prompt of the step on the sparse path: its token rows and how sparse it may be."""

    start: int
    end: int
    request_id: str | None
    sparsity: SparsityConfig


@dataclass(frozen=True)
class StepPlan:
    sparse: tuple[SparseRow, ...]
    dense_requests: tuple[int, ...]  # request rows left to the dense kernel


def plan_step(query_start_loc: Sequence[int], seq_lens: Sequence[int],
              extra_args: Sequence[Mapping[str, Any] | None], config: EngineSparsity) -> StepPlan:
    """Split a step's requests (rows in input-batch order) into sparse prompts and the rest."""
    sparse: list[SparseRow] = []
    dense: list[int] = []
    for row, args in enumerate(extra_args):
        start, end = int(query_start_loc[row]), int(query_start_loc[row + 1])
        options = (args or {}).get(OPTIONS_KEY) or {}
        whole_prompt = end - start == int(seq_lens[row])
        if whole_prompt and end - start >= config.min_prompt and options.get("enabled", True):
            sparsity = config.sparsity
            if options.get("coverage") is not None:
                sparsity = replace(sparsity, coverage=float(options["coverage"]))
            if options.get("window") is not None:
                sparsity = replace(sparsity, window=int(options["window"]))
            sparse.append(SparseRow(start, end, (args or {}).get(REQUEST_ID_KEY), sparsity))
        else:
            dense.append(row)
    return StepPlan(tuple(sparse), tuple(dense))
