"""Video-token pruning (EVS) benchmark: TTFT and the video tokens prefilled, unpruned vs ``--video-pruning-rate``,
through the real HTTP API.

    python -m benchmarks.video_pruning [--model qwen2.5-vl-coder-1.5b] [--rates 0.5,0.75,0.9]

vLLM reads the rate from its engine configuration, so each rate is its own server. An unpruned server
runs throughout; for each rate a pruned server is started beside it and ``leanserve bench --dataset
videos`` drives both in one run (same clips, order alternating per round), so every pruned figure has an
unpruned one measured minutes apart under the same load. A line fitted through TTFT against video
tokens prefilled splits TTFT into what EVS can cut (the slope: prefill per video token) and what it
cannot (the intercept: decoding, the vision encoder, the text prefill, the first decode step).
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

from benchmarks.local_server import free_port, start_server, stop_server

RATES = (0.5, 0.75, 0.9)


def serve(model: str, rate: float | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "service.cli", "serve", "--model", model, "--port", str(port),
               "--max-model-len", "8192", "--kv-cache-gib", "1"]
    if rate is not None:
        command += ["--video-pruning-rate", str(rate)]
    log = Path(tempfile.mkdtemp(prefix="leanserve-evs-")) / "server.log"
    return start_server(command, log, f"{base_url}/ready", timeout_s=1200), base_url


def bench(targets: dict[str, str], args: argparse.Namespace) -> dict:
    """``leanserve bench`` over ``targets`` (name -> base URL), concurrency 1, one level per round."""
    out = Path(tempfile.mkdtemp(prefix="leanserve-evs-bench-"))
    command = [sys.executable, "-m", "service.cli", "bench", "--dataset", "videos", "--video-sizes", args.video_sizes,
               "--video-frames", str(args.frames), "--num-requests", str(args.requests),
               "--concurrency", ",".join(["1"] * args.rounds), "--output-len", "1", "--warmup", "1",
               "--idle-gap-s", "1", "--no-plots", "--no-progress", "--out", str(out)]
    for name, base_url in targets.items():
        command += ["--base-url", base_url, "--name", name]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "report.json").read_text())


def per_target(report: dict, key: str) -> dict[str, list[float]]:
    """One record field (``ttft_ms``, ``prompt_tokens``) of every request, per target, over all rounds."""
    out: dict[str, list[float]] = {}
    for level in report["levels"]:
        for name, records in level["records"].items():
            out.setdefault(name, []).extend(r[key] for r in records if r.get(key) is not None)
    return out


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (slope, intercept) of y on x."""
    xs, ys = zip(*points, strict=True)
    mean_x, mean_y = statistics.mean(xs), statistics.mean(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x in xs)
    return slope, mean_y - slope * mean_x


def plot(rows: dict[str, dict], slope: float, intercept: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    for name, row in rows.items():
        axis.scatter(row["prompt_tokens_p50"], row["ttft_ms_p50"], label=name, zorder=3)
    xs = [0, max(row["prompt_tokens_p50"] for row in rows.values())]
    axis.plot(xs, [intercept + slope * x for x in xs], "k--", linewidth=1,
              label=f"fit: {intercept:.0f} ms + {slope:.2f} ms/token")
    axis.set_xlabel("prompt tokens prefilled (text + video kept)")
    axis.set_ylabel("TTFT p50 (ms)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-vl-coder-1.5b")
    parser.add_argument("--rates", default=",".join(map(str, RATES)))
    parser.add_argument("--requests", type=int, default=3, help="videos per target and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--video-sizes", default="640x360")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/video_pruning"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    rows: dict[str, dict] = {}
    pairs = []
    unpruned, unpruned_url = serve(args.model, None)
    try:
        for rate in (float(r) for r in args.rates.split(",")):
            pruned, pruned_url = serve(args.model, rate)
            try:
                report = bench({"unpruned": unpruned_url, f"evs@{rate}": pruned_url}, args)
            finally:
                stop_server(pruned)
            ttfts, prompts = per_target(report, "ttft_ms"), per_target(report, "prompt_tokens")
            pair = {}
            for name in ttfts:
                key = name if name != "unpruned" else f"unpruned (beside evs@{rate})"
                pair[name] = rows[key] = {"ttft_ms_p50": statistics.median(ttfts[name]), "requests": len(ttfts[name]),
                                          "prompt_tokens_p50": statistics.median(prompts[name])}
            pair["ttft_speedup"] = pair["unpruned"]["ttft_ms_p50"] / pair[f"evs@{rate}"]["ttft_ms_p50"]
            pairs.append({"rate": rate, **pair})
    finally:
        stop_server(unpruned)
    slope, intercept = fit([(row["prompt_tokens_p50"], row["ttft_ms_p50"]) for row in rows.values()])
    result = {
        "command": "python -m benchmarks.video_pruning " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d", time.gmtime()), "wall_s": time.time() - started,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs", "model": args.model,
        "video": f"{args.video_sizes}, {args.frames} frames at 8 fps (one shape moving over a still scene)",
        "pairs": pairs, "fit": {"ms_per_prompt_token": slope, "intercept_ms": intercept},
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, slope, intercept, args.out / "ttft.png", f"{args.model}: EVS, {args.frames}-frame videos, concurrency 1")
    for pair in pairs:
        rate = pair["rate"]
        print(f"evs@{rate}: TTFT {pair['unpruned']['ttft_ms_p50']:.0f} -> {pair[f'evs@{rate}']['ttft_ms_p50']:.0f} ms "
              f"({pair['ttft_speedup']:.2f}x), prompt tokens {pair['unpruned']['prompt_tokens_p50']:.0f} -> "
              f"{pair[f'evs@{rate}']['prompt_tokens_p50']:.0f}")
    print(f"fit: {intercept:.0f} ms + {slope:.2f} ms per prompt token")
    return 0


if __name__ == "__main__":
    sys.exit(main())
