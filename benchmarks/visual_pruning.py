"""Visual-token pruning benchmark: TTFT, the language model's prefill of the image tokens, and the
encoder's and selection's share, per method and kept ratio, through the real HTTP API.

    python -m benchmarks.visual_pruning [--model llava-qwen2.5-coder-1.5b] [--out benchmarks/results/visual_pruning]

One leanserve server (``--visual-pruning divprune``; each request names its method and budget
with ``extra_body``), driven by ``leanserve bench --dataset images`` with every setting as its own
target in one run (same images, order rotated per round). The server traces, per encoder call,
the encoder and selection seconds as the engine measured them.

The image tokens' prefill time of a setting is TTFT(setting) - TTFT(1 token kept): the
1-token run pays the same processor, encoder, text prefill and first decode step, and
almost no image-token prefill. Concurrency 8 compares throughput, unpruned vs pruned.
Writes ``results.json`` and ``ttft.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.local_server import free_port, start_server, stop_server

METHODS = ("divprune", "cls", "zoo", "random", "stride")
RATIOS = (0.5, 0.25, 0.1, 0.05)
TOKENS_PER_IMAGE = 576


def settings(methods: tuple[str, ...] = METHODS, ratios: tuple[float, ...] = RATIOS) -> dict[str, dict]:
    """Target name -> extra_body: unpruned, 1 token (the baseline of image prefill), method x ratio."""
    out = {"unpruned": {"visual_pruning": {"enabled": False}}, "keep1": {"visual_pruning": {"method": "stride", "keep": 1}}}
    for method in methods:
        for ratio in ratios:
            out[f"{method}@{ratio}"] = {"visual_pruning": {"method": method, "keep": ratio}}
    return out


def bench(base_url: str, targets: dict[str, dict], concurrency: int, num: int, output_len: int, rounds: int,
          out: Path, image_sizes: str) -> dict:
    """Run ``leanserve bench`` with every target; one level per round (order rotates); returns report.json."""
    command = [sys.executable, "-m", "service.cli", "bench", "--dataset", "images", "--image-sizes", image_sizes,
               "--num-requests", str(num), "--concurrency", ",".join([str(concurrency)] * rounds),
               "--output-len", str(output_len), "--warmup", "1", "--idle-gap-s", "1", "--no-plots",
               "--no-progress", "--out", str(out)]
    for name, body in targets.items():
        command += ["--base-url", base_url, "--name", name, "--extra-body", json.dumps(body)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "report.json").read_text())


def ttft_by_target(report: dict) -> dict[str, list[float]]:
    """Every request's TTFT (ms) per target, over all rounds."""
    out: dict[str, list[float]] = {}
    for level in report["levels"]:
        for name, records in level["records"].items():
            out.setdefault(name, []).extend(r["ttft_ms"] for r in records if r.get("ttft_ms") is not None)
    return out


def trace_times(trace_dir: Path) -> dict[str, dict[str, float]]:
    """Mean encoder and selection seconds per image, by method, from the server's trace."""
    encoder: dict[str, list[float]] = {}
    select: dict[str, list[float]] = {}
    for path in trace_dir.glob("*.pt"):
        trace = torch.load(path, weights_only=False)
        method = trace["methods"][0]
        if len(set(trace["methods"])) != 1:
            continue  # a batch mixing methods: its times cannot be split per method
        encoder.setdefault(method, []).append(trace["encoder_s"] / trace["images"])
        select.setdefault(method, []).append(trace["selection_s"] / trace["images"])
    return {method: {"encoder_ms": 1000 * statistics.mean(encoder[method]),
                     "selection_ms": 1000 * statistics.mean(select[method]), "calls": len(encoder[method])}
            for method in encoder}


def summarise(ttfts: dict[str, list[float]]) -> dict[str, dict]:
    base = statistics.median(ttfts["keep1"])
    unpruned = statistics.median(ttfts["unpruned"]) - base
    rows = {}
    for name, values in ttfts.items():
        median = statistics.median(values)
        image_prefill = median - base
        rows[name] = {"ttft_ms_p50": median, "ttft_ms_mean": statistics.mean(values), "requests": len(values),
                      "image_prefill_ms": image_prefill,
                      "image_prefill_speedup": unpruned / image_prefill if image_prefill > 0 else None,
                      "ttft_speedup": statistics.median(ttfts["unpruned"]) / median}
    return rows


