"""Video-token pruning (EVS) benchmark: TTFT and the video tokens prefilled, unpruned vs ``--video-pruning-rate``,
through the real HTTP API.

    python -m benchmarks.video_pruning [--model qwen2.5-vl-coder-1.5b] [--rates 0.5,0.75,0.9]

One leanserve server (``--video-pruning-rate``); each request names its rate with ``extra_body``
(``{"video_pruning": {"rate": r}}``, or ``{"enabled": false}`` for every token), and ``leanserve bench
--dataset videos`` drives every rate as its own target in one run (same clips, order rotated per round).
Every answer is one token long. A line fitted
through TTFT against the prompt tokens prefilled splits TTFT into what EVS can cut (the slope: prefill
per token) and what it cannot (the intercept: decoding, the vision encoder, the first decode step).
Writes ``results.json`` and ``ttft.png``; ``--report`` re-reads a bench report instead of serving.
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


def serve(model: str, rate: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "service.cli", "serve", "--model", model, "--port", str(port),
               "--max-model-len", "8192", "--kv-cache-gib", "2", "--video-pruning-rate", str(rate)]
    log = Path(tempfile.mkdtemp(prefix="leanserve-evs-")) / "server.log"
    return start_server(command, log, f"{base_url}/ready", timeout_s=1200), base_url


def targets(rates: list[float]) -> dict[str, dict]:
    """Target name -> extra_body: every token, then each rate."""
    return {"unpruned": {"video_pruning": {"enabled": False}},
            **{f"evs@{rate}": {"video_pruning": {"rate": rate}} for rate in rates}}


def bench(base_url: str, bodies: dict[str, dict], args: argparse.Namespace) -> dict:
    """``leanserve bench`` over every target, concurrency 1, one level per round; returns report.json."""
    out = Path(tempfile.mkdtemp(prefix="leanserve-evs-bench-"))
    command = [sys.executable, "-m", "service.cli", "bench", "--dataset", "videos", "--video-sizes", args.video_sizes,
               "--video-frames", str(args.frames), "--num-requests", str(args.requests),
               "--concurrency", ",".join(["1"] * args.rounds), "--output-len", "1", "--warmup", "1",
               "--idle-gap-s", "1", "--no-plots", "--no-progress", "--out", str(out)]
    for name, body in bodies.items():
        command += ["--base-url", base_url, "--name", name, "--extra-body", json.dumps(body)]
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
    parser.add_argument("--report", type=Path, help="a report.json of an earlier run, to summarise again")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rates = [float(r) for r in args.rates.split(",")]
    started = time.time()
    if args.report:
        report = json.loads(args.report.read_text())
    else:
        process, base_url = serve(args.model, max(rates))
        try:
            report = bench(base_url, targets(rates), args)
        finally:
            stop_server(process)
        (args.out / "report.json").write_text(json.dumps(report) + "\n")
    ttfts, prompts = per_target(report, "ttft_ms"), per_target(report, "prompt_tokens")
    rows = {name: {"ttft_ms_p50": statistics.median(ttfts[name]), "requests": len(ttfts[name]),
                   "prompt_tokens_p50": statistics.median(prompts[name])} for name in ttfts}
    for row in rows.values():
        row["ttft_speedup"] = rows["unpruned"]["ttft_ms_p50"] / row["ttft_ms_p50"]
    slope, intercept = fit([(row["prompt_tokens_p50"], row["ttft_ms_p50"]) for row in rows.values()])
    result = {
        "command": "python -m benchmarks.video_pruning " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d", time.gmtime()), "wall_s": time.time() - started,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs", "model": args.model,
        "video": f"{args.video_sizes}, {args.frames} frames at 8 fps (one shape moving over a still scene)",
        "concurrency_1": rows, "fit": {"ms_per_prompt_token": slope, "intercept_ms": intercept},
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, slope, intercept, args.out / "ttft.png", f"{args.model}: EVS, {args.frames}-frame videos, concurrency 1")
    for name, row in rows.items():
        print(f"{name:>10}: TTFT p50 {row['ttft_ms_p50']:7.0f} ms ({row['ttft_speedup']:.2f}x), "
              f"prompt tokens {row['prompt_tokens_p50']:.0f}")
    print(f"fit: {intercept:.0f} ms + {slope:.2f} ms per prompt token")
    return 0


if __name__ == "__main__":
    sys.exit(main())
