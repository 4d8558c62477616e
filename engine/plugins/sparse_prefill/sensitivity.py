"""Per-layer sensitivity: how far the answer-writing rows drift when one layer alone runs token-sparse.

    python -m engine.plugins.sparse_prefill.sensitivity --model DIR --length 4096 --prompts 2 --count 8 \\
        [--coverage 0.05 --window 64 --min-tokens 1024] [--out layers/<model dir name>.json]

TSA (Jo et al. 2026) runs sparse attention only on the layers where it disturbs the model least,
chosen once per model, offline. ``drift.py`` measures how much each layer rewrites the residual
stream (1 - cos of its input and output); on SmolLM2-135M that proxy picks layers 2-6 and 11-17,
which cost a continuation +37% perplexity at τ = 0.05, while the late layers it ranks worse cost
nothing (benchmarks/RESULTS.md). This profiler measures the drift that matters directly: for each
layer l, layers before l run dense (their residual stream is computed once and reused), layer l
runs the plugin's own kernel (``kernels.token_sparse_attention``, the same settings as the
server's), the layers after it run dense, and the drift of layer l is the mean over the last
``window`` positions (the rows that write the answer) of 1 - cos between the final hidden states
with and without it. The layers with the least drift are the sparse ones (never layer 0). The
prompts are ``drift.austen_prompts`` (Persuasion held out). The JSON keeps the schema of
``drift.py`` (``drift`` holds this measure, ``residual_drift`` the other one).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from engine.plugins.sparse_prefill.drift import LAYERS_DIR, austen_prompts, layer_drift, pick_sparse_layers
from kernels.token_sparse_attention import SparsityConfig, token_sparse_attention

ATTENTION = "leanserve_sparse_probe"
_PROBE: dict = {"layer": None, "config": None}  # which layer the registered attention runs sparse, and how


def _probe_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Hugging Face attention function: TSA on the probed layer, SDPA elsewhere. query [1, H, L, D]."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if module.layer_idx != _PROBE["layer"]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    out, _ = token_sparse_attention(query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1),
                                    scaling, _PROBE["config"])  # [L, H, D]
    return out[None], None


def layer_sensitivity(model: torch.nn.Module, prompts: Sequence[torch.Tensor], config: SparsityConfig) -> list[float]:
    """Per decoder layer, mean 1 - cos of the final hidden states of the last ``window`` rows, sparse vs dense."""
    decoder = model.model
    layers = decoder.layers
    totals = [0.0] * len(layers)
    for input_ids in prompts:
        inputs: list[torch.Tensor] = []
        call: dict = {}

        def record(module, args, kwargs, _inputs=inputs, _call=call):
            _inputs.append(args[0] if args else kwargs["hidden_states"])
            _call.update({k: v for k, v in kwargs.items() if k != "hidden_states"})

        handles = [layer.register_forward_pre_hook(record, with_kwargs=True) for layer in layers]
        _PROBE["layer"] = None
        try:
            dense = decoder(input_ids=input_ids.reshape(1, -1), use_cache=False).last_hidden_state[0, -config.window:]
        finally:
            for handle in handles:
                handle.remove()
        for index in range(len(layers)):
            _PROBE.update(layer=index, config=config)
            hidden = inputs[index]
            for layer in layers[index:]:
                output = layer(hidden, **call)
                hidden = output[0] if isinstance(output, tuple) else output
            final = decoder.norm(hidden)[0, -config.window:]
            drift = 1 - torch.nn.functional.cosine_similarity(final, dense, dim=-1)  # [window]
            totals[index] += drift.clamp(min=0.0).mean().item()  # rounding can put an unchanged row at -1e-8
        _PROBE["layer"] = None
    return [total / len(prompts) for total in totals]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m engine.plugins.sparse_prefill.sensitivity",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="local Hugging Face model directory")
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--prompts", type=int, default=2)
    pick = parser.add_mutually_exclusive_group(required=True)
    pick.add_argument("--fraction", type=float)
    pick.add_argument("--count", type=int)
    parser.add_argument("--coverage", type=float, default=SparsityConfig.coverage)
    parser.add_argument("--window", type=int, default=SparsityConfig.window)
    parser.add_argument("--min-tokens", type=int, default=SparsityConfig.min_tokens)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    import transformers
    from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer

    AttentionInterface.register(ATTENTION, _probe_attention)
    model_dir = args.model.expanduser().absolute()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=ATTENTION).eval()
    config = SparsityConfig(args.coverage, args.window, args.min_tokens)
    prompts = austen_prompts(tokenizer, [args.length], args.prompts)
    began = time.monotonic()
    with torch.inference_mode():
        sensitivity = layer_sensitivity(model, prompts, config)
        _PROBE["layer"] = None
        residual = layer_drift(model, prompts)
    sparse = pick_sparse_layers(sensitivity, fraction=args.fraction, count=args.count)
    print(f"{len(prompts)} prompts in {time.monotonic() - began:.0f}s; layer, sensitivity, residual drift:")
    for index, (value, other) in enumerate(zip(sensitivity, residual, strict=True)):
        print(f"  {index:3d}  {value:.6f}  {other:.6f}{'  sparse' if index in sparse else ''}")
    result = {"model": model_dir.name, "architecture": (model.config.architectures or ["?"])[0],
              "num_layers": len(sensitivity), "lengths": [args.length], "prompts": args.prompts,
              "measure": "sensitivity", "coverage": args.coverage, "window": args.window,
              "min_tokens": args.min_tokens, "drift": [round(value, 6) for value in sensitivity],
              "residual_drift": [round(value, 6) for value in residual], "sparse_layers": sparse,
              "fraction": args.fraction if args.count is None else round(args.count / len(sensitivity), 6),
              "command": "python -m engine.plugins.sparse_prefill.sensitivity " + " ".join(argv),
              "date": datetime.date.today().isoformat(), "torch": torch.__version__,
              "transformers": transformers.__version__}
    out = args.out or LAYERS_DIR / f"{model_dir.name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"sparse layers {sparse} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
