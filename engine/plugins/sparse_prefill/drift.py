"""Profile per-layer representation drift offline and pick the layers that run token-sparse prefill.

    python -m engine.plugins.sparse_prefill.drift --model DIR --lengths 8192 --prompts 4 --fraction 0.5 \\
        --out engine/plugins/sparse_prefill/layers/<model dir name>.json

Token Sparse Attention (TSA; Jo, Kang, Song and Kim, "Token Sparse Attention: Efficient
Long-Context Inference with Interleaved Token Selection", arXiv:2602.03216, 2026) runs attention
on a selected subset of tokens only in some layers and dense attention in the rest. Which layers
can afford it is decided once per model, offline: a layer whose output residual stream is nearly
the same as its input changes the representation little, so an approximate (sparse) attention
there perturbs the model least, while layers that rewrite the stream need full attention. The
measure here is the drift of each decoder layer ``l``::

    drift[l] = mean over tokens and prompts of 1 - cos(h_in, h_out)

where ``h_in``/``h_out`` are the residual stream entering and leaving layer ``l``. They are read
with a forward hook on each decoder layer (its positional input and its output), not from
``output_hidden_states``: in Hugging Face the last entry of that tuple has the final norm applied,
which would inflate the last layer's drift. (The authors' profiling script uses the relative update
``||h_out - h_in|| / ||h_in||`` instead; it is printed alongside for comparison, the selection uses
the cosine drift.) The forward runs the decoder stack only (no LM head, so no vocab-sized logits).

Rule: layer 0 is never sparse. The first layer mixes the raw embeddings and is where the
attention-sink pattern forms; its drift is also the largest in practice, but the rule holds
whatever the numbers say. ``--fraction f`` picks ``round(f * num_layers)`` layers (at least one,
at most ``num_layers - 1``); ``--count n`` picks ``n``. Ties go to the lower layer index.

Prompts are windows of running English prose from the bench's Jane Austen corpus
(``benchmarks.bench.sources.austen_text``), starting on a paragraph at evenly spaced offsets, one
per prompt, through the first five novels. The last novel, *Persuasion*, is held out entirely: it
is kept for perplexity checks elsewhere. Prompts are tokenized the tokenizer's default way
(neither SmolLM2 nor Qwen2.5 adds a BOS token). The model runs in float32 with SDPA attention
under ``torch.inference_mode``; CPU by default.

The shipped lists live in ``layers/<model dir name>.json``; ``load_layer_list`` finds them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: load_layer_list stays cheap to import
    import torch

    from benchmarks.bench.datasets import Tokenizer

LAYERS_DIR = Path(__file__).resolve().parent / "layers"


def _decoder_layers(model: torch.nn.Module) -> tuple[torch.nn.Module, Sequence[torch.nn.Module]]:
    """The decoder stack (a ``*Model``, without LM head) and its layers, for a CausalLM or a bare model."""
    base = model.get_decoder() if hasattr(model, "get_decoder") else model
    layers = getattr(base, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__}: no decoder `.layers` found")
    return base, layers


def _layer_stats(model: torch.nn.Module, input_ids_batches: Iterable[torch.Tensor],
                 log: Callable[[str], object] | None = None) -> tuple[list[float], list[float]]:
    """Per-layer token means of ``1 - cos(h_in, h_out)`` and of ``||h_out - h_in|| / ||h_in||``."""
    import torch

    base, layers = _decoder_layers(model)
    n = len(layers)
    cos_sum = torch.zeros(n, dtype=torch.float64)
    rel_sum = torch.zeros(n, dtype=torch.float64)
    tokens = 0

    def hook(index: int) -> Callable[..., None]:
        def record(module: torch.nn.Module, args: tuple, kwargs: dict, output: object) -> None:
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = output[0] if isinstance(output, tuple) else output
            h_in, h_out = h_in.float(), h_out.float()
            cos = torch.nn.functional.cosine_similarity(h_in, h_out, dim=-1, eps=1e-8)
            cos_sum[index] += (1.0 - cos).double().sum().item()
            rel = torch.linalg.vector_norm(h_out - h_in, dim=-1) / (torch.linalg.vector_norm(h_in, dim=-1) + 1e-8)
            rel_sum[index] += rel.double().sum().item()
        return record

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            for batch in input_ids_batches:
                batch = torch.as_tensor(batch, dtype=torch.long)
                if batch.dim() == 1:
                    batch = batch.unsqueeze(0)
                step = time.monotonic()
                base(input_ids=batch.to(device), use_cache=False)
                tokens += batch.numel()
                if log is not None:
                    log(f"batch {tuple(batch.shape)}: {time.monotonic() - step:.1f}s")
    finally:
        for handle in handles:
            handle.remove()
    if tokens == 0:
        raise ValueError("no input tokens")
    return (cos_sum / tokens).tolist(), (rel_sum / tokens).tolist()


def layer_drift(model: torch.nn.Module, input_ids_batches: Iterable[torch.Tensor]) -> list[float]:
    """Per decoder layer, the mean over all tokens of ``1 - cos(h_in, h_out)`` (in [0, 2]).

    ``input_ids_batches``: LongTensors ``[batch, seq]`` (or ``[seq]``), each run as one forward pass
    of the decoder stack; the mean weighs every token equally across batches."""
    return _layer_stats(model, input_ids_batches)[0]


def pick_sparse_layers(drift: Sequence[float], fraction: float | None = None, count: int | None = None) -> list[int]:
    """The ``count`` (or ``round(fraction * len(drift))``) layers with least drift, sorted; never layer 0.

    A fraction rounds half up, to at least one layer and at most ``len(drift) - 1`` (all but layer 0);
    an explicit count outside ``[1, len(drift) - 1]`` is an error, as is giving both or neither."""
    num_layers = len(drift)
    if num_layers < 2:
        raise ValueError(f"need at least 2 layers (layer 0 is never sparse), got {num_layers}")
    if not all(math.isfinite(float(d)) for d in drift):
        raise ValueError("drift values must be finite")
    if (fraction is None) == (count is None):
        raise ValueError("give exactly one of fraction or count")
    if fraction is not None:
        if isinstance(fraction, bool) or not 0.0 < float(fraction) <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        count = min(num_layers - 1, max(1, math.floor(float(fraction) * num_layers + 0.5)))
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= num_layers - 1:
        raise ValueError(f"count must be an int in [1, {num_layers - 1}], got {count!r}")
    ranked = sorted(range(1, num_layers), key=lambda i: (float(drift[i]), i))
    return sorted(ranked[:count])


def load_layer_list(model_path_or_name: str | Path) -> list[int] | None:
    """The shipped sparse layers for a model, from ``layers/<basename of the model dir>.json``, or None."""
    name = Path(str(model_path_or_name).rstrip("/\\")).name
    if not name:
        return None
    path = LAYERS_DIR / f"{name}.json"
    if not path.is_file():
        return None
    layers = json.loads(path.read_text())["sparse_layers"]
    return [int(i) for i in layers]


def austen_prompts(tokenizer: Tokenizer, lengths: Sequence[int], prompts: int, cache: Path | None = None) -> list[torch.Tensor]:
    """``prompts`` windows of exactly ``n`` tokens per length ``n``, at evenly spaced paragraph
    starts through all novels but the last (held out); deterministic, no two prompts share a start."""
    import torch

    from benchmarks.bench import sources

    text = sources.austen_text(cache, books=sources.AUSTEN_BOOKS[:-1])
    total = len(lengths) * prompts
    out = []
    for k in range(total):
        n = lengths[k // prompts]
        start = text.find("\n\n", int(len(text) * k / total))
        start = 0 if start < 0 or k == 0 else start + 2
        window = n * 6
        ids: list[int] = []
        while len(ids) < n:
            if start + window // 2 > len(text):
                raise ValueError(f"text too short for a {n}-token prompt at offset {start}")
            ids = tokenizer.encode(text[start:start + window])
            window *= 2
        out.append(torch.tensor([ids[:n]], dtype=torch.long))
    return out


def _command(argv: Sequence[str]) -> str:
    """The command line as run, with the home directory spelled ``~`` (left unquoted, so it expands)."""
    home = str(Path.home()) + "/"
    words = ["python", "-m", "engine.plugins.sparse_prefill.drift", *argv]
    return " ".join("~/" + shlex.quote(w[len(home):]) if w.startswith(home) else shlex.quote(w) for w in words)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m engine.plugins.sparse_prefill.drift",
                                     description="Per-layer drift profile and sparse-layer list (TSA).")
    parser.add_argument("--model", type=Path, required=True, help="local Hugging Face model directory")
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192], help="prompt lengths in tokens")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per length")
    pick = parser.add_mutually_exclusive_group()
    pick.add_argument("--fraction", type=float, help="fraction of layers made sparse (default 0.5)")
    pick.add_argument("--count", type=int, help="number of layers made sparse")
    parser.add_argument("--out", type=Path, help="JSON to write (default: layers/<model dir name>.json)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache", type=Path, help="bench text cache (default ~/.cache/leanserve/bench)")
    args = parser.parse_args(argv)
    if args.prompts < 1 or any(n < 1 for n in args.lengths):
        parser.error("--prompts and --lengths must be positive")
    fraction = 0.5 if args.fraction is None and args.count is None else args.fraction

    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    model_dir = args.model.expanduser().absolute()
    config = AutoConfig.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model.to(args.device).eval()
    limit = getattr(config.get_text_config(), "max_position_embeddings", None)
    if limit and max(args.lengths) > limit:
        print(f"warning: prompts of {max(args.lengths)} tokens exceed max_position_embeddings={limit}", flush=True)
    batches = austen_prompts(tokenizer, args.lengths, args.prompts, args.cache)

    began = time.monotonic()
    drift, rel = _layer_stats(model, batches, log=lambda line: print(line, flush=True))
    elapsed = time.monotonic() - began
    sparse = pick_sparse_layers(drift, fraction=fraction, count=args.count)
    print(f"{len(batches)} prompts in {elapsed:.1f}s; layer, 1-cos drift, relative L2 update:")
    for i, (d, r) in enumerate(zip(drift, rel)):
        print(f"  {i:3d}  {d:.6f}  {r:.4f}{'  sparse' if i in sparse else ''}")
    result = {
        "model": model_dir.name,
        "architecture": (config.architectures or [type(model).__name__])[0],
        "num_layers": len(drift),
        "lengths": list(args.lengths),
        "prompts": args.prompts,
        "drift": [round(d, 6) for d in drift],
        "sparse_layers": sparse,
        "fraction": fraction if args.count is None else round(args.count / len(drift), 6),
        "command": _command(argv),
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    out = args.out or LAYERS_DIR / f"{model_dir.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"sparse layers {sparse} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
