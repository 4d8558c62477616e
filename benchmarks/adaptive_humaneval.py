"""Entropy-adaptive switching on HumanEval: pass@1 against the large model's share of the tokens.

    python -m benchmarks.adaptive_humaneval [--problems 164] [--ead 0.3] [--quantile 0.5] [--token 0.1/2/2,0.2/2/2]
        [--timed ead:0.3,token:0.2/2/2] [--servers both|adaptive|large] [--resume]
        [--out benchmarks/results/adaptive_humaneval]

Through the real HTTP API with the ``openai`` client, greedy, chat prompt asking for the
whole function in one python block (the answer ends at its closing fence). Two servers,
one at a time (the machine has 2 cores; nothing else should run beside them, and memory
must hold both models: another vLLM server beside them got a worker OOM-killed):

1. ``--model LARGE --adaptive-small SMALL``: the ``--timed`` points and the small model
   alone (``adaptive.enabled`` false) at concurrency 1 over the first ``--timed-problems``;
   then the small model and every policy and threshold, chosen per request
   (``adaptive.policy`` and ``adaptive.threshold``), at concurrency 8 over the problems.
2. ``--model LARGE`` alone: concurrency 8 over the problems, 1 over the timed ones.

Concurrency-1 timings start with every timed prompt cached in both engines
(``warm_prompts``), so that no configuration's figure depends on which ran before it.

Cost is EAD's (Ruan et al., 2025): (f_L·P_L + (1−f_L)·P_S) / P_L, with f_L the large
model's share of the written tokens and P the parameter counts. Writes ``results.json``
(after every run, so ``--resume`` picks up where a run stopped), ``answers.jsonl`` and
``pareto.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

from openai import AsyncOpenAI

from benchmarks.adaptive_plot import plot_pareto
from benchmarks.bench.humaneval_check import passes
from benchmarks.bench.sources import humaneval_problems
from benchmarks.local_server import free_port, start_server, stop_server
from engine.plugins.adaptive.policy import POLICIES

SMALL, LARGE = "Qwen2.5-Coder-0.5B-Instruct", "Qwen2.5-Coder-1.5B-Instruct"
ASK = ("Complete the following Python function. Reply with the whole function, signature included, "
       "in one ```python code block.\n\n```python\n{prompt}```")
MAX_TOKENS = 512


def parameter_count(model_dir: Path) -> int:
    """Parameters stored in a safetensors checkpoint (tied embeddings counted once)."""
    import safetensors

    total = 0
    for shard in sorted(model_dir.glob("*.safetensors")):
        with safetensors.safe_open(str(shard), "pt") as tensors:
            for name in tensors.keys():  # noqa: SIM118 - safe_open has no __iter__
                total += math.prod(tensors.get_slice(name).get_shape())
    return total


async def _answer(client: AsyncOpenAI, problem: dict, adaptive: dict | None) -> dict:
    started = time.perf_counter()
    reply = await client.chat.completions.create(
        model=LARGE, messages=[{"role": "user", "content": ASK.format(prompt=problem["prompt"])}],
        temperature=0, max_tokens=MAX_TOKENS, stop=["\n```\n"],
        extra_body={"adaptive": adaptive} if adaptive is not None else None)
    usage = reply.usage.model_dump()
    return {"task_id": problem["task_id"], "answer": reply.choices[0].message.content,
            "completion_tokens": usage["completion_tokens"], "adaptive": usage.get("adaptive"),
            "latency_s": time.perf_counter() - started}


async def _run_problems(base_url: str, problems: list[dict], adaptive: dict | None, concurrency: int) -> tuple:
    gate = asyncio.Semaphore(concurrency)
    async with AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", timeout=1800, max_retries=0) as client:

        async def one(problem: dict) -> dict:
            async with gate:
                return await _answer(client, problem, adaptive)

        started = time.perf_counter()
        answers = await asyncio.gather(*(one(problem) for problem in problems))
        return answers, time.perf_counter() - started


def measure(base_url: str, name: str, problems: list[dict], adaptive: dict | None, concurrency: int,
            answers_log: Path) -> dict:
    """One configuration over the problems: pass@1, token shares, wall time and output tok/s."""
    answers, wall_s = asyncio.run(_run_problems(base_url, problems, adaptive, concurrency))
    by_id = {problem["task_id"]: problem for problem in problems}
    with answers_log.open("a") as log:
        for answer in answers:
            answer["passed"] = passes(answer["answer"], by_id[answer["task_id"]])
            log.write(json.dumps({"config": name, "concurrency": concurrency, **answer}) + "\n")
    tokens = sum(a["completion_tokens"] for a in answers)
    shares = {key: sum((a["adaptive"] or {}).get(key, 0) for a in answers)
              for key in ("small_tokens", "large_tokens", "switches", "catchup_tokens")}
    written = shares["small_tokens"] + shares["large_tokens"]
    passed = sum(a["passed"] for a in answers)
    return {
        "config": name, "adaptive": adaptive, "concurrency": concurrency, "problems": len(problems),
        "passed": passed, "pass_at_1": passed / len(answers),
        "output_tokens": tokens, "wall_s": wall_s, "output_tok_per_s": tokens / wall_s,
        "mean_latency_s": sum(a["latency_s"] for a in answers) / len(answers),
        "large_fraction": shares["large_tokens"] / written if written else None,
        "switches_per_request": shares["switches"] / len(answers),
        "catchup_tokens_per_switch": shares["catchup_tokens"] / shares["switches"] if shares["switches"] else None,
        **shares,
    }


def warm_prompts(base_url: str, problems: list[dict], adaptive_fields: list[dict | None]) -> None:
    """Every timed prompt once through each engine (one token), before the concurrency-1 timings.

    Without it the first configuration timed on a server pays the prompts' prefill (in the
    large engine at its first hand-over) and the next ones find them cached, so the figures
    would depend on the order of the runs. Warm, every configuration starts alike.
    """

    async def warm() -> None:
        async with AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", timeout=600, max_retries=0) as client:
            for problem in problems:
                for field in adaptive_fields:
                    await client.chat.completions.create(
                        model=LARGE, messages=[{"role": "user", "content": ASK.format(prompt=problem["prompt"])}],
                        temperature=0, max_tokens=1, extra_body={"adaptive": field} if field is not None else None)

    asyncio.run(warm())


def _points(text: str) -> list[tuple[str, str]]:
    return [tuple(item.split(":")) for item in text.split(",") if item]


def _settings_list(text: str) -> list[str]:
    """``τ`` or ``τ/window/min_dwell`` items (the server's window and dwell when not given)."""
    return [item for item in text.split(",") if item]


def _adaptive_field(policy: str, setting: str) -> tuple[str, dict]:
    """The run's name and the request's ``adaptive`` field for one policy setting."""
    threshold, *rest = setting.split("/")
    field = {"policy": policy, "threshold": float(threshold)}
    if rest:
        field["window"], field["min_dwell"] = (int(x) for x in rest)
    return f"{policy} {setting}", field


def _configs(args: argparse.Namespace) -> list[tuple[str, dict | None]]:
    """(name, adaptive field) for the concurrency-8 sweep on the adaptive server."""
    configs: list[tuple[str, dict | None]] = [("small", {"enabled": False})]
    for policy in POLICIES:
        configs += [_adaptive_field(policy, setting) for setting in getattr(args, policy)]
    return configs


def _serve(flags: list[str], scratch: Path, kv_gib: float):
    port = free_port()
    command = [sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--model", LARGE,
               "--max-model-len", "4096", "--kv-cache-gib", str(kv_gib), *flags]
    base_url = f"http://127.0.0.1:{port}"
    return start_server(command, scratch / f"server-{port}.log", f"{base_url}/ready"), base_url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=164, help="the first N HumanEval problems (all: 164)")
    sweep_defaults = {"ead": ["0.3"], "quantile": ["0.5"], "token": ["0.1/2/2", "0.2/2/2"]}
    for policy in POLICIES:  # one --<policy> list per policy the server has
        parser.add_argument(f"--{policy}", type=_settings_list, default=sweep_defaults.get(policy, []),
                            help=f"{policy} settings: thresholds (nats), each optionally /window/min_dwell")
    parser.add_argument("--timed", type=_points, default=[], help="policy:threshold points timed at concurrency 1")
    parser.add_argument("--timed-problems", type=int, default=12)
    parser.add_argument("--servers", choices=("both", "adaptive", "large"), default="both",
                        help="which of the two servers to run (both: adaptive first)")
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--min-dwell", type=int, default=4)
    parser.add_argument("--kv-cache-gib", type=float, default=2.0)
    parser.add_argument("--resume", action="store_true", help="keep the runs already in results.json")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/adaptive_humaneval"))
    args = parser.parse_args(argv)

    problems = humaneval_problems()[: args.problems]
    timed = problems[: args.timed_problems]
    args.out.mkdir(parents=True, exist_ok=True)
    results_path, answers_log = args.out / "results.json", args.out / "answers.jsonl"
    rows = json.loads(results_path.read_text())["runs"] if args.resume and results_path.exists() else []
    done = {(row["config"], row["concurrency"]) for row in rows}
    scratch = Path(tempfile.mkdtemp(prefix="adaptive-humaneval-"))
    from engine.catalogue import resolve_model
    from service.settings import Settings

    cache = Settings().cache_dir
    params = {name: parameter_count(Path(resolve_model(name, cache).path)) for name in (SMALL, LARGE)}

    def save() -> None:
        meta = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
                "small": SMALL, "large": LARGE, "parameters": params, "max_tokens": MAX_TOKENS,
                "window": args.window, "min_dwell": args.min_dwell, "problems": len(problems)}
        results_path.write_text(json.dumps({"meta": meta, "runs": rows}, indent=1))
        plot_pareto(rows, params, args.out / "pareto.png")

    def run_all(base_url: str, plan: list[tuple[str, dict | None, list[dict], int]], warm: list[dict | None]) -> None:
        warmed = False
        for name, adaptive, subset, concurrency in plan:
            if (name, concurrency) in done:
                continue
            if concurrency == 1 and not warmed:
                warm_prompts(base_url, subset, warm)
                warmed = True
            row = measure(base_url, name, subset, adaptive, concurrency, answers_log)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "adaptive"}), flush=True)
            save()

    adaptive_plan = []  # the short concurrency-1 timings first, then the sweep
    if timed:
        adaptive_plan += [("small", {"enabled": False}, timed, 1)]
        adaptive_plan += [(*_adaptive_field(policy, setting), timed, 1) for policy, setting in args.timed]
    adaptive_plan += [(name, field, problems, 8) for name, field in _configs(args)]
    if args.servers != "large" and any((name, c) not in done for name, _, _, c in adaptive_plan):
        process, base_url = _serve(["--adaptive-small", SMALL, "--adaptive-window", str(args.window),
                                    "--adaptive-min-dwell", str(args.min_dwell)], scratch, args.kv_cache_gib)
        try:
            run_all(base_url, adaptive_plan, warm=[{"enabled": False}, {"threshold": 0}])  # small, then large
        finally:
            stop_server(process)
    large_plan = [("large", None, problems, 8)] + ([("large", None, timed, 1)] if timed else [])
    if args.servers != "adaptive" and any((name, c) not in done for name, _, _, c in large_plan):
        process, base_url = _serve([], scratch, args.kv_cache_gib)
        try:
            run_all(base_url, large_plan, warm=[None])
        finally:
            stop_server(process)
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
