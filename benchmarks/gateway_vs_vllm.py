"""leanserve against bare vLLM: same model, machine, engine settings and load, one run.

Both servers are started once and stay up; ``vllm bench serve`` (vLLM's own
client) then drives them in alternating order for several rounds, so slow
drift of the machine hits both alike. Reports each round, the median per
target, and leanserve / vLLM ratios; writes JSON and a PNG.

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

import httpx

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
    env = {**os.environ, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    log = open(log_dir / f"{target.name}.log", "wb")
    process = subprocess.Popen(target.command, stdout=log, stderr=subprocess.STDOUT, env=env)
    ready_path = "/health" if target.name == "vllm" else "/ready"
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{target.name} exited; see {log_dir / f'{target.name}.log'}")
        try:
            if httpx.get(target.url + ready_path, timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{target.name} did not become ready")


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
    names = rounds[0].keys()
    medians = {name: {m: statistics.median(r[name][m] for r in rounds) for m in METRICS} for name in names}
    lean, bare = medians["leanserve"], medians["vllm"]
    return {
        "median": medians,
        "throughput_ratio": lean["output_throughput"] / bare["output_throughput"],
        "ttft_p50_delta_ms": lean["median_ttft_ms"] - bare["median_ttft_ms"],
        "tpot_p50_delta_ms": lean["median_tpot_ms"] - bare["median_tpot_ms"],
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
    parser.add_argument("--rounds", type=int, default=3)
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
            rounds.append({
                t.name: bench(t, args, resolved.path, resolved.name, args.out / f"round{index}-{t.name}.json")
                for t in order
            })
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
