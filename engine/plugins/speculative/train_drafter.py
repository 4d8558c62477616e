"""Train the one-forward parallel drafter (``--speculative mtp``) for a target model, on a CPU.

    python -m engine.plugins.speculative.train_drafter --target DIR --out DIR [--preset cpu|cpu-large|smoke]

Stages, cached in shards under ``--work`` (default ``~/.cache/leanserve/drafter/<target>``) so a run
stopped anywhere resumes at the first missing shard; ``--data-only`` stops after stage 2, so the data
of a large target can be gathered over several sessions:
1. generate: the target's own greedy answers (vLLM, offline) to chat and code prompts
   (training_data.py) and to held-out HumanEval stubs and bench chat prompts (evaluation);
2. features: the target's three EAGLE-3 residual streams at every position (transformers);
3. train: distillation on the target's tokens - the real slot at t learns x_{t+2}, mask
   slot j behind it learns x_{t+2+j}, all from one drafter forward (parallel_head.py);
4. evaluate: greedy speculative decoding replayed on the held-out answers, per draft
   length K: accepted tokens per position and tokens per target step; writes the drafter,
   ``metrics.json`` and the model card's figures.

Reimplements parallel drafting after Samragh et al. (2025) on vLLM's EAGLE-3 drafter
(Li et al., 2025); no code from either paper's repository.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from engine.plugins.speculative.eagle_head import HeadShape
from engine.plugins.speculative.parallel_head import (
    DrafterShape,
    ParallelDrafter,
    default_aux_layers,
    draft_vocabulary,
    parallel_layout,
    save_drafter,
)
from engine.plugins.speculative.training_data import chat_prompts, code_prompts, stdlib_source_text

IGNORE = -100
GENERATION_SHARD = 128  # prompts per cached generation shard: a full vLLM batch on this CPU
FEATURE_SHARD = 64      # sequences per cached residual-stream shard (~0.1-0.2 GB at a 1.5 B target's width)


@dataclass(frozen=True)
class Preset:
    chat_prompts: int
    code_prompts: int        # half raw stubs (completion), half chat requests
    eval_code: int           # held-out HumanEval stubs
    eval_chat: int           # held-out bench chat prompts
    max_new_tokens: int
    draft_vocab: int
    draft_tokens: int        # K trained: the real slot plus K-1 mask slots
    anchors_per_sequence: int
    batch_sequences: int
    epochs: int
    lr: float
    text_tokens: int = 0     # running text, teacher-forced (the target's greedy labels)


PRESETS = {
    # About an hour on the 2-core AVX2 CPU this project runs on, with --time-budget-s 1500 (model card).
    "cpu": Preset(chat_prompts=700, code_prompts=900, eval_code=80, eval_chat=60, max_new_tokens=256,
                  draft_vocab=4096, draft_tokens=4, anchors_per_sequence=96, batch_sequences=8, epochs=3, lr=2e-3,
                  text_tokens=300_000),
    # A ~1.5 B target (Qwen2.5-Coder-1.5B-Instruct): each answer token costs ~11x the 135M's, so about a third
    # of the data; generation and residual streams take several CPU hours, gathered in shards (--data-only).
    "cpu-large": Preset(chat_prompts=250, code_prompts=350, eval_code=40, eval_chat=30, max_new_tokens=256,
                        draft_vocab=4096, draft_tokens=3, anchors_per_sequence=96, batch_sequences=8, epochs=3,
                        lr=2e-3, text_tokens=60_000),
    # Seconds: checks the recipe end to end.
    "smoke": Preset(chat_prompts=6, code_prompts=6, eval_code=3, eval_chat=3, max_new_tokens=24,
                    draft_vocab=512, draft_tokens=3, anchors_per_sequence=8, batch_sequences=4, epochs=1, lr=2e-3,
                    text_tokens=600),
}


def _log(message: str) -> None:
    print(f"[train_drafter {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Generator:
    """The target's greedy answers, as prompt + answer ids, from vLLM's own engine (fast on a CPU).

    The engine starts at the first shard that is not cached yet and serves every later one
    (a 1.5 B target takes a minute to load); ``close`` frees it before transformers loads the target."""

    def __init__(self, target: Path, max_new_tokens: int) -> None:
        self._target, self._max_new_tokens = target, max_new_tokens
        self._llm = None

    def __call__(self, prompts: list[list[int]]) -> list[list[int]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if self._llm is None:
            from vllm import LLM

            # A fixed KV cache: vLLM's CPU default reserves most of the node and fails beside a running server.
            self._llm = LLM(model=str(self._target), dtype="float32", max_model_len=2048, enforce_eager=True,
                            seed=0, kv_cache_memory_bytes=2 << 30)
        params = SamplingParams(temperature=0.0, max_tokens=self._max_new_tokens)
        outputs = self._llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params)
        return [list(p) + list(o.outputs[0].token_ids) for p, o in zip(prompts, outputs, strict=True)]

    def close(self) -> None:
        self._llm = None
        gc.collect()


def _held_out_prompts(tokenizer, preset: Preset) -> dict[str, list[list[int]]]:
    """HumanEval stubs and the bench's chat prompts: what benchmarks/spec_decode.py measures on."""
    from benchmarks.bench.chat_prompts import CHAT_PROMPTS  # the recipe is a dev tool: reads the bench's sets
    from benchmarks.bench.sources import humaneval_problems

    code = [tokenizer.encode(p["prompt"]) for p in humaneval_problems()[: preset.eval_code]]
    chat = [_chat_ids(tokenizer, [{"role": "user", "content": text}]) for text in CHAT_PROMPTS[: preset.eval_chat]]
    return {"code": code, "chat": chat}


