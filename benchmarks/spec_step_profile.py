"""Where one decode step's time goes, with and without speculative decoding.

    python -m benchmarks.spec_step_profile [--prompts 6] [--max-tokens 128] [--out benchmarks/results/spec_step_profile]
    python -m benchmarks.spec_step_profile --batch 8 --prompts 16 --out benchmarks/results/spec_step_profile_batch8
    python -m benchmarks.spec_step_profile --target Qwen2.5-Coder-1.5B-Instruct --batch 8 --only "none,mtp k=2,mtp drafts off"

Runs vLLM in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) and times the model runner's
own stages around every step: input preparation, the target's forward, logits + sampling (the
rejection sampler when verifying), the drafter's proposal, and bookkeeping. Each configuration
answers the same HumanEval stubs greedily, ``--batch`` at a time (1: concurrency 1; 8: the batch at
which speculation must not lose, with "drafts off" rows - ``--speculative-max-batch 0`` - that show what
the speculative path costs in steps that draft nothing). Each configuration runs in a fresh process. Per configuration it reports the
mean wall time of a decode step by stage, tokens emitted per step, and decode tokens/s, so
the speed-up factors into "tokens per step" over "step time" and the step time into parts.
Writes ``results.json`` and ``breakdown.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections import defaultdict
from pathlib import Path

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the runner lives in this process: its methods can be timed

STAGES = {  # model runner method -> stage name (GPUModelRunner's, which the CPU runner inherits)
    "_update_states": "bookkeeping", "_prepare_inputs": "prepare inputs", "_model_forward": "target forward",
    "_sample": "sample / verify", "propose_draft_token_ids": "drafter", "_bookkeeping_sync": "bookkeeping",
}
STEP_METHODS = ("execute_model", "sample_tokens")


class StepTimer:
    """Wraps the runner's methods with wall-clock timers (CPU: every call is synchronous)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def install(self) -> None:
        """Wrap the CPU runner's methods as they are now (the plugin's hooks included, if installed)."""
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner

        for method in (*STAGES, *STEP_METHODS):
            original = getattr(CPUModelRunner, method)
            setattr(CPUModelRunner, method, self._timed(method, original))

    def _timed(self, name: str, original):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - started
                self.calls[name] += 1
        return wrapper

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    def breakdown(self) -> dict[str, float]:
        """Mean milliseconds per step, by stage; 'other' is the step's untimed remainder."""
        steps = max(self.calls["execute_model"], 1)
        per_stage: dict[str, float] = defaultdict(float)
        for method, stage in STAGES.items():
            per_stage[stage] += 1000 * self.seconds[method] / steps
        total = 1000 * sum(self.seconds[m] for m in STEP_METHODS) / steps
        per_stage["other"] = max(0.0, total - sum(per_stage.values()))
        return {"step_ms": total, **per_stage, "steps": steps}


def profile(name: str, speculative: dict | None, prompts: list[str], max_tokens: int, target: str,
            batch: int = 1, quiet_steps: bool = True) -> dict:
    """One configuration, timed. Call it in a fresh process (``profile_in_child``): vLLM 0.32 cannot
    build a second ``LLM`` in a process after an ngram one (``register_triton_kernel_overrides``).
    ``quiet_steps``: the speculative plugin's runner hooks (quiet_steps.py), as the server installs them."""
    from vllm import LLM, SamplingParams

    if quiet_steps and speculative:
        from engine.plugins.speculative.quiet_steps import skip_speculative_work_in_steps_without_drafts

        skip_speculative_work_in_steps_without_drafts()
    timer = StepTimer()
    timer.install()
    llm = LLM(model=target, dtype="float32", max_model_len=2048, enforce_eager=True, seed=0,
              kv_cache_memory_bytes=2 << 30, speculative_config=speculative)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    llm.generate(prompts[:1], SamplingParams(temperature=0.0, max_tokens=16), use_tqdm=False)  # warm-up
    timer.reset()
    emitted, started = 0, time.perf_counter()
    for start in range(0, len(prompts), batch):  # `batch` requests in flight together
        outs = llm.generate(prompts[start:start + batch], params, use_tqdm=False)
        emitted += sum(len(out.outputs[0].token_ids) for out in outs)
    wall = time.perf_counter() - started
    row = {"config": name, "speculative_config": speculative, "tokens": emitted, "wall_s": round(wall, 2),
           "tokens_per_s": emitted / wall, **timer.breakdown()}
    row["tokens_per_step"] = emitted / row["steps"]  # summed over the batch
    del llm
    return row


