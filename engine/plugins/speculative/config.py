"""``--speculative METHOD`` -> vLLM's ``speculative_config``.

Methods (all lossless: vLLM's rejection sampler verifies every draft against the target):

* ``ngram``        prompt lookup (vLLM's n-gram proposer): no model, free drafts when the
                   answer copies from the prompt (code edits, RAG, summaries).
* ``suffix``       leanserve's suffix decoding (suffix.py): like ngram, plus a cache of earlier
                   answers and an adaptive draft length; shines on repeated/agentic traffic.
                   ``suffix:KEY=VALUE,...`` sets its knobs (``SuffixParams``: max_depth,
                   max_spec_factor, min_token_prob, max_cached_requests; vLLM's suffix knobs).
* ``draft:MODEL``  a small model with the same tokenizer drafts (catalogue name or directory).
* ``mtp[:DIR]``    a learned drafter fed with the target's hidden states; without DIR, the one
                   shipped for the served model in ``heads/<model name>/``. A parallel drafter
                   (parallel_head.py) proposes all K drafts in ONE forward (vLLM's EAGLE-3
                   ``parallel_drafting``); an older EAGLE-1 head (eagle_head.py) drafts serially.

Per request, ``extra_body={"speculative": {"enabled": false}}`` opts out (opt_out.py).

``--speculative-max-batch N`` (default 2 for ``mtp`` and ``draft``, and for every method on a target of a billion
parameters or more; otherwise no limit: ``default_max_batch``):
steps that run more than N requests draft nothing (vLLM's
``num_speculative_tokens_per_batch_size`` schedule, looked up by the scheduler each step; the suffix
proposer, a ``custom_class`` vLLM does not pass it to, reads the same schedule itself). By default the
scheduler already sizes each request's drafts by its recent acceptance and the batch size
(draft_length.py, ``--speculative-min-acceptance``), down to no drafter in a step where no request
wants drafts (benchmarks/RESULTS.md, "under load").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

from engine.plugins.speculative.suffix_index import SuffixParams

HEADS_DIR = Path(__file__).parent / "heads"
SUFFIX_PROPOSER = "engine.plugins.speculative.suffix.SuffixProposer"
OPT_OUT_SCHEDULER = "engine.plugins.speculative.opt_out.OptOutScheduler"  # per-request drafts (opt_out.py)

# Draft lengths that did best on this project's CPU benchmarks (benchmarks/RESULTS.md).
DEFAULT_NUM_TOKENS = {"ngram": 4, "suffix": 8, "draft": 4, "mtp": 2}
# The largest step that still drafts, where --speculative-max-batch is not given (None: no limit). The
# learned drafter costs a forward in every step that drafts (~3-4 ms of a ~38 ms step at 8 requests) and
# its drafts are accepted ~30% of the time, so above 2 requests it does not pay on this CPU (RESULTS.md). A draft
# model runs K forwards of its own per step: the 0.5B drafting for the 1.5B is accepted ~80% of the time and gives
# 1.92x alone, yet 0.78x at 8 requests, where the batched 1.5B step is no longer bound by reading its weights.
DEFAULT_MAX_BATCH: dict[str, int | None] = {"ngram": None, "suffix": None, "draft": 2, "mtp": 2}
# From this many target parameters every method drafts only in steps of at most LARGE_TARGET_MAX_BATCH requests.
# A verification row costs a forward of the target for one token; a 135M model's rows stay cheap at 8-16 requests
# (suffix decoding 1.26-1.34x there), but Qwen2.5-Coder-1.5B's batched step is compute-bound on 2 AVX2 cores, and
# suffix decoding drafting in every step ran it at 0.80-0.84x at 8 requests (RESULTS.md, session 37).
LARGE_TARGET_PARAMS = 1_000_000_000
LARGE_TARGET_MAX_BATCH = 2
# --speculative-min-acceptance where not given (draft_length.py). ngram verifies every draft: after the
# numba fix it gains at every load measured, and shorter drafts only gave some of that back (RESULTS.md,
# spec_decode_ab); a drafter's rows are worth trimming. suffix decoding sizes its drafts itself.
DEFAULT_MIN_ACCEPTANCE = {"ngram": 0.0, "suffix": 0.0, "draft": 0.05, "mtp": 0.05}
METHODS = ("ngram", "suffix", "draft", "mtp")


# The knobs ``suffix:KEY=VALUE,...`` may set: those vLLM's config can carry to the proposer (SuffixParams).
SUFFIX_OPTIONS = ("max_depth", "max_spec_factor", "min_token_prob", "max_cached_requests")


@dataclass(frozen=True)
class SpeculationSpec:
    """A parsed ``--speculative`` value: the method, for draft/mtp its model, for suffix its knobs."""

    method: str
    model: str | None = None
    options: tuple[tuple[str, int | float], ...] = ()  # suffix: (knob, value), in the order given

    def __str__(self) -> str:
        """The flag's own form, so that a parsed value round-trips (``draft:MODEL``, ``suffix:max_spec_factor=1.0``)."""
        if self.options:
            return f"{self.method}:" + ",".join(f"{key}={value}" for key, value in self.options)
        return f"{self.method}:{self.model}" if self.model else self.method


