"""Visual-token pruning quality: held-out accuracy of the trained scene reader against kept ratio,
per method and per question kind, through the real HTTP API.

    python -m benchmarks.visual_pruning_accuracy [--model llava-scenes|DIR] [--questions 500] [--card]
        [--out benchmarks/results/visual_pruning_accuracy]

One leanserve server (``--model llava-scenes --visual-pruning divprune``, or a built scene-reader
directory); every request is the
``openai`` client sending a base64 PNG and a question, its method and budget in ``extra_body``
(greedy, so a setting's answers are reproducible). Unpruned, then DivPrune, [CLS] attention,
ZOO-Prune, random-k and uniform stride at 50/25/10/5% of the 576 image tokens kept.

Writes ``results.json`` and ``accuracy.png``; with ``--card``, the figures the model card and the
CI test state (``engine/scenes_vlm/weights/card.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import openai

from benchmarks.local_server import free_port, start_server, stop_server
from engine.catalogue import resolve_model
from engine.scenes_vlm.held_out import HeldOutQuestion, accuracy_by_kind, chance_by_kind, held_out_questions
from engine.scenes_vlm.questions import KINDS
from engine.scenes_vlm.weights import WEIGHTS_DIR
from service.settings import Settings

MODEL = "llava-scenes"
METHODS = ("divprune", "cls", "zoo", "random", "stride")
RATIOS = (0.5, 0.25, 0.1, 0.05)
CI_QUESTIONS = 100  # the first N held-out questions: what tests/integration/test_visual_pruning.py asks
CARD = WEIGHTS_DIR / "card.json"


def settings(methods: tuple[str, ...] = METHODS, ratios: tuple[float, ...] = RATIOS) -> dict[str, dict]:
    """Setting name -> the request's ``visual_pruning`` field."""
    out = {"unpruned": {"enabled": False}}
    out.update({f"{method}@{ratio}": {"method": method, "keep": ratio} for method in methods for ratio in ratios})
    return out


