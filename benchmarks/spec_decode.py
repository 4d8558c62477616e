"""Speculative decoding benchmark: decode speed, accepted length and latency per method.

    python -m benchmarks.spec_decode [--suite smollm2|qwen|all] [--out benchmarks/results/spec_decode]

For every server configuration (no speculation, then each method) it starts one leanserve
server, runs ``leanserve bench`` on HumanEval stubs (/v1/completions, code) and on the held-out
chat prompts (/v1/chat/completions) at concurrency 1 and 8, greedy, answers stopping at EOS
or ``--output-len``, and reads the server's leanserve_spec_decode_* counters before and after
each run for the accepted length. One server runs at a time (the machine has 2 cores).
Writes ``results.json`` and ``speedup.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.local_server import free_port, start_server, stop_server


@dataclass(frozen=True)
class ServerConfig:
    name: str
    flags: tuple[str, ...]
    revision: str | None = None  # a git revision of this repository to serve from (a before/after comparison)


SMOLLM2 = (
    ServerConfig("none", ()),
    ServerConfig("ngram k=4", ("--speculative", "ngram")),
    ServerConfig("ngram k=2", ("--speculative", "ngram", "--num-speculative-tokens", "2")),
    ServerConfig("suffix k=8", ("--speculative", "suffix")),
    ServerConfig("mtp k=2", ("--speculative", "mtp", "--num-speculative-tokens", "2")),
    ServerConfig("mtp k=4", ("--speculative", "mtp", "--num-speculative-tokens", "4")),
)
QWEN_TARGET = ("--model", "Qwen2.5-Coder-1.5B-Instruct")
QWEN = (
    ServerConfig("qwen1.5b none", QWEN_TARGET),
    ServerConfig("qwen1.5b draft:0.5b", (*QWEN_TARGET, "--speculative", "draft:Qwen2.5-Coder-0.5B-Instruct")),
)
# Every shipped method on the 1.5B target, for spec_decode_ab (bf16 on disk and in memory: four servers fit).
QWEN_SUFFIX = (QWEN[0], ServerConfig("qwen1.5b suffix k=8", (*QWEN_TARGET, "--speculative", "suffix")))
QWEN_ALL = (*QWEN, QWEN_SUFFIX[1], ServerConfig("qwen1.5b ngram k=4", (*QWEN_TARGET, "--speculative", "ngram")))
# The one-forward learned drafter shipped for the 1.5B (heads/Qwen2.5-Coder-1.5B-Instruct/) beside no speculation.
QWEN_MTP = (QWEN[0], ServerConfig("qwen1.5b mtp", (*QWEN_TARGET, "--speculative", "mtp")))
# A lone request never verifies exactly one draft (draft_length.py, session 37) beside the code before that rule.
QWEN_MTP_LONE = (QWEN[0], ServerConfig("qwen1.5b mtp (9bc30cf: lone 1-draft steps)", QWEN_MTP[1].flags, revision="9bc30cf"),
                 ServerConfig("qwen1.5b mtp", QWEN_MTP[1].flags))
# What a verification of 2 rows costs in the server beside 3 (K fixed, every draft verified: the same tokens per step).
QWEN_MTP_K = (QWEN[0], *(ServerConfig(f"qwen1.5b mtp k={k} every draft", (*QWEN_MTP[1].flags, "--num-speculative-tokens",
                                                                        str(k), "--speculative-min-acceptance", "0"))
                         for k in (1, 2)))
# The same beside the code before it, on the default model (small servers: more rounds fit).
MTP_LONE = (ServerConfig("none", ()),
            ServerConfig("mtp (9bc30cf: lone 1-draft steps)", ("--speculative", "mtp"), revision="9bc30cf"),
            ServerConfig("mtp", ("--speculative", "mtp")))
# The 1.5B under load: the learned drafter and suffix decoding as shipped, beside no speculation (the draft model's
# pair is QWEN; four 1.5B servers do not fit in 24 GB).
QWEN_LOAD = (QWEN[0], QWEN_MTP[1], QWEN_SUFFIX[1])
# The 1.5B under load, what the draft-every-step methods do and suffix decoding limited to steps of <= 2 requests.
QWEN_LOAD_LIMITS = (QWEN[0], ServerConfig("qwen1.5b suffix k=8 max-batch 2", (*QWEN_SUFFIX[1].flags,
                                                                            "--speculative-max-batch", "2")),
                    ServerConfig("qwen1.5b ngram k=4 (no limit)", (*QWEN_TARGET, "--speculative", "ngram",
                                                                   "--speculative-max-batch", "4096")))
# ngram on the 1.5B as shipped now (drafting only in steps of <= 2 requests: the >= 1B default) beside no speculation.
QWEN_NGRAM = (QWEN[0], ServerConfig("qwen1.5b ngram k=4", (*QWEN_TARGET, "--speculative", "ngram")))
# Under load: each method as shipped (drafting at every batch size) beside the same method with
# --speculative-max-batch (no drafts in steps above N requests), against no speculation, in one run.
LOAD = (
    ServerConfig("none", ()),
    ServerConfig("ngram k=4", ("--speculative", "ngram")),
    ServerConfig("ngram k=4 max-batch 2", ("--speculative", "ngram", "--speculative-max-batch", "2")),
    ServerConfig("suffix k=8", ("--speculative", "suffix")),
    ServerConfig("suffix k=8 max-batch 4", ("--speculative", "suffix", "--speculative-max-batch", "4")),
    ServerConfig("mtp k=2", ("--speculative", "mtp", "--num-speculative-tokens", "2")),
    ServerConfig("mtp k=2 max-batch 2", ("--speculative", "mtp", "--num-speculative-tokens", "2",
                                         "--speculative-max-batch", "2")),
)
# Under load with the runner hooks (quiet_steps.py: steps without drafts skip the drafter and the rejection
# sampler): the schedules beside no speculation, which runs first and last to show the machine's drift.
QUIET = (
    ServerConfig("none", ()),
    ServerConfig("mtp k=2 max-batch 2", ("--speculative", "mtp", "--num-speculative-tokens", "2",
                                         "--speculative-max-batch", "2")),
    ServerConfig("ngram k=4 max-batch 2", ("--speculative", "ngram", "--speculative-max-batch", "2")),
    ServerConfig("suffix k=8", ("--speculative", "suffix")),
    ServerConfig("none", ()),
)
# After the ngram proposer stopped taking an OpenMP thread from the model (numba_threads.py): every method as
# shipped, and mtp with its opt-in schedule, at concurrency 1, 8 and 16; no speculation first and last (drift).
OPENMP = (
    ServerConfig("none", ()),
    ServerConfig("ngram k=4", ("--speculative", "ngram")),
    ServerConfig("suffix k=8", ("--speculative", "suffix")),
    ServerConfig("mtp k=2", ("--speculative", "mtp", "--num-speculative-tokens", "2")),
    ServerConfig("mtp k=2 max-batch 2", ("--speculative", "mtp", "--num-speculative-tokens", "2",
                                         "--speculative-max-batch", "2")),
    ServerConfig("none, again", ()),
)
# The per-request draft length from acceptance and batch size (draft_length.py; the default) against every
# draft verified (--speculative-min-acceptance 0) and no speculation; run with --rounds 2 (the second reversed).
ADAPTIVE = (
    ServerConfig("ngram k=4", ("--speculative", "ngram")),
    ServerConfig("ngram k=4 every draft", ("--speculative", "ngram", "--speculative-min-acceptance", "0")),
    ServerConfig("mtp k=2", ("--speculative", "mtp", "--num-speculative-tokens", "2")),
    ServerConfig("mtp k=2 every draft", ("--speculative", "mtp", "--num-speculative-tokens", "2",
                                         "--speculative-min-acceptance", "0")),
    ServerConfig("suffix k=8", ("--speculative", "suffix")),
    ServerConfig("none", ()),
)
# Each method with its shipped defaults (mtp: max-batch 2 and the acceptance rule), for spec_decode_ab (fresh prompts
# per level and round; suffix decoding is still flattered where the small datasets repeat, spec_decode_ab's docstring).
SHIPPED = (
    ServerConfig("none", ()),
    ServerConfig("mtp k=2", ("--speculative", "mtp", "--num-speculative-tokens", "2")),
    ServerConfig("ngram k=4", ("--speculative", "ngram")),
    ServerConfig("suffix k=8", ("--speculative", "suffix")),
)
# The one-forward parallel drafter (the shipped mtp) beside suffix decoding; --compare-head DIR adds
# another drafter (e.g. the earlier serial EAGLE-1 head) in the same run.
DRAFTER = (
    ServerConfig("none", ()),
    ServerConfig("suffix k=8", ("--speculative", "suffix")),
    ServerConfig("mtp k=2", ("--speculative", "mtp", "--num-speculative-tokens", "2")),
    ServerConfig("mtp k=3", ("--speculative", "mtp", "--num-speculative-tokens", "3")),
)
# Suffix decoding with eager small steps (chosen by benchmarks/suffix_replay.py) beside the paper's knobs in every
# step, which the code before that change (1e6e635) ran with.
SUFFIX_KNOBS = (
    ServerConfig("none", ()),
    ServerConfig("suffix k=8 (paper knobs, 1e6e635)", ("--speculative", "suffix"), revision="1e6e635"),
    ServerConfig("suffix k=8", ("--speculative", "suffix")),
)
SUITES = {"smollm2": SMOLLM2, "drafter": DRAFTER, "qwen": QWEN, "all": SMOLLM2 + QWEN, "load": LOAD, "quiet": QUIET,
          "openmp": OPENMP, "adaptive": ADAPTIVE, "shipped": SHIPPED,
          "qwen_suffix": QWEN_SUFFIX, "qwen_mtp": QWEN_MTP, "qwen_mtp_lone": QWEN_MTP_LONE, "mtp_lone": MTP_LONE, "qwen_load": QWEN_LOAD, "qwen_load_limits": QWEN_LOAD_LIMITS, "qwen_ngram": QWEN_NGRAM, "qwen_mtp_k": QWEN_MTP_K, "qwen_all": QWEN_ALL, "suffix_knobs": SUFFIX_KNOBS,
          "suffix": (SMOLLM2[0], SMOLLM2[3])}  # fresh-cache runs: one level per invocation
DATASETS = ("humaneval", "chat")


def _counters(base_url: str) -> dict[str, float]:
    text = httpx.get(f"{base_url}/metrics", timeout=30).text
    values: dict[str, float] = {}
    for name in ("drafts", "draft_tokens", "accepted_tokens"):
        match = re.search(rf"^leanserve_spec_decode_{name}_total{{[^}}]*}} ([0-9.e+]+)$", text, re.MULTILINE)
        values[name] = float(match.group(1)) if match else 0.0
    return values


def _bench(base_url: str, dataset: str, concurrency: int, num: int, output_len: int, out: Path, seed: int = 0) -> dict:
    command = [
        sys.executable, "-m", "service.cli", "bench", "--base-url", base_url, "--name", "target",
        "--dataset", dataset, "--num-requests", str(num), "--concurrency", str(concurrency),
        "--output-len", str(output_len), "--no-ignore-eos", "--warmup", "1", "--idle-gap-s", "2",
        "--no-plots", "--no-progress", "--seed", str(seed), "--out", str(out),
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    run = json.loads((out / "report.json").read_text())["levels"][0]["runs"]["target"]
    return {
        "requests": run["completed"], "failed": run["failed"], "output_tokens": run["output_tokens"],
        "output_throughput": run["output_throughput"],
        "decode_tokens_per_s": 1000.0 / run["tpot_ms"]["mean"] if run["tpot_ms"]["mean"] else None,
        "tpot_ms_p50": run["tpot_ms"]["p50"], "ttft_ms_p50": run["ttft_ms"]["p50"],
        "e2el_ms_p50": run["e2el_ms"]["p50"], "e2el_ms_mean": run["e2el_ms"]["mean"],
    }


def start_leanserve(flags: tuple[str, ...], kv_cache_gib: float, scratch: Path,
                    revision: str | None = None) -> tuple[str, subprocess.Popen]:
    """One benchmark server (eager, 2,048-token context) on a free port: its base URL and process.

    With ``revision``, the server runs that git revision's code (exported under ``scratch``; same
    virtual environment and model cache), so a change can be measured beside what it replaced. The tree
    goes first on PYTHONPATH: the editable install's finder (and a ``.pth`` that imports ``engine`` at
    start-up) would otherwise load this checkout's packages, in the server and in vLLM's processes."""
    port = free_port()
    command = [sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--enforce-eager",
               "--max-model-len", "2048", "--kv-cache-gib", str(kv_cache_gib), *flags]
    base_url = f"http://127.0.0.1:{port}"
    cwd = _checkout(revision, scratch) if revision else None
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(cwd), os.environ.get("PYTHONPATH")]))) if cwd else None
    return base_url, start_server(command, scratch / f"server-{port}.log", f"{base_url}/ready", env=env, cwd=cwd)


def _checkout(revision: str, scratch: Path) -> Path:
    """``revision``'s tree exported to ``scratch/rev-REVISION`` (once); ``python -m`` there imports its code first."""
    directory = scratch / f"rev-{revision}"
    if not directory.exists():
        directory.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", revision], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True)
    return directory