def parse_speculative(text: str) -> SpeculationSpec:
    """``ngram`` | ``suffix[:KEY=VALUE,...]`` | ``draft:MODEL`` | ``mtp`` | ``mtp:DIR``; raises ValueError."""
    method, _, model = text.strip().partition(":")
    method = method.lower()
    if method not in METHODS:
        raise ValueError(f"unknown speculative method {method!r}: expected one of ngram, suffix, draft:MODEL, mtp[:DIR]")
    if method == "draft" and not model:
        raise ValueError("draft needs a model: --speculative draft:MODEL")
    if method == "ngram" and model:
        raise ValueError(f"{method} takes no model (got {model!r})")
    if method == "suffix":
        return SpeculationSpec(method, options=_suffix_options(model)) if model else SpeculationSpec(method)
    return SpeculationSpec(method, model or None)


def _suffix_options(text: str) -> tuple[tuple[str, int | float], ...]:
    """``max_spec_factor=2,min_token_prob=0.2`` -> ((knob, typed value), ...); ValueError naming a bad knob or value."""
    types = {f.name: f.type for f in fields(SuffixParams)}
    options = []
    for item in text.split(","):
        key, equals, value = (part.strip() for part in item.partition("="))
        if key not in SUFFIX_OPTIONS or not equals:
            raise ValueError(f"suffix takes KEY=VALUE knobs, KEY one of {', '.join(SUFFIX_OPTIONS)} (got {item.strip()!r})")
        try:
            options.append((key, int(value) if types[key] == "int" else float(value)))
        except ValueError:
            raise ValueError(f"suffix knob {key} needs a {types[key]}, got {value!r}") from None
    suffix_params(SpeculationSpec("suffix", options=tuple(options)))  # SuffixParams checks the values
    return tuple(options)


def suffix_params(spec: SpeculationSpec) -> SuffixParams:
    """The suffix proposer's knobs: SuffixParams' defaults with the flag's overrides; ValueError if out of range."""
    values = dict(spec.options)
    try:
        return SuffixParams(**values)
    except ValueError as error:
        raise ValueError(f"suffix: {error}") from None


def shipped_head(served_model: str) -> Path | None:
    """The learned head that ships for ``served_model`` (matched case-insensitively)."""
    if not HEADS_DIR.is_dir():
        return None
    for candidate in HEADS_DIR.iterdir():
        if candidate.name.lower() == served_model.lower() and (candidate / "config.json").exists():
            return candidate
    return None


def draft_schedule(k: int, max_batch: int) -> list[tuple[int, int, int]]:
    """vLLM's ``num_speculative_tokens_per_batch_size``: K drafts per request while a step runs at most
    ``max_batch`` requests, none above (vLLM carries the last entry's K to every larger batch)."""
    if max_batch <= 0:
        return [(1, 1, 0)]
    return [(1, max_batch, k), (max_batch + 1, max_batch + 1, 0)]


