"""Token Sparse Attention (TSA) against dense causal attention, per prompt length.

    python -m kernels.token_sparse_attention.benchmark --lengths 4096,8192,16384,32768 \\
        --out benchmarks/results/token_sparse_attention [--device cpu|cuda] [--inputs synthetic|FILE.pt]

One prefill layer: dense causal attention over the whole prompt (PyTorch SDPA with grouped-query
heads, or FlashAttention's ``flash_attn_func`` when it imports on a GPU) against the sparse path
(``vectorised`` on a CPU, ``triton_kernels`` on CUDA): score, select, attend the kept tokens. Per
length: median milliseconds of ``--rounds`` rounds after one warm-up, the two timed in alternating
order each round; the sparse path's scoring/selection/attention split (each stage timed on its own);
speed-up; the kept fraction mean(counts)/L (each head keeps its own count) and the attention-work
fraction sum(counts²)/(H·L²) (what the attention stage costs against dense); the largest
|sparse - dense| over each head's kept rows and over the last ``window`` rows (informational: a kept
row attends over fewer keys than dense, so it differs by the mass it lost; only the window's rows
are promised ≥ 1 - coverage of theirs, on average).

``--inputs synthetic`` (default): random Q/K/V, unit-variance components, with the concentration
real language models show, so that ``coverage`` keeps a fraction of the tokens (``synthetic_inputs``):
* heavy hitters: every key/value head has a direction u; queries get √D·u, key t gets a_t·u with
  a_t ~ 1.25·Exp(1), so its logit gains a_t and its weight e^{a_t} has a power-law tail;
* an attention sink: token 0 gets a_0 = 12;
* locality: queries and keys share a random walk smoothed over 33 positions (weight 0.8), so
  neighbours attend to each other.
``--inputs FILE.pt``: ``torch.save`` of a dict with query [L, H, D], key [L, H_kv, D],
value [L, H_kv, D] and float ``scale`` captured from a real model (``capture``: ``python -m
kernels.token_sparse_attention.capture --model DIR --layer N --tokens T --out FILE.pt``); each length
takes its first L tokens (longer lengths are skipped; ``--heads``/``--kv-heads``/``--head-dim`` are ignored).
Writes ``<out>/kernel_<device>.json`` and ``<out>/kernel_<device>.png``.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from kernels.token_sparse_attention import token_sparse_attention, vectorised
from kernels.token_sparse_attention.reference import SparsityConfig

Inputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]  # query [L, H, D], key/value [L, H_kv, D], scale


def synthetic_inputs(length: int, heads: int, kv_heads: int, dim: int, seed: int = 0) -> Inputs:
    """Random Q/K/V with heavy hitters, a sink and local correlation (module docstring), float32 on the CPU."""
    generator = torch.Generator().manual_seed(seed)
    width = 33
    noise = torch.randn(kv_heads * dim, 1, length + width - 1, generator=generator)
    walk = F.conv1d(noise, torch.ones(1, 1, width) / math.sqrt(width))  # unit variance, correlated over ±32
    walk = walk.reshape(kv_heads, dim, length).permute(2, 0, 1)  # [L, H_kv, D]
    direction = F.normalize(torch.randn(kv_heads, dim, generator=generator), dim=-1)  # [H_kv, D]
    importance = 1.25 * torch.empty(length, kv_heads).exponential_(generator=generator)  # [L, H_kv] logit boost
    importance[0] = 12.0  # the sink
    key = torch.randn(length, kv_heads, dim, generator=generator) + 0.8 * walk + importance[..., None] * direction
    shared = (0.8 * walk + math.sqrt(dim) * direction).repeat_interleave(heads // kv_heads, dim=1)  # [L, H, D]
    query = torch.randn(length, heads, dim, generator=generator) + shared
    value = torch.randn(length, kv_heads, dim, generator=generator)
    return query, key, value, dim ** -0.5


@functools.cache
def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu")


def file_inputs(path: Path, length: int) -> Inputs | None:
    """The first ``length`` tokens of a captured layer, or None when the capture is shorter."""
    captured = _load(path)
    if captured["query"].shape[0] < length:
        return None
    return (captured["query"][:length], captured["key"][:length], captured["value"][:length],
            float(captured["scale"]))


def dense_attention(device: str, dtype: torch.dtype) -> tuple[str, Callable[..., torch.Tensor]]:
    """(name, attention(q [L, H, D], k, v [L, H_kv, D], scale) -> [L, H, D]): FlashAttention on a GPU in
    16-bit when it imports, else SDPA."""
    if device == "cuda" and dtype in (torch.float16, torch.bfloat16):
        try:
            from flash_attn import flash_attn_func

            return "flash_attn", lambda q, k, v, scale: flash_attn_func(
                q[None], k[None], v[None], softmax_scale=scale, causal=True)[0]
        except (ImportError, OSError):  # not installed, or built for another torch/CUDA
            pass

    def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        q, k, v = (t.transpose(0, 1) for t in (q, k, v))  # [H, L, D]
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True).transpose(0, 1)

    return "torch_sdpa", sdpa


def sparse_stages(device: str, config: SparsityConfig) -> tuple[Callable, Callable, Callable]:
    """The sparse path in three calls: scores(q, k, scale) -> [H, L], select(scores) -> (kept [H, k_max],
    counts [H]), attend(q, k, v, kept, counts, scale) -> [L, H, D]."""
    select = functools.partial(vectorised.select_tokens, config=config)  # on the scores' device
    if device == "cuda":
        from kernels.token_sparse_attention import triton_kernels as tk

        return (lambda q, k, scale: tk.token_scores_triton(q, k, config.window, scale), select,
                tk.sparse_attention_triton)

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kept: torch.Tensor, counts: torch.Tensor,
               scale: float) -> torch.Tensor:
        return vectorised.attend_kept(q, k, v, kept, counts, scale, q.new_empty(*q.shape[:2], v.shape[2]))

    return lambda q, k, scale: vectorised.token_scores(q, k, config.window, scale), select, attend


def kept_mask(kept: torch.Tensor, counts: torch.Tensor, length: int) -> torch.Tensor:
    """kept [H, k_max] (-1 pads past counts[h]), counts [H] -> [L, H] bool: True at each head's kept rows."""
    columns = torch.arange(kept.shape[1], device=kept.device)
    positions = torch.where(columns[None, :] < counts[:, None], kept, length)  # padding -> a spare column
    mask = torch.zeros(kept.shape[0], length + 1, dtype=torch.bool, device=kept.device)
    return mask.scatter_(1, positions, True)[:, :length].T


