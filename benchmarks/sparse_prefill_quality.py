"""Token-sparse prefill quality: perplexity of a held-out novel at long context, dense vs sparse.

    python -m benchmarks.sparse_prefill_quality --model default --length 8000 --windows 4 --coverages 0.02,0.05,0.1

The plugin runs inside vLLM exactly as ``leanserve serve --sparse-prefill`` runs it (the engine
arguments and plugin hand-over come from the same ``plan_engine``), but in-process through
``vllm.LLM``, because the figure needs prompt log-probabilities, which the HTTP API does not
return. The text is *Persuasion*, the Austen novel that neither the layer profile
(``engine/plugins/sparse_prefill/drift.py``) nor the other benchmarks read; it is cut into
``--windows`` windows of ``--length`` tokens. Every window is scored by every arm: dense (the
per-request opt-out) and sparse at each coverage τ (the per-request coverage).

What a user gets from a sparse prefill is the answer decoded after it: decode attends densely over
every cached token. The sparse arms therefore run with a per-request window W = ``--tail`` (1,024):
the window's rows attend densely over every token, as decode would, and score the context for the
selection, so the perplexity of the last ``--tail`` tokens is the perplexity of a continuation read
after a sparse prefill of the ``--length - --tail`` tokens before it: the headline figure
(``ppl_tail``). ``ppl`` over every position is printed too; it includes the rows a sparse layer
dropped (zero attention output there), which no answer token ever is. Relative changes against
dense. Writes ``<out>/quality_<model>.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from benchmarks.bench import sources


def arms(coverages: list[float], window: int) -> dict[str, dict]:
    return {"dense": {"enabled": False}, **{f"sparse@{c}": {"enabled": True, "coverage": c, "window": window}
                                                for c in coverages}}


def negative_log_likelihoods(llm, windows: list[list[int]], options: dict) -> list[list[float]]:
    """Per window, -log p(token_i | tokens_<i) for i = 1..L-1 (vLLM's prompt log-probabilities)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0, extra_args={"sparse_prefill": options})
    result = []
    for window in windows:  # one at a time: prompt log-probabilities hold [L, vocab] logits (5 GB for Qwen at 8K)
        (output,) = llm.generate([TokensPrompt(prompt_token_ids=window)], params, use_tqdm=False)
        result.append([-position[token].logprob for token, position in zip(window[1:], output.prompt_logprobs[1:],
                                                                           strict=True)])
    return result


def perplexity(nlls: list[list[float]], tail: int | None = None) -> float:
    values = [value for window in nlls for value in (window[-tail:] if tail else window)]
    return math.exp(sum(values) / len(values))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--length", type=int, default=8000)
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--tail", type=int, default=1024)
    parser.add_argument("--window", type=int, default=None, help="per-request window W (default: --tail)")
    parser.add_argument("--coverages", type=lambda text: [float(x) for x in text.split(",")], default=[0.05])
    parser.add_argument("--serve-flags", default="", help="plugin settings as serve flags, e.g. "
                                                          "'--sparse-prefill-layers all --sparse-prefill-window 128'")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sparse_prefill"))
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer
    from vllm import LLM

    from engine.factory import plan_engine
    from engine.registry import hand_over_to_vllm
    from service.cli import add_settings_flags, settings_from_args

    flags = argparse.ArgumentParser()
    add_settings_flags(flags)
    settings = settings_from_args(flags.parse_args(["--model", args.model, "--sparse-prefill", "--max-model-len",
                                                    str(args.length + 8), "--sparse-prefill-min-prompt", "1024",
                                                    "--enforce-eager", *args.serve_flags.split()]))
    plan = plan_engine(settings)
    hand_over_to_vllm(plan.plugins)
    tokenizer = AutoTokenizer.from_pretrained(plan.context.model_path)
    held_out = tokenizer(sources.austen_text(books=sources.AUSTEN_BOOKS[-1:]))["input_ids"]
    step = (len(held_out) - args.length) // max(1, args.windows - 1)
    windows = [held_out[i * step:i * step + args.length] for i in range(args.windows)]
    started = time.time()
    llm = LLM(**{**plan.engine_args, "kv_cache_memory_bytes": 2 << 30})
    results = {}
    for name, options in arms(args.coverages, args.window or args.tail).items():
        nlls = negative_log_likelihoods(llm, windows, options)
        results[name] = {"ppl": perplexity(nlls), "ppl_tail": perplexity(nlls, args.tail)}
        print(name, results[name], flush=True)
    dense = results["dense"]
    for figures in results.values():
        figures["relative_change"] = figures["ppl"] / dense["ppl"] - 1
        figures["relative_change_tail"] = figures["ppl_tail"] / dense["ppl_tail"] - 1
    report = {"model": plan.served_model_name, "text": "persuasion (held out)", "length": args.length,
              "windows": args.windows, "tail": args.tail, "window": args.window or args.tail, "serve_flags": args.serve_flags, "results": results,
              "command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"),
              "minutes": (time.time() - started) / 60}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"quality_{plan.served_model_name}.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
