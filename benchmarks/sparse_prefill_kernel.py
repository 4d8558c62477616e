"""One layer's prefill attention on this CPU: vLLM's own dense kernel against the plugin's sparse path.

    python -m benchmarks.sparse_prefill_kernel --lengths 4096,8192,16384,32768 [--inputs FILE.pt]

What the server really runs: dense is vLLM's C++ CPU kernel (``ops.cpu_attention_with_kv_cache``) over every
token; sparse is the plugin's path (scoring, selection, the kept tokens through the same C++ kernel,
``engine/plugins/sparse_prefill/paged_attend.py``, and the dense window rows). Shapes default to
Qwen2.5-Coder-0.5B's (14 query heads, 2 key/value heads, head size 64), float32. Inputs are the kernel
benchmark's synthetic ones or a captured layer (``kernels.token_sparse_attention.capture``, sliced). Median of
``--rounds`` rounds, the two alternating. (``kernels/token_sparse_attention/benchmark.py`` compares against
PyTorch's SDPA and FlashAttention instead, for GPUs.) Writes ``<out>/kernel_vllm_cpu.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from engine.plugins.sparse_prefill.paged_attend import attend_kept_paged
from kernels.token_sparse_attention import SparsityConfig, vectorised
from kernels.token_sparse_attention.benchmark import file_inputs, synthetic_inputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="4096,8192,16384,32768")
    parser.add_argument("--inputs", default="synthetic")
    parser.add_argument("--heads", type=int, default=14)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--coverage", type=float, default=SparsityConfig.coverage)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sparse_prefill"))
    args = parser.parse_args(argv)
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    attend = functools.partial(attend_kept_paged, isa=_get_attn_isa(torch.float32, 128, 64, "auto"), block_size=128)
    config = SparsityConfig(coverage=args.coverage)
    rows = []
    for length in (int(x) for x in args.lengths.split(",")):
        inputs = synthetic_inputs(length, args.heads, args.kv_heads, 64) if args.inputs == "synthetic" \
            else file_inputs(Path(args.inputs), length)
        if inputs is None:
            continue
        query, key, value, scale = inputs
        every = torch.arange(length).expand(query.shape[1], length)
        full = torch.full((query.shape[1],), length)
        out = torch.empty_like(query)
        dense = functools.partial(attend, query, key, value, every, full, scale, out)
        sparse = functools.partial(vectorised.token_sparse_attention, query, key, value, scale, config, out, attend)
        dense(), sparse()
        times = {"dense": [], "sparse": []}
        for round_index in range(args.rounds):
            for name in (("dense", "sparse") if round_index % 2 == 0 else ("sparse", "dense")):
                started = time.perf_counter()
                (dense if name == "dense" else sparse)()
                times[name].append(time.perf_counter() - started)
        _, counts = sparse()
        row = {"length": length, **{f"{k}_ms": statistics.median(v) * 1000 for k, v in times.items()},
               "kept_fraction": counts.double().mean().item() / length,
               "work_fraction": counts.double().square().mean().item() / length**2}
        row["speedup"] = row["dense_ms"] / row["sparse_ms"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernel_vllm_cpu.json").write_text(json.dumps({
        "rows": rows, "inputs": args.inputs, "heads": args.heads, "kv_heads": args.kv_heads, "coverage": args.coverage,
        "command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