def _ms(call: Callable[[], object], device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    call()
    if device == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - started)


def measure(inputs: Inputs, config: SparsityConfig, device: str, rounds: int) -> dict[str, object]:
    """One length: medians of dense, sparse and the sparse stages, kept and work fractions, kept-row difference."""
    query, key, value, scale = inputs
    dense_name, dense = dense_attention(device, query.dtype)
    score, select, attend = sparse_stages(device, config)
    dense_out = dense(query, key, value, scale)  # warm-up, and the outputs compared below
    sparse_out, counts = token_sparse_attention(query, key, value, scale, config)
    scores = score(query, key, scale)
    kept, selected = select(scores)  # the path's own selection (its dense shortcuts also keep every token)
    assert torch.equal(selected, counts), (selected.tolist(), counts.tolist())
    attend(query, key, value, kept, counts, scale)
    calls = {"dense": lambda: dense(query, key, value, scale),
             "sparse": lambda: token_sparse_attention(query, key, value, scale, config)}
    samples: dict[str, list[float]] = {name: [] for name in ("dense", "sparse", "scoring", "selection", "attention")}
    for round_ in range(rounds):
        for name in (("dense", "sparse") if round_ % 2 == 0 else ("sparse", "dense")):
            samples[name].append(_ms(calls[name], device))
        samples["scoring"].append(_ms(lambda: score(query, key, scale), device))
        samples["selection"].append(_ms(lambda: select(scores), device))
        samples["attention"].append(_ms(lambda: attend(query, key, value, kept, counts, scale), device))
    median = {name: statistics.median(times) for name, times in samples.items()}
    length, heads, _ = query.shape
    is_kept = kept_mask(kept, counts, length)  # [L, H]
    difference = (sparse_out.float() - dense_out.float()).abs().amax(dim=-1)  # [L, H]
    window = min(config.window, length)
    return {"length": length, "dense_backend": dense_name, "dense_ms": median["dense"],
            "sparse_ms": median["sparse"],
            "sparse_split_ms": {stage: median[stage] for stage in ("scoring", "selection", "attention")},
            "speedup": median["dense"] / median["sparse"], "kept_tokens": counts.tolist(),
            "kept_fraction": counts.double().mean().item() / length,
            "attention_work_fraction": (counts.double() ** 2).sum().item() / (heads * length ** 2),
            "max_abs_diff_kept_rows": difference[is_kept].max().item(),
            "max_abs_diff_window_rows": difference[length - window:].max().item()}


