"""leanserve against bare vLLM: same model, machine, engine settings and load, one run.

Both servers are started once and stay up; ``vllm bench serve`` (vLLM's own
client) then drives them in alternating order for several rounds, with an idle
gap before each run: on this 2-core machine the run that goes second in a round
was 5-10% slower whichever server it was, so order must be balanced and results
compared in pairs. Reports each round, the median per target, and paired
leanserve / vLLM ratios; writes JSON and a PNG.

    python -m benchmarks.gateway_vs_vllm --rounds 3 --num-prompts 48 --concurrency 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from benchmarks.local_server import start_server
from engine.catalogue import resolve_model
from service.settings import Settings

KV_CACHE_GIB = 4
METRICS = ("output_throughput", "request_throughput", "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms",
           "median_itl_ms", "median_e2el_ms")


@dataclass(frozen=True)
class Target:
    name: str
    port: int
    command: list[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def targets(model_dir: str, model_name: str, eager: bool, dtype: str) -> list[Target]:
    eager_flag = ["--enforce-eager", "--dtype", dtype] if eager else ["--dtype", dtype]
    bare = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
            "--served-model-name", model_name, "--host", "127.0.0.1", "--port", "8101",
            "--kv-cache-memory-bytes", str(KV_CACHE_GIB << 30), "--disable-uvicorn-access-log", *eager_flag]
    lean = [sys.executable, "-m", "service.cli", "serve", "--model", model_dir, "--served-model-name", model_name,
            "--host", "127.0.0.1", "--port", "8102", "--kv-cache-gib", str(KV_CACHE_GIB), *eager_flag]
    return [Target("vllm", 8101, bare), Target("leanserve", 8102, lean)]


def start(target: Target, log_dir: Path) -> subprocess.Popen:
    ready_path = "/health" if target.name == "vllm" else "/ready"
    env = {**os.environ, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    return start_server(target.command, log_dir / f"{target.name}.log", target.url + ready_path, env)


def bench(target: Target, args: argparse.Namespace, model_dir: str, model_name: str, out: Path) -> dict:
    result_name = out.name
    command = [
        sys.executable, "-m", "benchmarks.vllm_cli", "bench", "serve", "--backend", "vllm",
        "--base-url", target.url, "--model", model_name, "--tokenizer", model_dir,
        "--dataset-name", "random", "--random-input-len", str(args.input_len),
        "--random-output-len", str(args.output_len), "--num-prompts", str(args.num_prompts),
        "--max-concurrency", str(args.concurrency), "--seed", str(args.seed), "--ignore-eos",
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
        "--num-warmups", "2", "--disable-tqdm",
        "--save-result", "--result-dir", str(out.parent), "--result-filename", result_name,
    ]
    subprocess.run(command, check=True, env={**os.environ, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"},
                   stdout=subprocess.DEVNULL)
    result = json.loads(out.read_text())
    return {metric: result[metric] for metric in METRICS} | {"completed": result["completed"]}


def summarise(rounds: list[dict[str, dict]]) -> dict:
    """Medians per target, and paired per-round comparisons (each round ran both back to back)."""
    names = rounds[0].keys()
    medians = {name: {m: statistics.median(r[name][m] for r in rounds) for m in METRICS} for name in names}
    ratios = [r["leanserve"]["output_throughput"] / r["vllm"]["output_throughput"] for r in rounds]
    ttft_deltas = [r["leanserve"]["median_ttft_ms"] - r["vllm"]["median_ttft_ms"] for r in rounds]
    tpot_deltas = [r["leanserve"]["median_tpot_ms"] - r["vllm"]["median_tpot_ms"] for r in rounds]
    return {
        "median": medians,
        "throughput_ratio_per_round": [round(x, 4) for x in ratios],
        "throughput_ratio_median": statistics.median(ratios),
        "throughput_ratio_geomean": statistics.geometric_mean(ratios),
        "ttft_p50_delta_ms_per_round": [round(x, 1) for x in ttft_deltas],
        "ttft_p50_delta_ms_median": statistics.median(ttft_deltas),
        "tpot_p50_delta_ms_median": statistics.median(tpot_deltas),
    }


def plot(rounds: list[dict[str, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for axis, metric, label in zip(axes, ("output_throughput", "median_ttft_ms", "median_tpot_ms"),
                                   ("output tok/s", "TTFT p50 (ms)", "TPOT p50 (ms)")):
        for name, marker in (("vllm", "o"), ("leanserve", "s")):
            axis.plot(range(1, len(rounds) + 1), [r[name][metric] for r in rounds], marker=marker, label=name)
        axis.set_title(label)
        axis.set_xlabel("round")
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.suptitle("leanserve vs bare vLLM (vllm bench serve, same engine and load)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6, help="even: each target runs first equally often")
    parser.add_argument("--gap-s", type=float, default=10, help="idle time between runs, to let the machine settle")
    parser.add_argument("--num-prompts", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--dtype", default="float32", help="float32: this AVX2-only CPU has no fast bf16")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gateway_vs_vllm"))
    args = parser.parse_args()

    resolved = resolve_model("default", Settings().cache_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    servers = targets(resolved.path, resolved.name, args.enforce_eager, args.dtype)
    processes = []
    try:
        for target in servers:  # one at a time: two engines compiling at once on 2 cores is slow
            processes.append(start(target, args.out))
        rounds = []
        for index in range(args.rounds):
            order = servers if index % 2 == 0 else servers[::-1]
            results = {}
            for target in order:
                time.sleep(args.gap_s)
                results[target.name] = bench(target, args, resolved.path, resolved.name,
                                             args.out / f"round{index}-{target.name}.json")
            rounds.append(results)
            print(json.dumps(rounds[-1]), flush=True)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=60)
    summary = summarise(rounds)
    report = {
        "date": date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "model": resolved.name,
        "load": {k: getattr(args, k) for k in ("num_prompts", "concurrency", "input_len", "output_len", "seed",
                                                "enforce_eager", "dtype")},
        "rounds": rounds,
        **summary,
    }
    (args.out / "summary.json").write_text(json.dumps(report, indent=2))
    plot(rounds, args.out / "gateway_vs_vllm.png")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
