"""``leanserve bench``: load-test OpenAI-compatible servers side by side.

    leanserve bench --base-url http://127.0.0.1:8000 --base-url http://127.0.0.1:8001 \\
        --dataset random --input-len 128 --output-len 64 --num-requests 32 \\
        --concurrency 1,4,16 --slo ttft=500ms,tpot=50ms --out benchmarks/out/bench

Every target gets the identical request set at each load level (a fresh seeded set per
level, so no level hits prefixes cached by the one before); target order rotates per level
and runs are separated by an idle gap, so slow drift of the machine favours no one.
Writes report.json, latency_cdf.png and load_curves.png into --out.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import platform
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import httpx

from benchmarks.bench import datasets, plots, report, stats
from benchmarks.bench.client import Endpoint
from benchmarks.bench.datasets import BenchRequest
from benchmarks.bench.runner import LoadLevel, run_level

WARMUP_SEED_OFFSET = 10_007


def is_loopback_url(url: str) -> bool:
    """True when every address the URL's host resolves to is a loopback address."""
    host = urlparse(url).hostname
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def normalise_base_url(url: str) -> str:
    """Accept ``http://h:p``, ``http://h:p/`` and ``http://h:p/v1``; return the part before ``/v1``."""
    url = url.rstrip("/")
    return url.removesuffix("/v1")


def parse_list(text: str, kind: type) -> list:
    values = [kind(part) for part in text.split(",") if part.strip()]
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"need positive comma-separated values, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leanserve bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_argument_group("targets")
    target.add_argument("--base-url", action="append", required=True,
                        help="server root (with or without /v1); repeat to compare servers")
    target.add_argument("--name", action="append", help="label per --base-url, in order (default host:port)")
    target.add_argument("--extra-body", action="append", type=json.loads,
                        help="JSON merged into every request body, one per --base-url in order (e.g. a plugin's "
                             "per-request options: the same URL twice compares two settings side by side)")
    target.add_argument("--model", help="model name to request (default: each server's first /v1/models id)")
    target.add_argument("--api-key", default=os.environ.get("LEANSERVE_BENCH_API_KEY"),
                        help="bearer token sent to every target (env LEANSERVE_BENCH_API_KEY)")
    target.add_argument("--endpoint", choices=("completions", "chat"), default="completions",
                        help="/v1/completions (default) or /v1/chat/completions; images, videos force chat")
    target.add_argument("--allow-remote", action="store_true", help="permit non-loopback base URLs")

    data = parser.add_argument_group("dataset")
    data.add_argument("--dataset", choices=datasets.DATASETS, default="random")
    data.add_argument("--num-requests", type=int, default=32, help="requests per target and load level")
    data.add_argument("--input-len", type=int, default=128, help="prompt tokens (random, austen)")
    data.add_argument("--output-len", type=int, default=64, help="max_tokens of every request")
    data.add_argument("--range-ratio", type=float, default=0.0,
                      help="lengths uniform in [len*(1-r), len*(1+r)] (random, austen)")
    data.add_argument("--long-lengths", default=",".join(map(str, datasets.DEFAULT_LONG_LENGTHS)),
                      help="prompt lengths in tokens for --dataset long, cycled")
    data.add_argument("--image-sizes", default="224x224,448x448,896x896", help="WxH list for --dataset images")
    data.add_argument("--video-sizes", default="320x240,640x360", help="WxH list for --dataset videos")
    data.add_argument("--video-frames", type=int, default=16, help="frames of each --dataset videos clip (8 fps)")
    data.add_argument("--tokenizer", help="tokenizer dir for building prompts (default: the default model's)")
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--data-cache", type=Path, help="where corpora are downloaded (default ~/.cache/leanserve/bench)")
    data.add_argument("--save-dataset", type=Path,
                      help="also write the first level's set as JSONL for `vllm bench serve --dataset-name custom`")

    load = parser.add_argument_group("load")
    mode = load.add_mutually_exclusive_group()
    mode.add_argument("--concurrency", type=lambda s: parse_list(s, int),
                      help="closed loop: in-flight caps, e.g. 1,4,16")
    mode.add_argument("--request-rate", type=lambda s: parse_list(s, float),
                      help="open loop: Poisson arrival rates in req/s, e.g. 0.5,1,2")
    load.add_argument("--max-concurrency", type=int, help="in-flight cap for --request-rate levels")
    load.add_argument("--slo", type=stats.parse_slo, default={}, help="goodput SLOs, e.g. ttft=500ms,tpot=50ms")
    load.add_argument("--warmup", type=int, default=2, help="requests per target before measuring (not reported)")
    load.add_argument("--idle-gap-s", type=float, default=3.0, help="pause between runs")
    load.add_argument("--max-duration-s", type=float, default=600.0, help="hard bound per run")
    load.add_argument("--request-timeout-s", type=float, default=300.0)
    load.add_argument("--temperature", type=float, default=0.0)
    load.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false",
                      help="let answers stop at EOS (default: ignore_eos, fixed output lengths)")

    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, default=Path("benchmarks/out/bench"))
    out.add_argument("--no-plots", action="store_true")
    out.add_argument("--no-progress", action="store_true")
    return parser