def target_parameters(model_dir: str | Path) -> int | None:
    """The target's parameter count estimated from its ``config.json`` (a decoder's embedding, attention and
    gated MLP; the text model's for a VLM); None when there is no readable config."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
        text = config.get("text_config") or config
        hidden, layers, vocab = text["hidden_size"], text["num_hidden_layers"], text["vocab_size"]
        heads = text["num_attention_heads"]
        head_dim = text.get("head_dim") or hidden // heads
        kv_heads = text.get("num_key_value_heads") or heads
        intermediate = text["intermediate_size"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim  # q, o; k, v
    mlp = 3 * hidden * intermediate  # gate, up, down
    embeddings = vocab * hidden * (1 if text.get("tie_word_embeddings", config.get("tie_word_embeddings")) else 2)
    return layers * (attention + mlp) + embeddings


def default_max_batch(method: str, target_params: int | None) -> int | None:
    """The largest step that drafts where ``--speculative-max-batch`` is not given (None: no limit)."""
    if DEFAULT_MAX_BATCH[method] is not None:
        return DEFAULT_MAX_BATCH[method]
    return LARGE_TARGET_MAX_BATCH if target_params is not None and target_params >= LARGE_TARGET_PARAMS else None


def vllm_speculative_config(spec: SpeculationSpec, num_tokens: int | None, served_model: str,
                            draft_path: str | None = None, max_batch: int | None = None,
                            target_params: int | None = None) -> dict:
    """The dict vLLM's ``AsyncEngineArgs(speculative_config=...)`` takes.

    ``draft_path`` is the resolved draft model directory (the caller resolves catalogue
    names, which may download); ``max_batch`` the largest step that still drafts (None: the
    default for the method and the target's size, ``default_max_batch``). Raises ValueError when ``mtp`` has
    no head for the model.
    """
    head = _head_dir(spec, served_model) if spec.method == "mtp" else None
    k = draft_tokens(spec, num_tokens, served_model)
    config = _method_config(spec, k, head, draft_path)
    if max_batch is None:
        max_batch = default_max_batch(spec.method, target_params)
    if max_batch is not None:
        config["num_speculative_tokens_per_batch_size"] = draft_schedule(k, max_batch)
    return config


def draft_tokens(spec: SpeculationSpec, num_tokens: int | None, served_model: str) -> int:
    """K, the most draft tokens a request verifies per step: ``--num-speculative-tokens``, else what the
    learned drafter's recipe measured best (mtp), else the method's default."""
    if num_tokens:
        return num_tokens
    if spec.method == "mtp":
        return head_draft_tokens(_head_dir(spec, served_model))
    return DEFAULT_NUM_TOKENS[spec.method]


def _method_config(spec: SpeculationSpec, k: int, head: Path | None, draft_path: str | None) -> dict:
    if spec.method == "ngram":
        return {"method": "ngram", "num_speculative_tokens": k, "prompt_lookup_max": 4, "prompt_lookup_min": 2}
    if spec.method == "suffix":  # the proposer reads its knobs back from vLLM's own suffix fields (suffix.py)
        return {"method": "custom_class", "model": SUFFIX_PROPOSER, "num_speculative_tokens": k,
                **suffix_params(spec).as_speculative_config()}
    if spec.method == "draft":
        return {"method": "draft_model", "model": draft_path or spec.model, "num_speculative_tokens": k}
    if is_parallel_drafter(head):
        return {"method": "eagle3", "model": str(head), "num_speculative_tokens": k, "parallel_drafting": True}
    return {"method": "eagle", "model": str(head), "num_speculative_tokens": k}


def _head_dir(spec: SpeculationSpec, served_model: str) -> Path:
    """The learned drafter ``mtp`` uses; ValueError when none ships for the model."""
    head = Path(spec.model).expanduser() if spec.model else shipped_head(served_model)
    if head is None:
        raise ValueError(
            f"no learned drafter ships for {served_model!r}; train one with "
            "`python -m engine.plugins.speculative.train_drafter` and pass --speculative mtp:DIR")
    if not (head / "config.json").exists():
        raise ValueError(f"{head} is not a drafter directory (no config.json)")
    return head


def is_parallel_drafter(head: Path) -> bool:
    """True for a drafter parallel_head.save_drafter wrote (vLLM: ``eagle3`` + ``parallel_drafting``)."""
    config = json.loads((head / "config.json").read_text())
    return "Eagle3LlamaForCausalLM" in config.get("architectures", []) and "mask_token_id" in config


def head_draft_tokens(head: Path) -> int:
    """The draft length a drafter's recipe measured best (``metrics.json``), else the method default."""
    metrics = head / "metrics.json"
    if metrics.exists():
        best = json.loads(metrics.read_text()).get("serve_draft_tokens")
        if isinstance(best, int) and best > 0:
            return best
    return DEFAULT_NUM_TOKENS["mtp"]
