"""Suffix decoding replayed on the target's own greedy answers: which draft-length rule gives most per step time.

    python -m benchmarks.suffix_replay [--prompts 60] [--out benchmarks/results/suffix_replay]

Speed-up at concurrency 1 factors into tokens per step over step time (``spec_step_profile``). Both
parts can be had without a server:

1. **Greedy answers.** The target answers HumanEval stubs (completions) and the held-out chat
   prompts (chat template) greedily, ≤ ``--max-tokens``, in vLLM in this process, once; cached in
   ``answers.json``.
2. **What a verification costs, by draft length.** vLLM runs the target with a ``custom_class``
   proposer (``CyclingDraftProposer``) that drafts d = 0, 1, ..., K tokens in turn, tokens the target
   never writes; every step of the run is timed and filed under the draft length it verified. The
   lengths interleave step by step, so the machine's drift and the growing context fall on all of
   them alike. ``cost[d]`` is the mean step in ms.
3. **Replay.** ``SuffixProposer`` is driven as vLLM drives it at concurrency 1 (one row; requests in
   order, so its archive of earlier answers fills as on a server), and each draft is accepted up to
   its first token that differs from the greedy answer - exactly what the rejection sampler does
   under greedy decoding. The predicted speed-up of a rule is
   ``(tokens emitted / sum of cost[d] over its steps) / (1 / cost[0])``.

Each rule is a ``SuffixParams`` and a draft length K (``rules``). Writes ``results.json`` (the cost curve, every rule's figures,
acceptance per draft position, and how well the suffix tree's probability estimates predict
acceptance) and ``cost.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections import defaultdict
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the runner lives in this process: its steps can be timed

_NEVER_WRITTEN = 0  # SmolLM2's <|endoftext|>: a greedy answer stops there, so a draft of it is never accepted
_PROPOSER = "benchmarks.suffix_replay.CyclingDraftProposer"


class CyclingDraftProposer:
    """A ``custom_class`` drafter that drafts 0, 1, ..., K never-accepted tokens in turn, step by step.

    It only exists to time verification steps of every draft length in one run (``verification_cost``).
    """

    def __init__(self, vllm_config: object) -> None:
        self.k = vllm_config.speculative_config.num_speculative_tokens
        self.calls = 0

    def load_model(self, *args: object, **kwargs: object) -> None:
        """Nothing to load."""

    def propose(self, sampled_token_ids: list[list[int]], *args: object, **kwargs: object) -> list[list[int]]:
        self.calls += 1
        d = self.calls % (self.k + 1)
        return [[_NEVER_WRITTEN] * d if sampled else [] for sampled in sampled_token_ids]


def greedy_answers(target: str, max_tokens: int, humaneval: int, chat: int, seed: int) -> list[dict]:
    """Prompt and greedy answer token ids: ``humaneval`` stubs, then ``chat`` chat prompts (seeded draws)."""
    from vllm import LLM, SamplingParams

    from benchmarks.bench.datasets import chat_requests, humaneval_requests

    llm = LLM(model=target, dtype="float32", max_model_len=2048, enforce_eager=True, seed=0,
              kv_cache_memory_bytes=2 << 30)
    tokenizer = llm.get_tokenizer()
    prompts = [("humaneval", r.source, tokenizer.encode(r.prompt)) for r in humaneval_requests(humaneval, max_tokens, seed)]
    for r in chat_requests(chat, max_tokens, seed):  # rendered to text, then tokenized, as the server does
        text = tokenizer.apply_chat_template([{"role": "user", "content": r.prompt}], add_generation_prompt=True,
                                             tokenize=False)
        prompts.append(("chat", r.source, tokenizer.encode(text, add_special_tokens=False)))
    outputs = llm.generate([{"prompt_token_ids": ids} for _, _, ids in prompts],
                           SamplingParams(temperature=0.0, max_tokens=max_tokens), use_tqdm=False)
    return [{"dataset": dataset, "source": source, "prompt": list(ids), "answer": list(out.outputs[0].token_ids)}
            for (dataset, source, ids), out in zip(prompts, outputs, strict=True)]


def verification_cost(target: str, prompts: list[list[int]], max_draft: int, max_tokens: int) -> dict:
    """Mean ms of a decode step verifying d drafts, d = 0..max_draft, at concurrency 1 (see module doc)."""
    from vllm import LLM, SamplingParams
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    from engine.plugins.speculative.quiet_steps import skip_speculative_work_in_steps_without_drafts

    skip_speculative_work_in_steps_without_drafts()  # as every speculative server runs
    samples: dict[int, list[float]] = defaultdict(list)
    pending: dict[str, float] = {}
    execute, sample = CPUModelRunner.execute_model, CPUModelRunner.sample_tokens

    def timed_execute(self, scheduler_output, *args, **kwargs):
        drafts = scheduler_output.scheduled_spec_decode_tokens
        decoding = scheduler_output.total_num_scheduled_tokens == 1 + sum(len(d) for d in drafts.values())
        pending.update(started=time.perf_counter(), drafts=sum(len(d) for d in drafts.values()) if decoding else -1)
        return execute(self, scheduler_output, *args, **kwargs)

    def timed_sample(self, *args, **kwargs):
        try:
            return sample(self, *args, **kwargs)
        finally:
            if pending.get("drafts", -1) >= 0:  # a decode step of the single request (not a prefill)
                samples[int(pending["drafts"])].append(1000 * (time.perf_counter() - pending["started"]))
            pending.clear()

    CPUModelRunner.execute_model, CPUModelRunner.sample_tokens = timed_execute, timed_sample
    llm = LLM(model=target, dtype="float32", max_model_len=2048, enforce_eager=True, seed=0,
              kv_cache_memory_bytes=2 << 30,
              speculative_config={"method": "custom_class", "model": _PROPOSER, "num_speculative_tokens": max_draft})
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    llm.generate([{"prompt_token_ids": prompts[0]}], SamplingParams(max_tokens=16), use_tqdm=False)  # warm-up
    samples.clear()
    for ids in prompts:  # one at a time: concurrency 1
        llm.generate([{"prompt_token_ids": ids}], params, use_tqdm=False)
    CPUModelRunner.execute_model, CPUModelRunner.sample_tokens = execute, sample
    return {d: {"ms": float(np.mean(v)), "median_ms": float(np.median(v)), "steps": len(v)}
            for d, v in sorted(samples.items())}


def offline_suffix_proposer(params: object, k: int, max_len: int):
    """A ``SuffixProposer`` driven without vLLM, one request at a time (as at concurrency 1), that keeps the
    estimated acceptance probability of each token of its last draft (``last_probs``)."""
    from engine.plugins.speculative.suffix import SuffixProposer

    class Recording(SuffixProposer):
        def _best_draft(self, request, max_tokens, requests):
            draft, probs = super()._best_draft(request, max_tokens, requests)
            self.last_probs = probs
            return draft, probs

    config = SimpleNamespace(speculative_config=SimpleNamespace(num_speculative_tokens=k),
                             model_config=SimpleNamespace(max_model_len=max_len),
                             scheduler_config=SimpleNamespace(max_num_seqs=1))
    return Recording(config, params)


def replay(answers: list[dict], params: object, k: int, costs: list[float]) -> dict:
    """Drive a fresh ``SuffixProposer`` over ``answers`` in order at concurrency 1; figures per dataset."""
    max_len = max(len(a["prompt"]) + len(a["answer"]) for a in answers) + k + 2
    proposer = offline_suffix_proposer(params, k, max_len)
    row = np.zeros((1, max_len), np.int32)
    figures: dict[str, dict] = {}
    for answer in answers:
        prompt, out = answer["prompt"], answer["answer"]
        fig = figures.setdefault(answer["dataset"], {"tokens": 0, "steps": 0, "ms": 0.0, "drafted": 0, "accepted": 0,
                                                      "drafting_steps": 0, "by_position": defaultdict(lambda: [0, 0]),
                                                      "calibration": defaultdict(lambda: [0, 0])})
        row[0, : len(prompt)] = prompt
        row[0, len(prompt)] = out[0]  # the prefill's token
        n, emitted, last = len(prompt) + 1, 1, [out[0]]
        while emitted < len(out):
            draft = proposer.propose([last], np.array([n], np.int32), row)[0]
            accepted = 0
            while accepted < len(draft) and emitted + accepted < len(out) and draft[accepted] == out[emitted + accepted]:
                accepted += 1
            for position in range(len(draft)):
                fig["by_position"][position + 1][0] += 1
                fig["by_position"][position + 1][1] += position < accepted
                estimate = round(min(proposer.last_probs[position], 0.999), 1)  # bins of 0.1
                fig["calibration"][estimate][0] += 1
                fig["calibration"][estimate][1] += position < accepted
            step = out[emitted : emitted + accepted + 1]
            row[0, n : n + len(step)] = step
            n, emitted, last = n + len(step), emitted + len(step), step
            fig["steps"] += 1
            fig["tokens"] += len(step)
            fig["ms"] += costs[min(len(draft), len(costs) - 1)]
            fig["drafted"] += len(draft)
            fig["accepted"] += accepted
            fig["drafting_steps"] += bool(draft)
        proposer.propose([[]], np.array([0], np.int32), row)  # the request leaves: its answer is archived
    for fig in figures.values():
        fig["tokens_per_step"] = fig["tokens"] / fig["steps"]
        fig["speedup"] = fig["tokens"] / fig["ms"] * costs[0]
        fig["by_position"] = {p: round(a / t, 3) for p, (t, a) in sorted(fig["by_position"].items())}
        # estimated probability (bin) -> [drafted tokens, share accepted]
        fig["calibration"] = {p: [t, round(a / t, 3)] for p, (t, a) in sorted(fig["calibration"].items())}
    return figures


def rules() -> list[tuple[str, object, int]]:
    """(name, SuffixParams, K) of every rule replayed: the paper's knobs, the shipped ones, and one knob moved at a time."""
    from engine.plugins.speculative.suffix_index import SuffixParams

    paper = SuffixParams(eager_max_batch=0)  # min_match 2, factor 1.0 in every step
    shipped = SuffixParams()  # at concurrency 1 every step is eager: min_match 1, factor 2
    out = [("paper knobs (min_match 2, factor 1, K=8)", paper, 8), ("shipped (eager: min_match 1, factor 2, K=8)", shipped, 8)]
    out += [(f"paper, K={k}", paper, k) for k in (4, 16)]
    out += [(f"paper, p>={p}", replace(paper, min_token_prob=p), 8) for p in (0.3, 0.5)]
    out += [(f"paper, factor {f}", replace(paper, max_spec_factor=f), 8) for f in (2.0, 3.0)]
    out += [("paper, min_match 1", replace(paper, min_match=1), 8), ("paper, min_match 3", replace(paper, min_match=3), 8)]
    out += [(f"shipped, factor {f}", replace(shipped, eager_spec_factor=f), 8) for f in (1.0, 3.0, 4.0)]
    out += [(f"shipped, K={k}", shipped, k) for k in (6, 12)]
    out += [(f"shipped, p>={p}", replace(shipped, min_token_prob=p), 8) for p in (0.05, 0.3)]
    return out


