"""vLLM's ngram proposer leaves the model both of its OpenMP threads (engine/plugins/speculative/numba_threads.py).

Each check runs in a fresh interpreter set up like a vLLM CPU worker (two OpenMP threads bound to two
cores, as vLLM's ``OMPProcessManager`` does with GNU OpenMP), runs one real ngram proposal through vLLM's
``NgramProposer.batch_propose`` (numba ``prange``, ``set_num_threads(1)`` around it), then multiplies
matrices with torch for a second and reports the CPU time of each thread. Under numba's default OpenMP
layer the second thread stops computing after the proposal (the loss this module fixes); with the
speculative plugin's ``register_in_vllm`` both keep computing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from engine.plugins.speculative.numba_threads import THREADING_LAYER_ENV, keep_numba_off_openmp

WORKER_LIKE = r"""
import json, os, sys, time
from types import SimpleNamespace
cpus = sorted(os.sched_getaffinity(0))[:2]
os.environ.update(OMP_NUM_THREADS="2", GOMP_CPU_AFFINITY=" ".join(map(str, cpus)))
if sys.argv[1] == "plugin":
    from engine.plugins.speculative.plugin import PLUGIN
    PLUGIN.register_in_vllm(PLUGIN.settings_model(speculative="ngram"))
import numpy as np, psutil, torch
from numba import threading_layer
from vllm.v1.spec_decode.ngram_proposer import NgramProposer

tokens = np.zeros((2, 64), dtype=np.int32)
tokens[0, :12] = [1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6]  # a repeated phrase
tokens[1, :3] = [7, 8, 9]  # nothing repeated
proposer = SimpleNamespace(num_tokens_threshold=8192, num_numba_thread_available=1, min_n=2, max_n=4,
                           max_model_len=64, valid_ngram_draft=np.zeros((2, 4), dtype=np.int32),
                           valid_ngram_num_drafts=np.zeros(2, dtype=np.int32))
drafts = NgramProposer.batch_propose(proposer, 2, [0, 1], np.array([12, 3]), tokens, 4)

x = torch.randn(768, 768)
process = psutil.Process()
before = {t.id: t.user_time + t.system_time for t in process.threads()}
started = time.monotonic()
while time.monotonic() - started < 1.5:
    torch.mm(x, x)
after = {t.id: t.user_time + t.system_time for t in process.threads()}
busy = sorted((after[i] - before.get(i, 0.0) for i in after), reverse=True)
print(json.dumps({"drafts": drafts, "layer": threading_layer(), "thread_cpu_s": busy[:3]}))
"""


def _run_worker_like(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != THREADING_LAYER_ENV}
    done = subprocess.run([sys.executable, "-c", WORKER_LIKE, mode], capture_output=True, text=True, env=env,
                          timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to see a second OpenMP thread")
def test_the_model_keeps_both_openmp_threads_after_an_ngram_proposal():
    result = _run_worker_like("plugin")
    assert result["drafts"] == [[1, 2, 3, 4], []]  # the proposal ran: "3 4 5 6" was seen before, then "1 2 3 4"
    assert result["layer"] == "workqueue"
    first, second = result["thread_cpu_s"][:2]
    assert second > 0.25 * first, f"one OpenMP thread computes, the other idles: {result['thread_cpu_s']}"


def _loaded_numba_config(monkeypatch) -> SimpleNamespace:
    """numba's configuration module as the plugin finds it when numba is already loaded (a stand-in:
    importing numba here would break vLLM's Triton kernel overrides for the tests that follow)."""
    config = SimpleNamespace(THREADING_LAYER="default")
    monkeypatch.setitem(sys.modules, "numba.core.config", config)
    return config


def test_a_threading_layer_the_user_chose_is_kept(monkeypatch):
    monkeypatch.setenv(THREADING_LAYER_ENV, "tbb")
    config = _loaded_numba_config(monkeypatch)
    assert keep_numba_off_openmp() == "tbb"
    assert config.THREADING_LAYER == "tbb"


def test_numba_loaded_before_the_plugin_still_gets_the_layer(monkeypatch):
    monkeypatch.delenv(THREADING_LAYER_ENV, raising=False)
    config = _loaded_numba_config(monkeypatch)
    assert keep_numba_off_openmp() == "workqueue"
    assert config.THREADING_LAYER == "workqueue" and os.environ[THREADING_LAYER_ENV] == "workqueue"