def machine(device: str) -> dict[str, object]:
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, "-m", __spec__.name if __spec__ else __name__,
                                 *sys.argv[1:]])}
    if device == "cuda":
        import triton

        info.update(gpu=torch.cuda.get_device_name(), triton=triton.__version__)
    return info


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    rows = result["results"]
    lengths = [row["length"] for row in rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(lengths, [row["dense_ms"] for row in rows], "o-", label=f"dense ({rows[0]['dense_backend']})")
    left.plot(lengths, [row["sparse_ms"] for row in rows], "s-", label="token-sparse (total)")
    for stage, style in (("scoring", ":"), ("selection", "-."), ("attention", "--")):
        left.plot(lengths, [row["sparse_split_ms"][stage] for row in rows], style, label=f"  {stage}")
    left.set(xscale="log", yscale="log", xlabel="prompt tokens", ylabel="ms per layer (median)",
             title=f"{result['device']}: one prefill layer")
    labels = [f"{length // 1024}K" if length >= 1024 else str(length) for length in lengths]
    left.legend(fontsize=8)
    speedups = [row["speedup"] for row in rows]
    lines = right.plot(lengths, speedups, "o-", color="tab:green", label="speed-up (dense / sparse)")
    right.axhline(1, color="grey", linewidth=0.8)
    right.set(xscale="log", xlabel="prompt tokens", ylabel="speed-up", ylim=(0, 1.3 * max(1, *speedups)))
    for axis in (left, right):
        axis.set_xticks(lengths, labels)
        axis.xaxis.set_minor_locator(NullLocator())
    kept = right.twinx()
    lines += kept.plot(lengths, [row["kept_fraction"] for row in rows], "s--", color="tab:purple",
                       label="kept mean(k)/L")
    lines += kept.plot(lengths, [row["attention_work_fraction"] for row in rows], "^:", color="tab:orange",
                       label="attention work Σk²/(H·L²)")
    kept.set(ylabel="fraction of dense", ylim=(0, 1.3))  # the top quarter: the legend
    config = result["config"]
    right.set_title(f"coverage {config['coverage']}, window {config['window']}, min {config['min_tokens']}, "
                    f"{result['inputs']}", fontsize=9)
    right.legend(lines, [line.get_label() for line in lines], loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="4096,8192,16384,32768")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--inputs", default="synthetic", help="'synthetic' or a .pt capture (module docstring)")
    parser.add_argument("--coverage", type=float, default=SparsityConfig.coverage)
    parser.add_argument("--window", type=int, default=SparsityConfig.window)
    parser.add_argument("--min-tokens", type=int, default=SparsityConfig.min_tokens)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/token_sparse_attention"))
    args = parser.parse_args(argv)
    config = SparsityConfig(args.coverage, args.window, args.min_tokens)
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device == "cuda" else "float32"))
    result = {"device": args.device, "machine": machine(args.device), "inputs": args.inputs, "dtype": str(dtype),
              "config": {"coverage": config.coverage, "window": config.window, "min_tokens": config.min_tokens},
              "rounds": args.rounds, "results": []}
    for length in (int(part) for part in args.lengths.split(",")):
        if args.inputs == "synthetic":
            inputs = synthetic_inputs(length, args.heads, args.kv_heads, args.head_dim)
        else:
            inputs = file_inputs(Path(args.inputs), length)
            if inputs is None:
                print(f"{length}: the capture is shorter; skipped")
                continue
        query, key, value, scale = inputs
        query, key, value = (t.to(device=args.device, dtype=dtype) for t in (query, key, value))
        with torch.inference_mode():
            row = measure((query, key, value, scale), config, args.device, args.rounds)
        result["results"].append(row)
        split = row["sparse_split_ms"]
        print(f"L={length}: dense {row['dense_ms']:.1f} ms, sparse {row['sparse_ms']:.1f} ms (scoring "
              f"{split['scoring']:.1f}, selection {split['selection']:.1f}, attention {split['attention']:.1f}), "
              f"x{row['speedup']:.2f}, kept {row['kept_fraction']:.1%} (attention work "
              f"{row['attention_work_fraction']:.1%}), max |diff| kept rows "
              f"{row['max_abs_diff_kept_rows']:.3g} (last {config.window}: {row['max_abs_diff_window_rows']:.3g})",
              flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"kernel_{args.device}.json").write_text(json.dumps(result, indent=2) + "\n")
    if result["results"]:
        try:
            plot(result, args.out / f"kernel_{args.device}.png")
        except ImportError:
            print("matplotlib is not installed: no plot")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