def plot(costs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ds = sorted(costs)
    ax.plot(ds, [costs[d]["ms"] for d in ds], marker="o")
    ax.set_xlabel("drafts verified in the step (rows = drafts + 1)")
    ax.set_ylabel("ms per decode step")
    ax.set_ylim(0, max(costs[d]["ms"] for d in ds) * 1.15)
    ax.set_title("Verification cost at concurrency 1")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    from benchmarks.spec_step_profile import run_in_child
    from engine.catalogue import resolve_model
    from service.settings import Settings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--humaneval", type=int, default=60, help="HumanEval stubs replayed")
    parser.add_argument("--chat", type=int, default=48, help="chat prompts replayed")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--max-draft", type=int, default=16, help="longest draft whose verification is timed")
    parser.add_argument("--cost-prompts", type=int, default=8, help="requests timed for the cost curve")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/suffix_replay"))
    args = parser.parse_args()
    target = resolve_model(args.model, Settings().cache_dir).path
    args.out.mkdir(parents=True, exist_ok=True)
    answers_path = args.out / "answers.json"
    if answers_path.exists():
        answers = json.loads(answers_path.read_text())
    else:
        answers = run_in_child(greedy_answers, target, args.max_tokens, args.humaneval, args.chat, args.seed)
        answers_path.write_text(json.dumps(answers))
    cost_path = args.out / "cost.json"
    if cost_path.exists():
        cost = {int(d): v for d, v in json.loads(cost_path.read_text()).items()}
    else:
        cost = run_in_child(verification_cost, target, [a["prompt"] for a in answers[: args.cost_prompts]],
                            args.max_draft, args.max_tokens)
        cost_path.write_text(json.dumps(cost, indent=1))
    costs = [cost[d]["ms"] for d in sorted(cost)]
    results = []
    for name, params, k in rules():
        figures = replay(answers, params, k, costs)
        results.append({"rule": name, "k": k, "params": asdict(params), **figures})
        print(name, json.dumps({ds: {key: round(v, 3) for key, v in f.items() if key in
                                     ("speedup", "tokens_per_step", "drafted", "accepted", "drafting_steps", "steps")}
                                for ds, f in figures.items()}), flush=True)
    (args.out / "results.json").write_text(json.dumps({
        "command": "python -m benchmarks.suffix_replay", "date": time.strftime("%Y-%m-%d"), "model": args.model,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "answers": {ds: sum(a["dataset"] == ds for a in answers) for ds in ("humaneval", "chat")},
        "cost_ms_by_drafts": cost, "rules": results}, indent=1))
    plot(cost, args.out / "cost.png")


if __name__ == "__main__":
    main()
