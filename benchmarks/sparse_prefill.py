"""Token-sparse prefill benchmark through the real HTTP API: TTFT and passkey retrieval, dense vs sparse.

    python -m benchmarks.sparse_prefill ttft --model Qwen2.5-Coder-0.5B-Instruct --lengths 8192,16384,32768
    python -m benchmarks.sparse_prefill passkey --model default --lengths 2048,4096,8000
    python -m benchmarks.sparse_prefill_quality --model ...     # perplexity (in-process, prompt logprobs)

One leanserve server with ``--sparse-prefill``; the dense arm is the same server with the per-request
opt-out (``{"sparse_prefill": {"enabled": false}}``), so both arms share the process, the weights and
the machine's state. The two arms never share prefix-cache blocks (the plugin salts sparse prompts),
and every round uses a fresh passage, so every request prefills its whole prompt. The order of the
arms alternates per round. Prompts are token ids cut from the Austen text (the first five novels;
*Persuasion* is held out for perplexity). Writes ``<out>/<mode>_<model>.json`` and a PNG beside it.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.bench import sources
from benchmarks.local_server import free_port, start_server, stop_server
from engine.catalogue import resolve_model
from service.settings import Settings

ARMS = {"dense": {"enabled": False}, "sparse": {}}  # --coverages replaces "sparse" with one arm per coverage
PASSKEY = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "\n\nWhat is the pass key? The pass key is"


def serve(model: str, max_model_len: int, flags: list[str]) -> tuple:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "service.cli", "serve", "--model", model, "--port", str(port),
               "--max-model-len", str(max_model_len), "--kv-cache-gib", "4", "--sparse-prefill", *flags]
    log = Path(tempfile.mkdtemp(prefix="leanserve-sparse-bench-")) / "server.log"
    return start_server(command, log, f"{base_url}/ready", timeout_s=1200), base_url, log


def training_tokens(tokenizer) -> list[int]:
    """The first five novels as token ids (Persuasion is the held-out text)."""
    return tokenizer(sources.austen_text(books=sources.AUSTEN_BOOKS[:-1]))["input_ids"]


def complete(base_url: str, model: str, prompt: list[int], arm: str, max_tokens: int) -> dict:
    started = time.perf_counter()
    response = httpx.post(f"{base_url}/v1/completions", timeout=3600, json={
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
        "sparse_prefill": ARMS[arm]})
    response.raise_for_status()
    body = response.json()
    return {"seconds": time.perf_counter() - started, "text": body["choices"][0]["text"], "usage": body["usage"]}


def run_ttft(args: argparse.Namespace, base_url: str, model: str, tokens: list[int]) -> dict:
    """One-token answers (TTFT = the request's latency) for each length, arms alternating per round."""
    rows = []
    rng = random.Random(args.seed)
    for arm in ARMS:  # warm-up, not recorded: first-call costs (allocations, kernels' first runs) of each path
        start = rng.randrange(0, len(tokens) - min(args.lengths))
        complete(base_url, model, tokens[start:start + min(args.lengths)], arm, 1)
    for length in args.lengths:
        for round_index in range(args.rounds):
            start = rng.randrange(0, len(tokens) - length)
            prompt = tokens[start:start + length]
            order = list(ARMS) if round_index % 2 == 0 else list(reversed(list(ARMS)))
            for arm in order:
                result = complete(base_url, model, prompt, arm, 1)
                rows.append({"length": length, "round": round_index, "arm": arm, "ttft_s": result["seconds"],
                             "usage": result["usage"]})
                print(f"{length:>6} round {round_index} {arm:>6}: {result['seconds']:.2f} s", flush=True)
    summary = {}
    for length in args.lengths:
        medians = {arm: statistics.median(r["ttft_s"] for r in rows if r["length"] == length and r["arm"] == arm)
                   for arm in ARMS}
        summary[str(length)] = {f"{arm}_ttft_s": value for arm, value in medians.items()}
        for arm in ARMS:
            if arm == "dense":
                continue
            used = [r["usage"]["sparse_prefill"] for r in rows if r["length"] == length and r["arm"] == arm]
            summary[str(length)][f"{arm}_speedup"] = medians["dense"] / medians[arm]
            summary[str(length)][f"{arm}_kept_fraction"] = (sum(u["tokens_kept"] for u in used)
                                                            / max(1, sum(u["tokens_scored"] for u in used)))
    return {"rows": rows, "summary": summary}


def run_passkey(args: argparse.Namespace, base_url: str, model: str, tokens: list[int], tokenizer) -> dict:
    """A random 5-digit key hidden at each depth of running text; correct when the answer starts with it."""
    rng = random.Random(args.seed)
    question = tokenizer(QUESTION)["input_ids"]
    rows = []
    for length in args.lengths:
        for depth in args.depths:
            for trial in range(args.trials):
                key = str(rng.randrange(10_000, 100_000))
                needle = tokenizer(" " + PASSKEY.format(key=key) + " ")["input_ids"]
                filler_len = length - len(needle) - len(question)
                start = rng.randrange(0, len(tokens) - filler_len)
                filler = tokens[start:start + filler_len]
                at = int(depth * filler_len)
                prompt = filler[:at] + needle + filler[at:] + question
                for arm in (list(ARMS) if trial % 2 == 0 else list(reversed(list(ARMS)))):
                    result = complete(base_url, model, prompt, arm, 8)
                    correct = result["text"].strip().startswith(key)
                    rows.append({"length": length, "depth": depth, "trial": trial, "arm": arm, "key": key,
                                 "answer": result["text"], "correct": correct})
                    print(f"{length:>6} depth {depth:.2f} {arm:>6}: {'ok ' if correct else 'NO '} {result['text']!r}",
                          flush=True)
    summary = {arm: {str(length): statistics.mean(r["correct"] for r in rows if r["arm"] == arm and r["length"] == length)
                     for length in args.lengths} for arm in ARMS}
    return {"rows": rows, "accuracy": summary}


def plot(mode: str, result: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    if mode == "ttft":
        lengths = sorted(int(length) for length in result["summary"])
        for arm in ARMS:
            axis.plot(lengths, [result["summary"][str(length)][f"{arm}_ttft_s"] for length in lengths], "o-", label=arm)
        axis.set_ylabel("TTFT (s, median)")
    else:
        lengths = sorted(int(length) for length in result["accuracy"]["dense"])
        for arm in ARMS:
            axis.plot(lengths, [result["accuracy"][arm][str(length)] for length in lengths], "o-", label=arm)
        axis.set_ylabel("passkey accuracy")
        axis.set_ylim(-0.05, 1.05)
    axis.set_xscale("log", base=2)
    axis.set_xlabel("prompt tokens")
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("ttft", "passkey"))
    parser.add_argument("--model", default="default")
    parser.add_argument("--lengths", type=lambda text: [int(x) for x in text.split(",")], default=[8192])
    parser.add_argument("--depths", type=lambda text: [float(x) for x in text.split(",")], default=[0.1, 0.5, 0.9])
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--coverages", default="", help="one sparse arm per coverage τ (default: the server's)")
    parser.add_argument("--server-flags", default="", help="extra serve flags, e.g. '--sparse-prefill-coverage 0.1'")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sparse_prefill"))
    args = parser.parse_args(argv)
    if args.coverages:
        ARMS.pop("sparse")
        ARMS.update({f"sparse@{c}": {"coverage": float(c)} for c in args.coverages.split(",")})
    from transformers import AutoTokenizer

    resolved = resolve_model(args.model, Settings().cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    tokens = training_tokens(tokenizer)
    max_model_len = max(args.lengths) + 16
    process, base_url, _log = serve(args.model, max_model_len, args.server_flags.split())
    try:
        started = time.time()
        if args.mode == "ttft":
            result = run_ttft(args, base_url, resolved.name, tokens)
        else:
            result = run_passkey(args, base_url, resolved.name, tokens, tokenizer)
    finally:
        stop_server(process)
    result.update(model=resolved.name, command=" ".join(sys.argv), server_flags=args.server_flags,
                  machine=f"{platform.processor() or platform.machine()}, {_cpu_model()}",
                  date=time.strftime("%Y-%m-%d", time.gmtime(started)), minutes=(time.time() - started) / 60)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{args.mode}_{resolved.name}"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    plot(args.mode, result, args.out / f"{stem}.png",
         f"{resolved.name}: token-sparse prefill ({args.mode})")
    print(json.dumps(result.get("summary") or result.get("accuracy"), indent=1))
    return 0


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


if __name__ == "__main__":
    raise SystemExit(main())
