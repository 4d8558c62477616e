"""Learned drafts or suffix drafts, step by step: what choosing between them per step would give (replay, no server).

    python -m benchmarks.hybrid_replay [--target Qwen2.5-Coder-1.5B-Instruct] [--out benchmarks/results/hybrid_replay]

The SuffixDecoding paper (Oliaro et al., 2024, section 4.4) pairs suffix decoding with a learned
drafter: where the suffix tree's draft scores well it is verified, elsewhere the model's. On this
CPU the two are complementary on code: suffix decoding drafts long runs where the answer copies
text seen before, the one-forward drafter (``--speculative mtp``) one or two tokens anywhere.
Before any serving code, this replays both on the target's held-out greedy answers (the drafter
recipe's cache, ``train_drafter``: HumanEval stubs and bench chat prompts the drafter never saw,
with the target's residual streams) at concurrency 1, exactly as the rejection sampler accepts
under greedy decoding: a draft is accepted up to its first token that differs from the answer.

Per step both proposers draft from the same state: ``SuffixProposer`` (as shipped, fed the rows
vLLM would feed it, its archive filling answer by answer) and the shipped parallel drafter's K
drafts from the target's residual stream at the last accepted token (``draft_all``). Rules choose
one draft per step; "oracle" (whichever is accepted longer) bounds them all. Reported per rule:
tokens per target step (at one request the 1.5B's step costs about the same for 1-9 rows: its
speed-up is about this), rows verified per step, and the share of steps using suffix drafts.
Writes ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

MODELS = Path.home() / ".cache" / "leanserve" / "models"
HEADS = Path(__file__).resolve().parents[1] / "engine" / "plugins" / "speculative" / "heads"
SUFFIX_K = 8


@dataclass
class Choice:
    """One step's two candidate drafts and the suffix draft's own estimate of its accepted tokens."""

    suffix: list[int]
    suffix_score: float  # sum of the suffix tree's per-token acceptance estimates (expected accepted tokens)
    learned: list[int]
    upcoming: list[int]  # the answer's next tokens (only the oracle looks)


Rule = Callable[[Choice], list[int]]


@dataclass
class Figures:
    steps: int = 0
    tokens: int = 0
    rows: int = 0
    suffix_steps: int = 0
    by_source: dict = field(default_factory=lambda: {"suffix": [0, 0], "learned": [0, 0]})  # drafted, accepted

    def as_dict(self) -> dict:
        return {"steps": self.steps, "tokens": self.tokens, "tokens_per_step": round(self.tokens / self.steps, 3),
                "rows_per_step": round(self.rows / self.steps, 2),
                "suffix_share_of_steps": round(self.suffix_steps / self.steps, 3),
                "acceptance": {k: round(a / d, 3) if d else None for k, (d, a) in self.by_source.items()}}


def rules(k: int) -> dict[str, Rule]:
    """Each rule: the draft verified in a step, from both candidates."""
    out: dict[str, Rule] = {
        f"learned only (mtp K={k})": lambda c: c.learned,
        "suffix only (as shipped, K=8)": lambda c: c.suffix,
    }
    for threshold in (0.5, 1.0, 1.5, 2.0, 3.0):
        out[f"suffix when its score >= {threshold}, else learned"] = (
            lambda c, t=threshold: c.suffix if c.suffix and c.suffix_score >= t else c.learned)
    for length in (2, 3, 4):
        out[f"suffix when it drafts >= {length} tokens, else learned"] = (
            lambda c, n=length: c.suffix if len(c.suffix) >= n else c.learned)
    return out


def load_examples(target: str, dataset: str) -> list:
    """The recipe's held-out examples for ``dataset`` (``code``: HumanEval stubs; ``chat``)."""
    from engine.plugins.speculative import train_drafter

    sys.modules["__main__"].Example = train_drafter.Example  # the cache was pickled by the recipe run as __main__
    work = Path.home() / ".cache" / "leanserve" / "drafter" / target
    return [e for path in sorted(work.glob(f"features-cpu-large-{dataset}-*.pt"))
            for e in torch.load(path, weights_only=False)]