async def answer_all(client: openai.AsyncOpenAI, model: str, messages: list[list[dict]], budget: dict,
                     concurrency: int) -> list[str]:
    """Every question's reply under one budget (greedy, a few tokens: answers are one or two words)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(message: list[dict]) -> str:
        async with gate:
            reply = await client.chat.completions.create(model=model, messages=message, max_tokens=8, temperature=0,
                                                         extra_body={"visual_pruning": budget})
            return reply.choices[0].message.content or ""

    return await asyncio.gather(*(one(message) for message in messages))


async def measure(base_url: str, model: str, questions: list[HeldOutQuestion], targets: dict[str, dict],
                  concurrency: int) -> dict[str, list[bool]]:
    """Setting name -> whether each question was answered right."""
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="none", max_retries=0, timeout=300)
    messages = [question.messages() for question in questions]
    marks = {}
    for name, budget in targets.items():
        started = time.time()
        replies = await answer_all(client, model, messages, budget, concurrency)
        marks[name] = [question.is_right(reply) for question, reply in zip(questions, replies)]
        print(f"{name:>14}: {sum(marks[name]) / len(questions):.3f} ({time.time() - started:.0f} s)", flush=True)
    return marks


def summarise(questions: list[HeldOutQuestion], marks: dict[str, list[bool]]) -> dict[str, dict]:
    rows = {}
    unpruned = accuracy_by_kind(questions, marks["unpruned"])
    for name, right in marks.items():
        accuracy = accuracy_by_kind(questions, right)
        rows[name] = {"accuracy": accuracy, "relative_to_unpruned": {
            kind: (value / unpruned[kind] if unpruned[kind] else None) for kind, value in accuracy.items()}}
    return rows


def plot(rows: dict[str, dict], chance: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = ("all", *KINDS)
    figure, axes = plt.subplots(2, 3, figsize=(13, 7.5), sharex=True)
    for axis, kind in zip(axes.flat, kinds):
        for method in METHODS:
            axis.plot([100 * r for r in RATIOS], [100 * rows[f"{method}@{r}"]["accuracy"][kind] for r in RATIOS],
                      marker="o", label=method)
        axis.axhline(100 * rows["unpruned"]["accuracy"][kind], color="black", linestyle="--", label="unpruned")
        if kind == "all":
            axis.axhline(100 * chance, color="grey", linestyle=":", label="chance")
        axis.set_title(kind, fontsize=10)
        axis.set_xscale("log")
        axis.set_xticks([100 * r for r in RATIOS], [f"{100 * r:g}" for r in RATIOS])
        axis.minorticks_off()
        axis.set_ylim(0, 102)
        axis.grid(alpha=0.3)
    for axis in axes[1]:
        axis.set_xlabel("image tokens kept (%)")
    for axis in axes[:, 0]:
        axis.set_ylabel("held-out accuracy (%)")
    axes.flat[0].legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def markdown_table(rows: dict[str, dict], chance: dict[str, float]) -> str:
    """Accuracy per setting, overall and per kind, with unpruned and chance rows (for RESULTS.md)."""
    kinds = ("all", *KINDS)
    lines = ["| setting | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
    lines.append("| chance (best blind guess) | " + " | ".join(f"{chance[kind]:.2f}" for kind in kinds) + " |")
    for name, row in rows.items():
        cells = []
        for kind in kinds:
            relative = row["relative_to_unpruned"][kind]
            cells.append(f"{row['accuracy'][kind]:.2f}" + ("" if name == "unpruned" or relative is None
                                                          else f" ({100 * relative:.0f}%)"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def card_figures(questions: list[HeldOutQuestion], marks: dict[str, list[bool]], chance: dict[str, float]) -> dict:
    """What the model card states and the CI test checks."""
    ci = questions[:CI_QUESTIONS]
    return {
        "held_out_questions": len(questions),
        "accuracy": accuracy_by_kind(questions, marks["unpruned"]),
        "chance": chance,
        "ci_set": {"questions": len(ci), "tolerance": 0.05,
                   "unpruned": sum(marks["unpruned"][:CI_QUESTIONS]) / len(ci),
                   "divprune@0.5": sum(marks["divprune@0.5"][:CI_QUESTIONS]) / len(ci)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=MODEL, help="catalogue name or a built scene-reader directory")
    parser.add_argument("--questions", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--card", action="store_true", help=f"write the model card's figures to {CARD}")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/visual_pruning_accuracy"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    questions = held_out_questions(args.questions)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "service.cli", "serve", "--model", args.model, "--port", str(port),
               "--visual-pruning", "divprune", "--max-model-len", "2048", "--kv-cache-gib", "1"]
    started = time.time()
    process = start_server(command, Path(tempfile.mkdtemp()) / "server.log", f"{base_url}/ready", timeout_s=900)
    try:
        served = resolve_model(args.model, Settings().cache_dir).name
        marks = asyncio.run(measure(base_url, served, questions, settings(), args.concurrency))
    finally:
        stop_server(process)
    chance = chance_by_kind(questions)
    overall_chance = sum(chance[q.kind] for q in questions) / len(questions)
    rows = summarise(questions, marks)
    result = {
        "command": "python -m benchmarks.visual_pruning_accuracy " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d", time.gmtime()), "wall_s": round(time.time() - started),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs", "model": args.model,
        "questions": len(questions), "questions_per_kind": {k: sum(q.kind == k for q in questions) for k in KINDS},
        "chance": {**chance, "all": overall_chance}, "settings": rows,
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "table.md").write_text(markdown_table(rows, {**chance, "all": overall_chance}))
    plot(rows, overall_chance, args.out / "accuracy.png",
         f"{args.model}: held-out accuracy vs image tokens kept ({len(questions)} questions, through the API)")
    if args.card:
        CARD.write_text(json.dumps(card_figures(questions, marks, {**chance, "all": overall_chance}), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