class FastTokenizer:
    """A ``tokenizer.json`` through the ``tokenizers`` library: importing transformers alone
    takes 8-30 s on a busy 2-core machine, longer than a short load run."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(path))
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=False)
        self.all_special_ids = [i for i, t in self._tokenizer.get_added_tokens_decoder().items() if t.special]

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=False)


def load_tokenizer(path: str | None):
    """The tokenizer prompts are built with: ``path``'s, or the default model's."""
    if path is None:
        from engine.catalogue import resolve_model
        from service.settings import Settings

        path = resolve_model("default", Settings().cache_dir).path
    if (Path(path) / "tokenizer.json").exists():
        return FastTokenizer(Path(path) / "tokenizer.json")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def build_requests(args: argparse.Namespace, seed: int, num: int, tokenizer) -> list[BenchRequest]:
    """The request set for one seed; the same call gives the same set on every machine."""
    if args.dataset == "random":
        return datasets.random_requests(tokenizer, num, args.input_len, args.output_len, seed, args.range_ratio)
    if args.dataset == "austen":
        return datasets.austen_requests(tokenizer, num, args.input_len, args.output_len, seed, args.range_ratio,
                                        args.data_cache)
    if args.dataset == "long":
        return datasets.long_requests(tokenizer, num, parse_list(args.long_lengths, int), args.output_len, seed,
                                      args.data_cache)
    if args.dataset == "humaneval":
        return datasets.humaneval_requests(num, args.output_len, seed, args.data_cache)
    if args.dataset == "chat":
        return datasets.chat_requests(num, args.output_len, seed)
    if args.dataset == "videos":
        return datasets.video_requests(num, datasets.parse_sizes(args.video_sizes), args.video_frames,
                                       args.output_len, seed)
    return datasets.image_requests(num, datasets.parse_sizes(args.image_sizes), args.output_len, seed)


def served_model(base_url: str, api_key: str | None) -> str:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    response = httpx.get(f"{base_url}/v1/models", headers=headers, timeout=30)
    response.raise_for_status()
    return response.json()["data"][0]["id"]


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical CPUs"


def _progress(total: int, desc: str, disabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=disabled, leave=False, file=sys.stderr)


async def run_all(args: argparse.Namespace, targets: list[dict], levels: list[LoadLevel], tokenizer) -> dict:
    endpoints = {t["name"]: Endpoint(t["base_url"], t["model"], args.endpoint, args.api_key, args.ignore_eos,
                                     args.temperature, t.get("extra_body") or {}) for t in targets}
    result: dict = {"warmup": {}, "levels": []}
    if args.warmup > 0:
        warm = build_requests(args, args.seed + WARMUP_SEED_OFFSET, args.warmup, tokenizer)
        for name, endpoint in endpoints.items():
            run = await run_level(endpoint, warm, LoadLevel(concurrency=1), seed=args.seed,
                                  max_duration_s=args.max_duration_s, request_timeout_s=args.request_timeout_s)
            result["warmup"][name] = stats.summarise(run.results, run.duration_s, {}, run.not_sent)
            result["warmup"][name].pop("ttft_ms"), result["warmup"][name].pop("itl_ms")
    first_run = True
    for index, level in enumerate(levels):
        requests = build_requests(args, args.seed + index, args.num_requests, tokenizer)
        if index == 0 and args.save_dataset:
            datasets.save_jsonl(requests, args.save_dataset)
        shift = index % len(targets)
        order = [t["name"] for t in targets[shift:] + targets[:shift]]
        entry = {"label": level.label, "x": level.x, "concurrency": level.concurrency,
                 "request_rate": level.request_rate, "order": order, "runs": {}, "records": {}}
        for name in order:
            if not first_run:
                await asyncio.sleep(args.idle_gap_s)
            first_run = False
            with _progress(len(requests), f"{name} {level.label}", args.no_progress) as bar:
                run = await run_level(endpoints[name], requests, level, seed=args.seed + index,
                                      max_duration_s=args.max_duration_s, request_timeout_s=args.request_timeout_s,
                                      progress=bar)
            entry["runs"][name] = stats.summarise(run.results, run.duration_s, args.slo, run.not_sent)
            entry["records"][name] = report.request_records(run.results)
        entry["runs"] = {t["name"]: entry["runs"][t["name"]] for t in targets}  # stable order in the JSON
        base = targets[0]["name"]
        entry["ratios"] = {f"{t['name']}/{base}": stats.ratios(entry["runs"][t["name"]], entry["runs"][base])
                           for t in targets[1:]}
        print(report.format_level(entry), flush=True)
        result["levels"].append(entry)
    return result


def totals(result: dict, targets: list[dict]) -> dict[str, dict[str, int]]:
    """Server-reported token usage per target over everything the bench sent (warm-up included)."""
    out = {}
    for t in targets:
        runs = [level["runs"][t["name"]] for level in result["levels"]]
        if t["name"] in result["warmup"]:
            runs.append(result["warmup"][t["name"]])
        out[t["name"]] = {
            "requests": sum(r["sent"] for r in runs),
            "prompt_tokens": sum(r["usage_prompt_tokens_all"] for r in runs),
            "output_tokens": sum(r["usage_output_tokens_all"] for r in runs),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.name and len(args.name) != len(args.base_url):
        parser.error("give one --name per --base-url")
    if args.extra_body and len(args.extra_body) != len(args.base_url):
        parser.error("give one --extra-body per --base-url")
    urls = [normalise_base_url(u) for u in args.base_url]
    remote = [u for u in urls if not is_loopback_url(u)]
    if remote and not args.allow_remote:
        parser.error(f"refusing non-loopback targets {remote}: pass --allow-remote to load-test them")
    if args.dataset in ("images", "videos", "chat"):
        args.endpoint = "chat"
    if args.num_requests <= 0:
        parser.error("--num-requests must be positive")
    if args.request_rate:
        levels = [LoadLevel(concurrency=args.max_concurrency, request_rate=r) for r in args.request_rate]
    else:
        levels = [LoadLevel(concurrency=c) for c in (args.concurrency or [1])]
    names = args.name or [urlparse(u).netloc for u in urls]
    if len(set(names)) != len(names):
        names = [f"{n}#{i}" for i, n in enumerate(names)]
    targets = [{"name": n, "base_url": u, "model": args.model or served_model(u, args.api_key)}
               for n, u in zip(names, urls)]
    for target, extra in zip(targets, args.extra_body or (), strict=False):
        target["extra_body"] = extra
    tokenizer = load_tokenizer(args.tokenizer) if args.dataset in ("random", "austen", "long") else None

    started = time.time()
    result = asyncio.run(run_all(args, targets, levels, tokenizer))
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("api_key",)}
    config.update(api=args.endpoint, mode="rate" if args.request_rate else "concurrency", slo_s=args.slo)
    full = {
        "config": config,
        "command": "leanserve bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_s": time.time() - started,
        "machine": machine(),
        "versions": {"python": platform.python_version(), "httpx": httpx.__version__},
        "targets": targets,
        **result,
        "totals": totals(result, targets),
    }
    if args.api_key:
        full["command"] = full["command"].replace(args.api_key, "***")
    report.write_json(full, args.out / "report.json")
    written = [] if args.no_plots else plots.write_plots(full, args.out)
    print(f"wrote {args.out / 'report.json'}" + "".join(f", {p}" for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