def plot(rows: dict[str, dict], path: Path, title: str, methods: tuple[str, ...], ratios: tuple[float, ...]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method in methods:
        kept = [100 * ratio for ratio in ratios]
        left.plot(kept, [rows[f"{method}@{r}"]["ttft_ms_p50"] for r in ratios], marker="o", label=method)
        right.plot(kept, [rows[f"{method}@{r}"]["image_prefill_ms"] for r in ratios], marker="o", label=method)
    for axis, key, label in ((left, "ttft_ms_p50", "TTFT p50 (ms)"), (right, "image_prefill_ms",
                                                                      "image-token prefill (ms)")):
        axis.axhline(rows["unpruned"][key], color="black", linestyle="--", label="unpruned")
        axis.set_xlabel("image tokens kept (%)")
        axis.set_ylabel(label)
        axis.set_xscale("log")
        axis.set_xticks([100 * r for r in ratios], [f"{100 * r:g}" for r in ratios])
        axis.grid(alpha=0.3)
    left.legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llava-qwen2.5-coder-1.5b")
    parser.add_argument("--requests", type=int, default=4, help="images per setting and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--image-sizes", default="336x336,640x480")
    parser.add_argument("--throughput-requests", type=int, default=16, help="per setting at concurrency 8 (0: skip)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--ratios", default=",".join(map(str, RATIOS)), help="kept ratios")
    parser.add_argument("--tag", default="", help="suffix of the result files (results<tag>.json, ttft<tag>.png)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/visual_pruning"))
    args = parser.parse_args(argv)
    methods, ratios = tuple(args.methods.split(",")), tuple(float(r) for r in args.ratios.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    trace_dir = Path(tempfile.mkdtemp(prefix="leanserve-vp-trace-"))
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "service.cli", "serve", "--model", args.model, "--port", str(port),
               "--visual-pruning", "divprune", "--max-model-len", "4096", "--kv-cache-gib", "2"]
    env = {**os.environ, "LEANSERVE_VISUAL_PRUNING_TRACE": str(trace_dir)}
    started = time.time()
    process = start_server(command, Path(tempfile.mkdtemp()) / "server.log", f"{base_url}/ready", env=env, timeout_s=900)
    try:
        report = bench(base_url, settings(methods, ratios), 1, args.requests, 1, args.rounds, Path(tempfile.mkdtemp()),
                       args.image_sizes)
        rows = summarise(ttft_by_target(report))
        times = trace_times(trace_dir)
        throughput = {}
        if args.throughput_requests:
            targets = {name: settings()[name] for name in ("unpruned", "divprune@0.1")}
            level = bench(base_url, targets, 8, args.throughput_requests, 32, 1, Path(tempfile.mkdtemp()),
                          args.image_sizes)["levels"][0]["runs"]
            throughput = {name: {"request_throughput": run["request_throughput"],
                                 "output_throughput": run["output_throughput"], "ttft_ms_p50": run["ttft_ms"]["p50"],
                                 "completed": run["completed"], "failed": run["failed"]} for name, run in level.items()}
    finally:
        stop_server(process)
    result = {
        "command": "python -m benchmarks.visual_pruning " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d", time.gmtime()), "wall_s": time.time() - started,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "model": args.model, "tokens_per_image": TOKENS_PER_IMAGE, "image_sizes": args.image_sizes,
        "concurrency_1": rows, "trace_ms_per_image": times, "concurrency_8": throughput,
    }
    (args.out / f"results{args.tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, args.out / f"ttft{args.tag}.png", f"{args.model}: {TOKENS_PER_IMAGE} image tokens, concurrency 1",
         methods, ratios)
    for name, row in rows.items():
        print(f"{name:>14}  TTFT p50 {row['ttft_ms_p50']:7.0f} ms  image prefill {row['image_prefill_ms']:7.0f} ms"
              f"  ({row['image_prefill_speedup'] or 0:.1f}x)")
    print(json.dumps(times, indent=1), json.dumps(throughput, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
