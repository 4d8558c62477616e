"""Speculative decoding against no speculation with the servers up side by side: drift cancels.

    python -m benchmarks.spec_decode_ab [--suite adaptive] [--rounds 3] [--levels humaneval:1,humaneval:8,...]

``benchmarks/spec_decode.py`` runs one server after the other; on this VM the speed of identical work
moves by up to 25% within minutes (the same "none" server measured twice in a row: 27.4 and 34.6
decode tok/s at concurrency 1, RESULTS.md), far above the 2% the issue asks to resolve. Here every
configuration's server is started first (small KV caches, so all fit in memory; an idle vLLM server
costs no CPU), then each level runs every configuration in turn, in alternating order, for several
rounds. Each configuration's speed-up is the mean over rounds of its decode tok/s divided by that of
no speculation in the same round, so slow spells hit both sides of each ratio. Every (level, round) draws
its own prompts (a seed of its own; the same for every server). The datasets are small (164 HumanEval
stubs, 48 chat prompts), so later draws repeat earlier ones (HumanEval c=16: ~half; chat c=8 from round 1:
most), and suffix decoding, which caches earlier answers, is flattered there: read its accepted length.
Writes ``results.json`` (every run and the summary) and ``speedup.png``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.local_server import stop_server
from benchmarks.spec_decode import SUITES, ServerConfig, _levels, measure_level, plot, start_leanserve

BASELINE = "none"


def baseline_of(configs: list[ServerConfig]) -> str:
    """The suite's no-speculation configuration (``none``, or e.g. ``qwen1.5b none`` for another target)."""
    return next((c.name for c in configs if c.name.endswith(BASELINE)), BASELINE)


def summarize(rows: list[dict], baseline: str = BASELINE) -> list[dict]:
    """Per configuration and level: mean decode tok/s, and the mean over rounds of the ratio to no speculation."""
    summary = []
    keys = dict.fromkeys((r["config"], r["dataset"], r["concurrency"]) for r in rows)
    for config, dataset, concurrency in keys:
        mine = {r["round"]: r for r in rows if (r["config"], r["dataset"], r["concurrency"]) == (config, dataset,
                                                                                                concurrency)}
        base = {r["round"]: r for r in rows if (r["config"], r["dataset"], r["concurrency"]) == (baseline, dataset,
                                                                                                 concurrency)}
        ratios = [mine[i]["decode_tokens_per_s"] / base[i]["decode_tokens_per_s"] for i in mine if i in base]
        out_ratios = [mine[i]["output_throughput"] / base[i]["output_throughput"] for i in mine if i in base]
        accepted = [r["mean_accepted_length"] for r in mine.values() if r["mean_accepted_length"]]
        summary.append({
            "config": config, "dataset": dataset, "concurrency": concurrency, "rounds": len(mine),
            "decode_tokens_per_s": sum(r["decode_tokens_per_s"] for r in mine.values()) / len(mine),
            "speedup": sum(ratios) / len(ratios), "speedup_min": min(ratios), "speedup_max": max(ratios),
            "output_speedup": sum(out_ratios) / len(out_ratios),
            "mean_accepted_length": sum(accepted) / len(accepted) if accepted else None,
        })
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=sorted(SUITES), default="adaptive")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/spec_decode_ab"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--requests-c1", type=int, default=6)
    parser.add_argument("--kv-cache-gib", type=float, default=0.5)
    parser.add_argument("--levels", type=_levels, default=_levels("humaneval:1,humaneval:8,humaneval:16,chat:8"))
    args = parser.parse_args()
    configs = list(dict.fromkeys(SUITES[args.suite]))
    baseline = baseline_of(configs)
    if not any(c.name == baseline for c in configs):
        configs.insert(0, ServerConfig(baseline, ()))
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="spec-ab-") as scratch:
        servers = {}
        try:
            for config in configs:
                servers[config.name] = start_leanserve(config.flags, args.kv_cache_gib, Path(scratch), config.revision)
            for level_index, (dataset, concurrency) in enumerate(args.levels):
                for round_index in range(args.rounds):
                    seed = 1000 * level_index + round_index
                    for config in configs if round_index % 2 == 0 else configs[::-1]:
                        num = args.requests_c1 if concurrency == 1 else max(24, 2 * concurrency)
                        row = measure_level(servers[config.name][0], config.name, dataset, concurrency, num,
                                            args.output_len, Path(scratch) / f"{len(rows)}-{dataset}-{concurrency}", seed)
                        rows.append(dict(row, round=round_index, seed=seed))
                        print(json.dumps(rows[-1]), flush=True)
                        (args.out / "results.json").write_text(json.dumps({"rows": rows}, indent=1))
        finally:
            for _, process in servers.values():
                stop_server(process)
    result = {
        "command": "python -m benchmarks.spec_decode_ab " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"), "wall_s": round(time.time() - started),
        "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores",
        "summary": summarize(rows, baseline), "rows": rows,
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    plot(rows, args.out / "speedup.png")
    for entry in result["summary"]:
        print(f"{entry['config']:24s} {entry['dataset']:9s} c={entry['concurrency']:<3d} "
              f"{entry['decode_tokens_per_s']:6.2f} tok/s  x{entry['speedup']:.2f} "
              f"({entry['speedup_min']:.2f}-{entry['speedup_max']:.2f})  accepted {entry['mean_accepted_length']}")


if __name__ == "__main__":
    main()