def _chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))


def training_prompts(tokenizer, preset: Preset, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    raw_code, chat_code = code_prompts(rng, preset.code_prompts)
    chats = chat_prompts(rng, preset.chat_prompts) + chat_code
    return [_chat_ids(tokenizer, c) for c in chats] + [tokenizer.encode(text) for text in raw_code]


@torch.no_grad()
def aux_states(model, sequence: list[int], layers: tuple[int, ...]) -> torch.Tensor:
    """[T, len(layers) * H] float16: the residual stream entering each layer in ``layers``,
    which is what vLLM's EAGLE-3 capture hands the drafter (hidden + residual after layer i-1)."""
    out = model.model(input_ids=torch.tensor([sequence]), output_hidden_states=True)
    return torch.cat([out.hidden_states[i][0] for i in layers], dim=-1).to(torch.float16)


def select_taps(aux: torch.Tensor, gathered: tuple[int, ...], chosen: tuple[int, ...]) -> torch.Tensor:
    """[T, len(gathered) * H] -> [T, len(chosen) * H]: the residual streams of the ``chosen`` layers, in
    that order, out of the ones gathered (the cache holds vLLM's three default taps; a drafter with fewer
    taps has a smaller ``fc``, the largest matrix of a wide target's drafter after its head)."""
    missing = [layer for layer in chosen if layer not in gathered]
    if missing:
        raise ValueError(f"taps {missing} were not gathered (the cache holds {list(gathered)})")
    if chosen == gathered:
        return aux
    length = aux.shape[0]
    per_layer = aux.view(length, len(gathered), -1)                                # [T, G, H]
    return per_layer[:, [gathered.index(layer) for layer in chosen]].reshape(length, -1).clone()


def mask_token(tokenizer, counts: torch.Tensor) -> int:
    """An added (special) token the data never contains: its embedding marks a mask slot."""
    reserved = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    for token_id in sorted(tokenizer.added_tokens_decoder):
        if token_id not in reserved and token_id < counts.numel() and counts[token_id] == 0:
            return token_id
    return int(counts.argmin())


@dataclass
class Example:
    ids: torch.Tensor        # [T] prompt + answer (or running text)
    aux: torch.Tensor        # [T, taps * H] float16
    answer_start: int        # first position whose token the drafter must learn
    greedy: torch.Tensor | None = None  # [T] the target's greedy token after position t (running text);
                                        # None for the target's own answers, where it is ids[t + 1]

    def emitted(self) -> torch.Tensor:
        """[T] the token the target emits after each position (the drafter's labels)."""
        return self.greedy if self.greedy is not None else torch.cat((self.ids[1:], self.ids[-1:]))


def targets_for(example: Example, to_draft: torch.Tensor, offsets: range) -> torch.Tensor:
    """[len(offsets), T] draft-vocab label of x_{t+2+j} (what the target emits after position
    t+1+j) for the slot at t; IGNORE past the end, inside the prompt, or outside the draft vocabulary."""
    length = example.ids.numel()
    emitted = example.emitted()
    labels = torch.full((len(offsets), length), IGNORE, dtype=torch.long)
    for row, j in enumerate(offsets):
        src = torch.arange(length) + 1 + j
        valid = (src < length - 1) & (src + 1 >= example.answer_start)
        labels[row, valid] = to_draft[emitted[src[valid]]]
    return labels


def drafter_loss(drafter: ParallelDrafter, embed: torch.nn.Embedding, batch: list[Example], to_draft: torch.Tensor,
                 k: int, anchors: int, rng: random.Random) -> tuple[torch.Tensor, list[float]]:
    """Cross-entropy of every real slot (x_{t+2}) and of the mask slots behind sampled anchors."""
    width = max(e.ids.numel() for e in batch)
    first = max(0, min(e.answer_start for e in batch) - 2)  # anchors whose drafts land in an answer
    chosen = sorted(rng.sample(range(first, width), min(anchors, width - first)))
    anchor_ids = torch.tensor(chosen)
    positions, attend = parallel_layout(width, k, anchor_ids)
    slot_embeds, slot_hidden, slot_labels = [], [], []
    mask_state = drafter.mask_state()                                             # [H]
    mask_embed = embed.weight[drafter.shape.mask_token_id]                        # [H]
    for e in batch:
        pad = width - e.ids.numel()
        ids = F.pad(e.ids, (0, pad))
        nxt = torch.cat((ids[1:], ids[:1]))                                        # x_{t+1} at slot t
        real_hidden = drafter.fc(F.pad(e.aux.float(), (0, 0, 0, pad)))            # [L, H]
        n_mask = len(chosen) * (k - 1)
        slot_embeds.append(torch.cat((embed(nxt), mask_embed.expand(n_mask, -1))))
        slot_hidden.append(torch.cat((real_hidden, mask_state.expand(n_mask, -1))))
        labels = F.pad(targets_for(e, to_draft, range(k)), (0, pad), value=IGNORE)  # [k, L]
        slot_labels.append(torch.cat((labels[0], labels[1:, anchor_ids].T.reshape(-1))))
    out = drafter(torch.stack(slot_embeds), torch.stack(slot_hidden), positions, attend)
    logits = drafter.logits(out)                                                   # [B, N, V']
    labels = torch.stack(slot_labels)                                              # [B, N]
    loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
    with torch.no_grad():
        hits = (logits.argmax(-1) == labels) & (labels != IGNORE)
        real = width
        per_j = [hits[:, :real].sum() / (labels[:, :real] != IGNORE).sum().clamp(min=1)]
        masked = hits[:, real:].view(len(batch), len(chosen), k - 1)
        valid = (labels[:, real:] != IGNORE).view(len(batch), len(chosen), k - 1)
        per_j += [masked[..., j].sum() / valid[..., j].sum().clamp(min=1) for j in range(k - 1)]
    return loss, [float(x) for x in per_j]


@torch.no_grad()
def draft_all(drafter: ParallelDrafter, embed: torch.nn.Embedding, example: Example, k: int) -> torch.Tensor:
    """[T, k] target ids: the k drafts vLLM's single drafter forward makes at every anchor t."""
    length = example.ids.numel()
    positions, attend = parallel_layout(length, k)
    nxt = torch.cat((example.ids[1:], example.ids[:1]))
    n_mask = length * (k - 1)
    embeds = torch.cat((embed(nxt), embed.weight[drafter.shape.mask_token_id].expand(n_mask, -1)))
    hidden = torch.cat((drafter.fc(example.aux.float()), drafter.mask_state().expand(n_mask, -1)))
    best = drafter.logits(drafter(embeds[None], hidden[None], positions, attend))[0].argmax(-1)  # [N]
    ids = drafter.draft_to_target[best]
    return torch.cat((ids[:length, None], ids[length:].view(length, k - 1)), dim=1)


def replay_greedy(drafts: list[torch.Tensor], examples: list[Example], k: int) -> dict:
    """Greedy speculative decoding replayed on the target's held-out answers with K = ``k``.

    After the target emits x_{t+1} the drafter proposes x_{t+2..t+k+1}; the leading drafts equal
    to the target's tokens are accepted, and decoding jumps past them plus the target's own token.
    """
    steps = emitted = 0
    accepted_at, drafted_at = [0] * k, [0] * k
    for draft, example in zip(drafts, examples, strict=True):
        seq = example.ids.tolist()
        t = example.answer_start - 1
        while t + 2 < len(seq):
            run = 0
            for j in range(k):
                if t + 2 + j >= len(seq):
                    break
                drafted_at[j] += 1
                if int(draft[t, j]) != seq[t + 2 + j]:
                    break
                accepted_at[j] += 1
                run += 1
            steps += 1
            emitted += run + 1
            t += run + 1
    return {"draft_tokens": k, "mean_tokens_per_target_step": emitted / max(steps, 1),
            "acceptance_by_position": [a / max(d, 1) for a, d in zip(accepted_at, drafted_at, strict=True)],
            "target_steps": steps}


def text_chunks(text_ids: list[int], length: int) -> list[list[int]]:
    """Running text cut into ``length``-token pieces (a last piece shorter than half is dropped)."""
    return [text_ids[start: start + length] for start in range(0, len(text_ids) - length // 2, length)]


@torch.no_grad()
def text_examples(model, chunks: list[list[int]], layers: tuple[int, ...]) -> list[Example]:
    """Running text (standard-library source, Austen) teacher-forced, labelled with the target's own
    greedy next token at every position: distillation on text the target did not write."""
    examples = []
    for chunk in chunks:
        ids = torch.tensor(chunk)
        out = model(input_ids=ids[None], output_hidden_states=True)
        aux = torch.cat([out.hidden_states[i][0] for i in layers], dim=-1).to(torch.float16)
        examples.append(Example(ids, aux, 1, out.logits[0].argmax(-1)))
    return examples


def _running_text(tokenizer, tokens: int) -> list[int]:
    from benchmarks.bench.sources import austen_text

    code = tokenizer.encode(stdlib_source_text(tokens * 3))[: tokens * 2 // 3]
    prose = tokenizer.encode(austen_text()[: tokens * 2])[: tokens // 3]
    return code + prose


def serve_draft_tokens(by_k: dict[str, dict]) -> int:
    """The shortest K within 0.02 tokens/step of the best, but not 1 where 2 was replayed.

    A longer draft costs verification work (K + 1 positions per target forward) for drafts that
    are almost never accepted; yet on this CPU a 2-row forward is slower than a 3-row one (oneDNN's
    2-row kernel: benchmarks/RESULTS.md, the verification cost curve; the 1.5B's step at one
    request: 319 ms with K = 1 against 254 ms with K = 2, spec_step_profile), so K = 1 never pays."""
    best = max(r["mean_tokens_per_target_step"] for r in by_k.values())
    shortest = min(int(k) for k, r in by_k.items() if r["mean_tokens_per_target_step"] >= best - 0.02)
    return 2 if shortest == 1 and "2" in by_k else shortest


def _examples(model, answers: list[tuple[list[int], int]], layers: tuple[int, ...]) -> list[Example]:
    """(prompt + answer ids, prompt length) pairs with the target's residual streams."""
    return [Example(torch.tensor(seq), aux_states(model, seq, layers), start)
            for seq, start in answers if len(seq) > start + 2]


def _cached(path: Path, build: Callable[[], Any]) -> Any:
    """``build()``, saved at ``path`` (written to a side file, then renamed: a run killed mid-save
    leaves no half shard behind); read back from there when it exists."""
    if path.exists():
        return torch.load(path, weights_only=False)
    value = build()
    partial = path.with_name(path.name + ".partial")
    torch.save(value, partial)
    partial.replace(path)
    return value


def sharded(work: Path, stem: str, items: list, shard_size: int, build: Callable[[list], list]) -> list:
    """``build`` over ``items`` in shards of ``shard_size``, each cached as ``stem-NNN.pt`` once done:
    a run stopped anywhere (a session's end) loses at most the shard in progress."""
    done = []
    for index, start in enumerate(range(0, len(items), shard_size)):
        shard = items[start: start + shard_size]
        done += _cached(work / f"{stem}-{index:03d}.pt", lambda shard=shard: build(shard))
    return done


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, type=Path, help="HF directory of the target model")
    parser.add_argument("--out", required=True, type=Path, help="where the drafter is written")
    parser.add_argument("--work", type=Path, default=None,
                        help="stage cache (default ~/.cache/leanserve/drafter/<target directory name>)")
    parser.add_argument("--data-only", action="store_true",
                        help="gather the generations and residual streams (resumable shards), then stop")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", type=int, default=1,
                        help="drafter layers: a second one lets mask slots ask about what the first read")
    parser.add_argument("--intermediate-size", type=int, default=None,
                        help="the drafter's MLP width (default: the target's); narrower keeps 2 layers under 20 MB")
    parser.add_argument("--num-heads", type=int, default=None,
                        help="the drafter's attention heads (default: the target's); a multiple of its KV heads")
    parser.add_argument("--num-kv-heads", type=int, default=None,
                        help="the drafter's KV heads (default: the target's); must divide --num-heads")
    parser.add_argument("--aux-layers", type=lambda text: tuple(int(x) for x in text.split(",")), default=None,
                        help="the target layers whose residual streams the drafter reads, e.g. 25 (default: "
                             "vLLM's EAGLE-3 three); a subset of the gathered three needs no new data")
    parser.add_argument("--draft-vocab", type=int, default=None,
                        help="rows of the draft head (default: the preset's); the head is H x this")
    parser.add_argument("--epochs", type=int, default=None, help="passes over the data (default: the preset's)")
    parser.add_argument("--draft-tokens", type=int, default=None, help="K trained and replayed (default: the preset's)")
    parser.add_argument("--time-budget-s", type=float, default=None,
                        help="shrink the schedule so training ends within this many seconds")
    return parser.parse_args()


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    args = _parse()
    preset = PRESETS[args.preset]
    if args.draft_tokens:
        preset = replace(preset, draft_tokens=args.draft_tokens)
    if args.draft_vocab:
        preset = replace(preset, draft_vocab=args.draft_vocab)
    if args.epochs:
        preset = replace(preset, epochs=args.epochs)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    work = args.work or Path.home() / ".cache" / "leanserve" / "drafter" / args.target.name
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    tokenizer = AutoTokenizer.from_pretrained(args.target)
    target_config = json.loads((args.target / "config.json").read_text())
    layers = default_aux_layers(target_config["num_hidden_layers"])

    prompts = {"train": training_prompts(tokenizer, preset, args.seed), **_held_out_prompts(tokenizer, preset)}
    generator = Generator(args.target, preset.max_new_tokens)
    generations = {name: list(zip(sharded(work, f"generations-{args.preset}-{name}", group, GENERATION_SHARD,
                                          generator), map(len, group), strict=True))
                   for name, group in prompts.items()}
    generator.close()
    _log(f"generations: { {k: sum(len(s) - n for s, n in v) for k, v in generations.items()} } answer tokens "
         f"({time.time() - started:.0f} s)")
    model = AutoModelForCausalLM.from_pretrained(args.target, dtype=torch.float32).eval()
    model.requires_grad_(False)
    examples = {name: sharded(work, f"features-{args.preset}-{name}", group, FEATURE_SHARD,
                              lambda answers: _examples(model, answers, layers))
                for name, group in generations.items()}
    if preset.text_tokens:
        chunks = text_chunks(_running_text(tokenizer, preset.text_tokens), 384)
        examples["train"] = examples["train"] + sharded(work, f"text-{args.preset}", chunks, FEATURE_SHARD,
                                                        lambda part: text_examples(model, part, layers))
    _log(f"features ready ({time.time() - started:.0f} s)")
    if args.data_only:
        return
    taps = args.aux_layers or layers
    for group in examples.values():
        for example in group:
            example.aux = select_taps(example.aux, layers, taps)

    counts = torch.zeros(target_config["vocab_size"], dtype=torch.long)
    for e in examples["train"]:
        emitted = e.emitted()[e.answer_start - 1:]
        counts.index_add_(0, emitted, torch.ones(emitted.numel(), dtype=torch.long))
    vocab = draft_vocabulary(counts, preset.draft_vocab)
    coverage = float(counts[vocab].sum() / counts.sum())
    to_draft = torch.full((target_config["vocab_size"],), IGNORE, dtype=torch.long)
    to_draft[vocab] = torch.arange(vocab.numel())
    head_shape = HeadShape.from_target_config(target_config)
    if args.intermediate_size:
        head_shape = replace(head_shape, intermediate_size=args.intermediate_size)
    if args.num_heads:
        head_shape = replace(head_shape, num_heads=args.num_heads)
    if args.num_kv_heads:
        head_shape = replace(head_shape, num_kv_heads=args.num_kv_heads)
    shape = DrafterShape(head_shape, taps, preset.draft_vocab,
                         mask_token(tokenizer, counts), args.layers)
    drafter = ParallelDrafter(shape)
    drafter.draft_to_target.copy_(vocab)
    embed = model.model.embed_tokens
    with torch.no_grad():  # start from the target's own output layer and final norm
        drafter.lm_head.weight.copy_(model.lm_head.weight[vocab])
        drafter.norm.weight.copy_(model.model.norm.weight)
    _log(f"draft vocabulary {preset.draft_vocab} covers {coverage:.3f} of answer tokens; mask token {shape.mask_token_id}")

    optimizer = torch.optim.AdamW(drafter.parameters(), lr=preset.lr, betas=(0.9, 0.95), weight_decay=0.0)
    train = sorted(examples["train"], key=lambda e: e.ids.numel())
    batches = [train[i: i + preset.batch_sequences] for i in range(0, len(train), preset.batch_sequences)]
    total = preset.epochs * len(batches)
    warmup = max(1, min(50, total // 10))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup)
                                                 * 0.5 * (1 + math.cos(math.pi * min(s / total, 1.0))))
    step, train_started = 0, time.time()
    for epoch in range(preset.epochs):
        rng.shuffle(batches)
        for batch in batches:
            if step == 10 and args.time_budget_s:
                total = min(total, int(args.time_budget_s / ((time.time() - train_started) / step)))
                _log(f"{(time.time() - train_started) / step:.2f} s/step: training for {total} steps")
            if step >= total:
                break
            loss, hits = drafter_loss(drafter, embed, batch, to_draft, preset.draft_tokens,
                                      preset.anchors_per_sequence, rng)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(drafter.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            step += 1
            if step % 25 == 0 or step == total:
                _log(f"epoch {epoch} step {step}/{total} loss {loss.item():.3f} "
                     f"top-1 by position {[round(h, 3) for h in hits]} ({time.time() - started:.0f} s)")
    drafter.eval()

    held_out = {}
    for name in ("code", "chat"):
        drafts = [draft_all(drafter, embed, e, preset.draft_tokens) for e in examples[name]]
        held_out[name] = {str(k): replay_greedy([d[:, :k] for d in drafts], examples[name], k)
                          for k in range(1, preset.draft_tokens + 1)}
        _log(f"held-out {name}: " + ", ".join(f"K={k} {r['mean_tokens_per_target_step']:.3f}"
                                              for k, r in held_out[name].items()))
    save_drafter(drafter, target_config, args.out)
    metrics = {
        "serve_draft_tokens": serve_draft_tokens(held_out["code"]),
        "recipe": "python -m engine.plugins.speculative.train_drafter", "preset": args.preset,
        "preset_values": asdict(preset), "drafter_layers": args.layers,
        "intermediate_size": head_shape.intermediate_size, "num_heads": head_shape.num_heads,
        "num_kv_heads": head_shape.num_kv_heads, "aux_layers": list(taps), "mask_token_id": shape.mask_token_id,
        "draft_vocab_coverage": round(coverage, 4), "device": "cpu", "torch_threads": torch.get_num_threads(),
        "answer_tokens": {k: sum(e.ids.numel() - e.answer_start for e in v) for k, v in examples.items()},
        "optimizer_steps": total, "wall_seconds": round(time.time() - started, 1), "held_out": held_out,
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _log(f"wrote {args.out} in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