def measure_level(base_url: str, config: str, dataset: str, concurrency: int, num: int, output_len: int,
                  out: Path, seed: int = 0) -> dict:
    """``leanserve bench`` at one level, with the accepted length read from the server's counters around it.

    ``seed`` picks the prompts (a seeded order of the dataset): the same seed gives every server the same set."""
    before = _counters(base_url)
    result = _bench(base_url, dataset, concurrency, num, output_len, out, seed)
    after = _counters(base_url)
    drafts = after["drafts"] - before["drafts"]
    accepted = after["accepted_tokens"] - before["accepted_tokens"]
    proposed = after["draft_tokens"] - before["draft_tokens"]
    result.update(config=config, dataset=dataset, concurrency=concurrency,
                  mean_accepted_length=1 + accepted / drafts if drafts else None,
                  acceptance_rate=accepted / proposed if proposed else None)
    return result


def run_config(config: ServerConfig, args: argparse.Namespace, scratch: Path) -> list[dict]:
    base_url, process = start_leanserve(config.flags, args.kv_cache_gib, scratch, config.revision)
    rows = []
    try:
        is_qwen = "qwen" in config.name
        for dataset, concurrency in args.levels:
            num = (4 if concurrency == 1 else 8) if is_qwen else (args.requests_c1 if concurrency == 1 else max(24, 2 * concurrency))
            output_len = 96 if is_qwen else args.output_len
            out = scratch / f"{base_url.rsplit(':', 1)[1]}-{dataset}-{concurrency}"
            rows.append(measure_level(base_url, config.name, dataset, concurrency, num, output_len, out))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        stop_server(process)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def mean_speed(config: str, dataset: str, concurrency: int) -> float | None:  # over rounds
        speeds = [r["decode_tokens_per_s"] for r in rows
                  if r["config"] == config and r["dataset"] == dataset and r["concurrency"] == concurrency]
        return sum(speeds) / len(speeds) if speeds else None

    configs = [c for c in dict.fromkeys(r["config"] for r in rows) if not c.endswith("none")]
    panels = list(dict.fromkeys((r["dataset"], r["concurrency"]) for r in rows))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, (dataset, concurrency) in zip(axes, panels, strict=True):
        speedups = []
        for config in configs:
            speed = mean_speed(config, dataset, concurrency)
            base = mean_speed("qwen1.5b none" if "qwen" in config else "none", dataset, concurrency)
            speedups.append(speed / base if speed and base else 0)
        ax.bar(range(len(configs)), speedups)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(configs)), configs, rotation=45, ha="right")
        ax.set_title(f"{dataset}, concurrency {concurrency}")
    axes[0].set_ylabel("decode tokens/s vs no speculation")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _levels(text: str) -> list[tuple[str, int]]:
    pairs = []
    for item in text.split(","):
        dataset, _, concurrency = item.partition(":")
        if dataset not in DATASETS:
            raise argparse.ArgumentTypeError(f"unknown dataset {dataset!r}")
        pairs.append((dataset, int(concurrency)))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=sorted(SUITES), default="all")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/spec_decode"))
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--requests-c1", type=int, default=10)
    parser.add_argument("--kv-cache-gib", type=float, default=2.0)
    parser.add_argument("--levels", type=_levels, default=[(d, c) for d in DATASETS for c in (1, 8)],
                        help="dataset:concurrency list, default humaneval:1,humaneval:8,chat:1,chat:8")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the suite this many times, every other round in reverse order (drift cancels)")
    parser.add_argument("--compare-head", type=Path, default=None,
                        help="another drafter directory to run as 'mtp:DIR k=2' in the same suite")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    configs = SUITES[args.suite]
    if args.compare_head:
        configs += (ServerConfig(f"{args.compare_head.name} k=2", (
            "--speculative", f"mtp:{args.compare_head}", "--num-speculative-tokens", "2")),)
    started = time.time()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="spec-bench-") as scratch:
        for round_index in range(args.rounds):
            for config in configs if round_index % 2 == 0 else configs[::-1]:
                rows += [dict(row, round=round_index) for row in run_config(config, args, Path(scratch))]
                (args.out / "results.json").write_text(json.dumps({"rows": rows}, indent=1))
    result = {
        "command": "python -m benchmarks.spec_decode " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"), "wall_s": round(time.time() - started),
        "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores",
        "rows": rows,
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    plot(rows, args.out / "speedup.png")


if __name__ == "__main__":
    main()