def run_in_child(function, *args: object):
    """``function(*args)`` in a spawned process of its own, so each vLLM ``LLM`` starts clean."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def profile_in_child(*args: object) -> dict:
    """``profile`` in a spawned process of its own, so each configuration starts from a clean vLLM."""
    return run_in_child(profile, *args)


def mean_row(runs: list[dict]) -> dict:
    """One configuration's rounds averaged (numbers) - the figure the plot and RESULTS.md show."""
    row = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and key != "round":
            row[key] = sum(r[key] for r in runs) / len(runs)
    row["rounds"] = len(runs)
    return row


def plot(rows: list[dict], path: Path, batch: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [s for s in dict.fromkeys(STAGES.values())] + ["other"]
    fig, ax = plt.subplots(figsize=(8, 4))
    left = [0.0] * len(rows)
    for stage in stages:
        values = [r[stage] for r in rows]
        ax.barh([r["config"] for r in rows], values, left=left, label=stage)
        left = [a + b for a, b in zip(left, values, strict=True)]
    for i, r in enumerate(rows):
        ax.text(left[i] + 0.5, i, f"{r['tokens_per_step']:.2f} tok/step, {r['tokens_per_s']:.1f} tok/s", va="center")
    ax.set_xlabel(f"ms per decode step ({batch} requests at a time)")
    ax.set_xlim(0, max(left) * 1.6)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("One decode step, by stage")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    from benchmarks.bench.sources import humaneval_problems
    from engine.catalogue import resolve_model
    from service.settings import Settings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--head", type=Path, default=None, help="drafter directory (default: the shipped one)")
    parser.add_argument("--batch", type=int, default=1, help="requests generated together")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over all configurations, order alternating")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/spec_step_profile"))
    parser.add_argument("--target", default="SmolLM2-135M-Instruct", help="served model (catalogue name)")
    parser.add_argument("--only", default=None,
                        help="comma-separated configuration names to run (default: all), e.g. 'none,mtp k=2'")
    args = parser.parse_args()
    from engine.plugins.speculative.config import parse_speculative, vllm_speculative_config

    served = args.target
    target = resolve_model(served, Settings().cache_dir).path
    spec = parse_speculative(f"mtp:{args.head}" if args.head else "mtp")
    prompts = [p["prompt"] for p in humaneval_problems()[-args.prompts:]]  # the last stubs: not in the recipe's eval
    suffix = parse_speculative("suffix")
    configs = [("none", None)] + [
        (f"mtp k={k}", vllm_speculative_config(spec, k, served)) for k in ((1, 2, 3) if args.batch == 1 else (2,))] + [
        ("suffix k=8", vllm_speculative_config(suffix, None, served))]
    configs = [(name, config, True) for name, config in configs]
    if args.batch > 1:  # what the speculative path costs in steps that draft nothing (max-batch 0), hooks or not
        configs[1:1] = [(f"{name} drafts off{'' if quiet else ' (vLLM as is)'}",
                         vllm_speculative_config(method, k, served, max_batch=0), quiet)
                        for name, method, k in (("ngram", parse_speculative("ngram"), 4), ("mtp", spec, 2),
                                                ("suffix", suffix, None)) for quiet in (False, True)
                        if quiet or name != "suffix"]
    if args.only:
        wanted = [name.strip() for name in args.only.split(",")]
        unknown = set(wanted) - {name for name, _, _ in configs}
        if unknown:
            parser.error(f"--only: no configuration {sorted(unknown)}; there are {[n for n, _, _ in configs]}")
        configs = [c for c in configs if c[0] in wanted]
    runs = []
    for round_index in range(args.rounds):  # alternate the order: this machine's speed drifts
        for name, config, quiet in configs if round_index % 2 == 0 else configs[::-1]:
            runs.append({"round": round_index,
                         **profile_in_child(name, config, prompts, args.max_tokens, target, args.batch, quiet)})
            print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in runs[-1].items()
                              if k != "speculative_config"}), flush=True)
    rows = [mean_row([r for r in runs if r["config"] == name]) for name, _, _ in configs]
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"command": "python -m benchmarks.spec_step_profile", "target": served, "batch": args.batch, "date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "rows": rows,
              "runs": runs}
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    plot(rows, args.out / "breakdown.png", args.batch)


if __name__ == "__main__":
    main()