def learned_drafts(target: str, examples: list, k: int) -> list[torch.Tensor]:
    """[T, k] target ids per example: the shipped drafter's K drafts at every position (one forward each)."""
    from safetensors import safe_open

    from engine.plugins.speculative.parallel_head import default_aux_layers, load_drafter
    from engine.plugins.speculative.train_drafter import draft_all, select_taps

    drafter = load_drafter(HEADS / target).eval()
    with safe_open(str(MODELS / target / "model.safetensors"), "pt") as weights:
        table = weights.get_tensor("model.embed_tokens.weight").float()
    embed = torch.nn.Embedding.from_pretrained(table)
    gathered = default_aux_layers(json.loads((MODELS / target / "config.json").read_text())["num_hidden_layers"])
    for example in examples:
        example.aux = select_taps(example.aux, gathered, drafter.shape.aux_layers)
    return [draft_all(drafter, embed, example, k) for example in examples]


def accepted_run(draft: list[int], upcoming: list[int]) -> int:
    """How many leading drafts the rejection sampler accepts under greedy decoding: those equal to the answer."""
    return next((i for i, (d, t) in enumerate(zip(draft, upcoming)) if d != t), min(len(draft), len(upcoming)))


def oracle(choice: Choice) -> list[int]:
    """Whichever draft is accepted longer (suffix on ties): the bound on any rule."""
    suffix_run, learned_run = accepted_run(choice.suffix, choice.upcoming), accepted_run(choice.learned, choice.upcoming)
    return choice.suffix if suffix_run >= learned_run else choice.learned


def replay(examples: list, drafts: list[torch.Tensor], rule: Rule) -> dict:
    """``rule`` over every answer in order, at concurrency 1, with its own suffix proposer (its archive fills
    answer by answer, and its state follows the tokens this rule's steps accepted)."""
    from benchmarks.suffix_replay import offline_suffix_proposer
    from engine.plugins.speculative.suffix_index import SuffixParams

    max_len = max(e.ids.numel() for e in examples) + SUFFIX_K + 2
    proposer, figures = offline_suffix_proposer(SuffixParams(), SUFFIX_K, max_len), Figures()
    row = np.zeros((1, max_len), np.int32)
    for example, learned in zip(examples, drafts, strict=True):
        seq = example.ids.tolist()
        start = example.answer_start
        row[0, : start + 1] = seq[: start + 1]  # the prompt and the prefill's token
        n, last = start + 1, [seq[start]]
        while n < len(seq):
            suffix = proposer.propose([last], np.array([n], np.int32), row)[0]
            # learned[t]: the drafts made at anchor t, after the target emitted x_{t+1}: here t = n - 2
            choice = Choice(suffix, float(sum(proposer.last_probs)) if suffix else 0.0, learned[n - 2].tolist(),
                            seq[n : n + SUFFIX_K])
            draft = rule(choice)
            accepted = accepted_run(draft, choice.upcoming)
            source = "suffix" if draft is suffix and suffix else "learned"
            figures.by_source[source][0] += len(draft)
            figures.by_source[source][1] += accepted
            figures.suffix_steps += source == "suffix"
            step = seq[n : n + accepted + 1]
            row[0, n : n + len(step)] = step
            n, last = n + len(step), step
            figures.steps += 1
            figures.tokens += len(step)
            figures.rows += 1 + len(draft)
        proposer.propose([[]], np.array([0], np.int32), row)  # the request leaves: its answer is archived
    return figures.as_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="Qwen2.5-Coder-1.5B-Instruct")
    parser.add_argument("--k", type=int, default=2, help="the learned drafter's K")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/hybrid_replay"))
    args = parser.parse_args()
    started = time.time()
    result: dict = {"command": "python -m benchmarks.hybrid_replay " + " ".join(sys.argv[1:]),
                    "date": time.strftime("%Y-%m-%d"), "target": args.target,
                    "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores"}
    for dataset in ("code", "chat"):
        examples = load_examples(args.target, dataset)
        drafts = learned_drafts(args.target, examples, args.k)
        figures = {name: replay(examples, drafts, rule)
                   for name, rule in {**rules(args.k), "oracle (whichever is accepted longer)": oracle}.items()}
        result[dataset] = {"answers": len(examples), "rules": figures}
        for name, fig in figures.items():
            print(f"{dataset:5s} {name:62s} {fig['tokens_per_step']:.3f} tok/step  rows {fig['rows_per_step']:.2f}  "
                  f"suffix steps {fig['suffix_share_of_steps']:.2f}  acceptance {fig['acceptance']}", flush=True)
    result["wall_s"] = round(time.time() - started)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
