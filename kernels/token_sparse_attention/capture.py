"""Capture one layer's real query/key/value (after RoPE) on long running text, for the kernel benchmark.

    python -m kernels.token_sparse_attention.capture --model ~/.cache/leanserve/models/Qwen2.5-Coder-0.5B-Instruct \\
        --layer 6 --tokens 32768 --out /tmp/qkv.pt
    python -m kernels.token_sparse_attention.benchmark --inputs /tmp/qkv.pt --lengths 4096,8192,16384,32768

Synthetic inputs decide how concentrated attention is; a real model's layer decides it honestly. The
model (Hugging Face ``transformers``, float32, CPU) reads the bench's Austen text (the first five
novels); an attention function registered under its own name records the layer's post-RoPE
tensors and stops the forward pass there, so a 32K capture of an early layer costs a fraction of a
full prefill. The file holds ``query`` [L, H, D], ``key``/``value`` [L, H_kv, D] and ``scale``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


class _Captured(Exception):
    """Raised by the recording attention once it has the layer it wants: nothing after it runs."""


def capture(model_dir: str, layer: int, tokens: int) -> dict:
    """The layer's attention inputs on ``tokens`` tokens of Austen text."""
    from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer

    from benchmarks.bench import sources

    captured: dict = {}

    def record(module, query, key, value, attention_mask, scaling=None, **kwargs):  # [1, H, L, D] each
        if module.layer_idx == layer:
            captured.update(query=query[0].transpose(0, 1).contiguous(), key=key[0].transpose(0, 1).contiguous(),
                            value=value[0].transpose(0, 1).contiguous(),
                            scale=float(scaling if scaling is not None else query.shape[-1] ** -0.5))
            raise _Captured
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)

    AttentionInterface.register("leanserve_capture", record)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer(sources.austen_text(books=sources.AUSTEN_BOOKS[:-1])[:tokens * 8])["input_ids"][:tokens]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                 attn_implementation="leanserve_capture")
    with torch.inference_mode():
        try:
            model.model(input_ids=torch.tensor([ids]), use_cache=False)
        except _Captured:
            pass
    if not captured:
        raise ValueError(f"layer {layer} never ran (the model has {model.config.num_hidden_layers} layers)")
    return captured


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a local Hugging Face model directory")
    parser.add_argument("--layer", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    tensors = capture(str(Path(args.model).expanduser()), args.layer, args.tokens)
    torch.save(tensors, args.out)
    print(f"{args.out}: query {tuple(tensors['query'].shape)}, key {tuple(tensors['key'].shape)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
