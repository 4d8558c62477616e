"""Overload soak: a real leanserve under more load than it can serve, with clients walking away.

Starts its own server on loopback, then keeps ``--concurrency`` streaming clients
busy for ``--duration-s`` (bounded also by ``--max-requests``). A share of
clients (``--disconnect-share``) hangs up mid-stream. Every other request must end
either in a complete answer (every token asked for, ``finish_reason``, usage, and
``[DONE]``) or in a 429/503 with the OpenAI error schema (after which the client
waits ``Retry-After``, as a well-behaved one does); anything else is counted as
lost. Samples the server's resident memory (API process and engine
core) and reports its slope, and checks that the running gauge returns to 0.

    python -m benchmarks.soak --duration-s 600 --concurrency 16

Memory pressure (``--prompt-words``, ``--max-tokens`` and a small ``--kv-cache-gib``):
long, distinct prompts and long answers whose KV cache the engine cannot hold all at once.
vLLM admits a request only while its prompt fits, so it is the answers' growth that runs the
cache out: vLLM then preempts running requests and recomputes them later. Every accepted
request must still end complete; the report counts vLLM's preemptions
(``vllm:num_preemptions_total``) and splits resident memory into the API process and the
engine processes, so a slope can be pinned on one of them.

    python -m benchmarks.soak --duration-s 1200 --concurrency 12 --max-running 8 --prompt-words 600 \
        --max-tokens 384 --kv-cache-gib 0.1 --max-model-len 2048 --out benchmarks/results/soak_kv
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import httpx
import psutil

from benchmarks.local_server import free_port, start_server


@dataclass
class Tally:
    outcomes: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    tokens: int = 0
    completions: list[tuple[float, int]] = field(default_factory=list)  # (time, tokens)


# Common English words, each one token with its leading space in SmolLM2's tokenizer (and most
# BPE vocabularies), so a prompt of N random words is about N tokens and shares no long prefix.
_WORDS = ("time year people way day man thing woman life child world school state family student "  # noqa: SIM905
          "group country problem hand part place case week company system program question work "
          "government number night point home water room mother area money story fact month lot "
          "right study book eye job word business issue side kind head house service friend father "
          "power hour game line end member law car city community name president team minute idea "
          "kid body information back parent face others level office door health person art war "
          "history party result change morning reason research girl guy moment air teacher force "
          "education").split()


def prompt_text(rng: random.Random, words: int) -> str:
    if words <= 0:
        return f"Story number {rng.randint(0, 10**6)}:"
    return "Continue this list:" + "".join(" " + rng.choice(_WORDS) for _ in range(words))


def _is_error_schema(payload: dict) -> bool:
    error = payload.get("error")
    return isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}


async def one_request(client: httpx.AsyncClient, model: str, rng: random.Random, args, tally: Tally) -> None:
    max_tokens = rng.randint(16, args.max_tokens)
    body = {"model": model, "prompt": prompt_text(rng, args.prompt_words), "max_tokens": max_tokens,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    hang_up_after = rng.randint(1, 8) if rng.random() < args.disconnect_share else None
    try:
        async with client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code in (429, 503):
                payload = json.loads(await response.aread())
                kind = f"refused_{response.status_code}"
                tally.outcomes[kind if _is_error_schema(payload) else "bad_error_schema"] += 1
                # A well-behaved client waits as told; without it the soak measures a refusal spin.
                await asyncio.sleep(min(float(response.headers.get("retry-after", 1)), 5.0))
                return
            if response.status_code != 200:
                tally.outcomes[f"status_{response.status_code}"] += 1
                tally.problems.append(f"status {response.status_code}: {(await response.aread())[:200]!r}")
                return
            events = []
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                events.append(line[6:])
                if hang_up_after is not None and len(events) >= hang_up_after:
                    tally.outcomes["disconnected"] += 1
                    return
    except httpx.HTTPError as error:
        tally.outcomes["transport_error"] += 1
        tally.problems.append(f"transport: {error!r}")
        return
    tally.outcomes[check_complete(events, max_tokens, tally)] += 1


def check_complete(events: list[str], max_tokens: int, tally: Tally) -> str:
    if not events or events[-1] != "[DONE]":
        tally.problems.append(f"no [DONE]: {events[-2:]}")
        return "truncated"
    payloads = [json.loads(e) for e in events[:-1]]
    if any("error" in p for p in payloads):
        tally.problems.append(f"error mid-stream: {payloads[-1]}")
        return "error_mid_stream"
    finishes = [c["finish_reason"] for p in payloads for c in p["choices"] if c["finish_reason"]]
    usage = payloads[-1].get("usage") or {}
    if finishes != ["length"] or usage.get("completion_tokens") != max_tokens:
        tally.problems.append(f"incomplete: finishes={finishes} usage={usage} asked={max_tokens}")
        return "incomplete"
    tally.tokens += max_tokens
    tally.completions.append((time.monotonic(), max_tokens))
    return "complete"


async def client_loop(index: int, base_url: str, model: str, args, tally: Tally, stop_at: float, budget: list[int]):
    rng = random.Random(args.seed * 1000 + index)
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
        while time.monotonic() < stop_at and budget[0] > 0:
            budget[0] -= 1
            await one_request(client, model, rng, args, tally)


def rss_mib(pid: int) -> tuple[float, float]:
    """(API process, engine processes) resident memory in MiB."""
    root = psutil.Process(pid)
    children = sum(p.memory_info().rss for p in root.children(recursive=True))
    return root.memory_info().rss / 2**20, children / 2**20


async def sample_memory(pid: int, samples: list[tuple[float, float, float]], stop: asyncio.Event,
                        start: float) -> None:
    while not stop.is_set():
        samples.append((time.monotonic() - start, *rss_mib(pid)))
        try:
            await asyncio.wait_for(stop.wait(), timeout=5)
        except TimeoutError:
            pass


def slope_mib_per_min(samples: list[tuple[float, float]], start_share: float = 0.5) -> float:
    """Least-squares slope of (seconds, MiB) samples from ``start_share`` of the run on (after warm-up)."""
    tail = samples[int(len(samples) * start_share):]
    if len(tail) < 3:
        return 0.0
    xs, ys = [t / 60 for t, _ in tail], [m for _, m in tail]
    return statistics.linear_regression(xs, ys).slope


async def metric_sum(client: httpx.AsyncClient, prefix: str) -> float:
    """Sum of every sample on /metrics whose line starts with ``prefix`` (a name and its '{')."""
    text = (await client.get("/metrics")).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


async def running_gauge(client: httpx.AsyncClient) -> float:
    return await metric_sum(client, "leanserve_requests_running{")


async def soak(args, process: subprocess.Popen, base_url: str) -> dict:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as probe:
        model = (await probe.get("/v1/models")).json()["data"][0]["id"]
        tally, samples, stop = Tally(), [], asyncio.Event()
        preemptions_before = await metric_sum(probe, "vllm:num_preemptions_total{")
        start = time.monotonic()
        sampler = asyncio.create_task(sample_memory(process.pid, samples, stop, start))
        budget = [args.max_requests]
        await asyncio.gather(*(client_loop(i, base_url, model, args, tally, start + args.duration_s, budget)
                               for i in range(args.concurrency)))
        elapsed = time.monotonic() - start
        stop.set()
        await sampler
        gauge_deadline = time.monotonic() + 30
        while (gauge := await running_gauge(probe)) and time.monotonic() < gauge_deadline:
            await asyncio.sleep(0.5)
        health = (await probe.get("/health")).status_code
        preemptions = await metric_sum(probe, "vllm:num_preemptions_total{") - preemptions_before
    lost = sum(n for kind, n in tally.outcomes.items()
               if kind not in ("complete", "disconnected", "refused_429", "refused_503"))
    return {
        "elapsed_s": round(elapsed, 1),
        "requests": sum(tally.outcomes.values()),
        "outcomes": dict(tally.outcomes),
        "lost_or_truncated": lost,
        "problems": tally.problems[:20],
        "output_tokens_per_s": round(tally.tokens / elapsed, 1),
        "server_alive": process.poll() is None and health == 200,
        "running_gauge_after": gauge,
        "vllm_preemptions": int(preemptions),
        **memory_report(samples),
    }


def memory_report(samples: list[tuple[float, float, float]]) -> dict:
    """First/last RSS and slopes (second half, last quarter), in all and per process."""
    if not samples:
        return {"rss_samples": []}
    total = [(t, api + engine) for t, api, engine in samples]
    api = [(t, a) for t, a, _ in samples]
    engine = [(t, e) for t, _, e in samples]
    return {
        "rss_mib_first_last": [round(total[0][1]), round(total[-1][1])],
        "rss_slope_mib_per_min_second_half": round(slope_mib_per_min(total), 2),
        "rss_slope_mib_per_min_last_quarter": round(slope_mib_per_min(total, 0.75), 2),
        "rss_slope_mib_per_min_second_half_by_process": {
            "api": round(slope_mib_per_min(api), 2), "engine": round(slope_mib_per_min(engine), 2)},
        "rss_samples": [(round(t, 1), round(a + e, 1), round(a, 1), round(e, 1)) for t, a, e in samples],
    }


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times, total, api, engine = zip(*report["rss_samples"]) if report["rss_samples"] else ((),) * 4
    minutes = [t / 60 for t in times]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    top.plot(minutes, total, label="API + engine")
    top.set_ylabel("RSS (MiB)")
    top.set_title(f"soak: {report['requests']} requests, {report['lost_or_truncated']} lost, "
                  f"{report.get('vllm_preemptions', 0)} preemptions, "
                  f"slope {report.get('rss_slope_mib_per_min_second_half')} MiB/min")
    bottom.plot(minutes, [a - api[0] for a in api], label="API process")
    bottom.plot(minutes, [e - engine[0] for e in engine], label="engine processes")
    bottom.set_ylabel("RSS change (MiB)")
    bottom.set_xlabel("minutes")
    for axis in (top, bottom):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, default=600)
    parser.add_argument("--max-requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--prompt-words", type=int, default=0,
                        help="long distinct prompts of this many words (0: a short prompt)")
    parser.add_argument("--kv-cache-gib", type=float, default=2.0, help="server --kv-cache-gib")
    parser.add_argument("--max-model-len", type=int, default=1024, help="server --max-model-len")
    parser.add_argument("--disconnect-share", type=float, default=0.1)
    parser.add_argument("--max-running", type=int, default=8, help="server --max-running-requests")
    parser.add_argument("--max-queued", type=int, default=4, help="server --max-queued-requests")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/soak"))
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--enforce-eager",
               "--max-running-requests", str(args.max_running), "--max-queued-requests", str(args.max_queued),
               "--kv-cache-gib", str(args.kv_cache_gib), "--max-model-len", str(args.max_model_len)]
    base_url = f"http://127.0.0.1:{port}"
    process = start_server(command, args.out / "server.log", f"{base_url}/ready")
    try:
        report = asyncio.run(soak(args, process, base_url))
    finally:
        process.terminate()
        exit_code = process.wait(timeout=120)
    report = {"date": date.today().isoformat(), "config": {k: str(v) for k, v in vars(args).items()},
              "exit_code_after_sigterm": exit_code, **report}
    (args.out / "soak.json").write_text(json.dumps(report, indent=2))
    plot(report, args.out / "soak_rss.png")
    print(json.dumps({k: v for k, v in report.items() if k != "rss_samples"}, indent=2))


if __name__ == "__main__":
    main()
