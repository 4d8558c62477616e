"""Which positions must the large model write? Replay switching policies on teacher-forced entropies.

    python -m benchmarks.adaptive_replay [--answers benchmarks/results/adaptive_humaneval/answers.jsonl]
        [--every 1] [--positions FILE] [--out benchmarks/results/adaptive_replay]

The HumanEval sweep (adaptive_humaneval.py) costs about half an hour per setting on this
machine; this replay scores a whole grid of policies in seconds once the models have read
the answers (about 16 minutes, cached in ``--positions``):

1. Take the large model's greedy answers from the sweep's ``answers.jsonl`` (every
   ``--every``-th problem) and run each model once over prompt + answer (teacher forcing,
   transformers, bf16). Keep per answer position each model's entropy (nats) and greedy token.
2. Where the two greedy tokens differ is where the large model must write for the answer to
   stay its own (greedy: a small-written token equal to the large model's choice changes
   nothing). Report how rare those positions are and how well the small model's entropy at a
   position ranks them (the share of them among the most uncertain x% of positions).
3. Replay each policy of ``engine/plugins/adaptive/policy.py`` (the classes the server runs)
   along the answer, as ``AdaptiveEngine`` drives them: the small model's entropy while it
   writes (its uncertain token is rewritten by the large model), the large model's while it
   writes. Report the large model's share of tokens, the share of differing positions it
   writes, hand-overs per answer, and the share of answers that stay *exactly* the large
   model's (no differing position left to the small model).

The replay follows the large model's answer, so "exact" is exact; the token share is the one
of answers that stay on that path (one that leaves it continues elsewhere, as the sweep
measures). Token-level deferral (``token``) came out of this analysis; RESULTS.md has the
figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.adaptive_humaneval import ASK, LARGE, SMALL
from engine.plugins.adaptive.policy import POLICIES, SwitchPolicy


def teacher_force(answers: dict[str, str], model_dirs: dict[str, Path]) -> dict[str, dict]:
    """Per task: the answer's token ids and, per model, the entropy and greedy token at each answer position."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks.bench.sources import humaneval_problems
    from engine.plugins.adaptive.entropy import entropy_nats

    prompts = {problem["task_id"]: problem["prompt"] for problem in humaneval_problems()}
    tokenizer = AutoTokenizer.from_pretrained(model_dirs[SMALL])  # one vocabulary for both (checked by the server)
    sequences = {}
    for task_id, answer in answers.items():
        chat = [{"role": "user", "content": ASK.format(prompt=prompts[task_id])}]
        prompt = tokenizer(tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False),
                           add_special_tokens=False)["input_ids"]
        sequences[task_id] = (prompt, tokenizer(answer, add_special_tokens=False)["input_ids"])
    positions: dict[str, dict] = {task_id: {"answer_ids": answer} for task_id, (_, answer) in sequences.items()}
    for name, directory in model_dirs.items():
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16).eval()
        started = time.perf_counter()
        for task_id, (prompt, answer) in sequences.items():
            with torch.no_grad():
                logits = model(torch.tensor([prompt + answer])).logits[0, len(prompt) - 1 : -1]  # [A, vocab]
            positions[task_id][name] = {
                "entropy": entropy_nats(logits).tolist(),  # [A]: as the server's tap computes it
                "argmax": logits.argmax(-1).tolist(),  # [A]
            }
        print(f"{name}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        del model
    return positions


def ranking(positions: dict[str, dict], shares: tuple[float, ...]) -> dict:
    """How rare differing positions are, and the share of them among the small model's most uncertain positions."""
    import numpy as np

    entropy = np.concatenate([np.array(v[SMALL]["entropy"]) for v in positions.values()])
    differs = np.concatenate([np.array(v[SMALL]["argmax"]) != np.array(v[LARGE]["argmax"])
                              for v in positions.values()])
    by_uncertainty = differs[np.argsort(-entropy, kind="stable")]
    caught = np.cumsum(by_uncertainty) / max(differs.sum(), 1)
    return {"positions": int(differs.size), "differing_share": float(differs.mean()),
            "differing_caught_among_most_uncertain": {f"{share:g}": float(caught[int(share * differs.size) - 1])
                                                      for share in shares}}


def replay(positions: dict[str, dict], make_policy: Callable[[], SwitchPolicy]) -> dict:
    """One policy along every answer, driven as AdaptiveEngine drives it."""
    written = large_written = missed = differing = exact = switches = 0
    for sequence in positions.values():
        small, large = sequence[SMALL], sequence[LARGE]
        differs = [a != b for a, b in zip(small["argmax"], large["argmax"], strict=True)]
        policy = make_policy()
        active, position, missed_here = policy.active, 0, 0
        while position < len(differs):
            if active == "small":
                if policy.observe(small["entropy"][position]) == "large":
                    active, switches = "large", switches + 1
                    continue  # the small model's uncertain token is discarded: the large one writes this position
                missed_here += differs[position]
            else:
                large_written += 1
                if policy.observe(large["entropy"][position]) == "small":
                    active, switches = "small", switches + 1
            position += 1
        written += len(differs)
        missed += missed_here
        differing += sum(differs)
        exact += missed_here == 0
    answers = len(positions)
    return {"large_fraction": large_written / written, "differing_written_by_large": 1 - missed / max(differing, 1),
            "exact_answers": exact / answers, "switches_per_answer": switches / answers}


def _grid() -> list[tuple[str, str, float, int, int]]:
    """(name, policy, threshold, window, min_dwell): the shipped rules at their sweep settings, and token's grid."""
    grid = [(f"ead {t:g}", "ead", t, 4, 4) for t in (0.1, 0.3, 1.0)]
    grid += [(f"quantile {t:g}", "quantile", t, 4, 4) for t in (0.1, 0.5)]
    for window, dwell in ((1, 1), (2, 2), (3, 3), (4, 4)):
        grid += [(f"token {t:g}/{window}/{dwell}", "token", t, window, dwell) for t in (0.05, 0.1, 0.2, 0.3, 0.5)]
    return grid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answers", type=Path, default=Path("benchmarks/results/adaptive_humaneval/answers.jsonl"))
    parser.add_argument("--every", type=int, default=1, help="every N-th problem (1: all answers)")
    parser.add_argument("--positions", type=Path, default=None,
                        help="teacher-forced positions: read if present, written otherwise (default: in --out's "
                             "scratch, not committed)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/adaptive_replay"))
    args = parser.parse_args(argv)

    rows = [json.loads(line) for line in args.answers.read_text().splitlines()]
    large_answers = {row["task_id"]: row["answer"] for row in rows
                     if row["config"] == "large" and row["concurrency"] == 8}  # the sweep's answers
    chosen = {task_id: answer for task_id, answer in large_answers.items()
              if int(task_id.split("/")[1]) % args.every == 0}
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.positions or Path.home() / ".cache" / "leanserve" / f"adaptive-replay-every{args.every}.json"
    if cache.exists():
        positions = json.loads(cache.read_text())
    else:
        from engine.catalogue import resolve_model
        from service.settings import Settings

        model_dirs = {name: Path(resolve_model(name, Settings().cache_dir).path) for name in (SMALL, LARGE)}
        positions = teacher_force(chosen, model_dirs)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(positions))
    positions = {task_id: value for task_id, value in positions.items() if task_id in chosen}
    results = {"meta": {"date": time.strftime("%Y-%m-%d"), "small": SMALL, "large": LARGE, "answers": len(positions),
                        "teacher": "transformers, bfloat16, the large model's greedy answers"},
               "ranking": ranking(positions, (0.05, 0.1, 0.15, 0.2)), "policies": {}}
    for name, policy, threshold, window, dwell in _grid():
        make = lambda p=policy, t=threshold, w=window, d=dwell: POLICIES[p](threshold=t, window=w, min_dwell=d)
        results["policies"][name] = replay(positions, make)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results["ranking"]))
    for name, row in results["policies"].items():
        print(f"{name:20s} " + "  ".join(f"{key} {value:.3f}" for key, value in row.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
