"""Train the learned draft head (``--speculative mtp``) for a target model.

    python -m engine.plugins.speculative.train_head --target DIR --out DIR [--preset gpu|cpu]

Stages, each cached under ``--work`` so a rerun resumes:
1. prompts: chat and code prompts (training_data.py), eval prompts held out;
2. generate: the target's own greedy answers (distillation data);
3. train: the head learns the target's next hidden state and next-token distribution
   from the frozen target's hidden states, computed on the fly, unrolled over
   ``--draft-steps`` draft positions (eagle_head.py);
4. evaluate: replays greedy speculative decoding on held-out target answers and
   reports the mean number of tokens emitted per target step, then writes the head
   and ``metrics.json`` beside it.

The recipe reimplements EAGLE (Li et al., 2024) with a HASS/EAGLE-3 style unrolled
training; see MODEL_CARD.md next to the shipped head for data, steps and results.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.plugins.speculative.eagle_head import EagleHead, HeadShape, save_head
from engine.plugins.speculative.training_data import chat_prompts, code_prompts, stdlib_source_text


@dataclass(frozen=True)
class Preset:
    chat_prompts: int
    code_prompts: int
    max_new_tokens: int
    generate_batch: int
    text_tokens: int
    seq_len: int
    batch_tokens: int
    epochs: int
    lr: float
    continuations: int = 0      # greedy continuations of running-text prefixes
    sampled_copies: bool = False  # also one sampled (T=0.7) answer per prompt
    cls_weight: float = 1.0


PRESETS = {
    # ~10 minutes on one H100.
    "gpu": Preset(chat_prompts=6000, code_prompts=4000, max_new_tokens=256, generate_batch=512,
                  text_tokens=1_000_000, seq_len=512, batch_tokens=8192, epochs=4, lr=5e-4,
                  continuations=6000, sampled_copies=True),
    # Seconds on any machine: checks the recipe end to end (CI, before a long run).
    "smoke": Preset(chat_prompts=6, code_prompts=6, max_new_tokens=16, generate_batch=8,
                    text_tokens=2000, seq_len=128, batch_tokens=1024, epochs=1, lr=1e-3,
                    continuations=4, sampled_copies=True),
    # Sized to finish within ~2 hours on a 2-core AVX2 CPU (see MODEL_CARD.md).
    "cpu": Preset(chat_prompts=300, code_prompts=200, max_new_tokens=128, generate_batch=32,
                  text_tokens=60_000, seq_len=256, batch_tokens=2048, epochs=2, lr=1e-3,
                  continuations=200),
}


def _log(message: str) -> None:
    print(f"[train_head {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _encode_prompts(tokenizer, chats: list[list[dict]], raw: list[str]) -> list[list[int]]:
    encoded = [list(tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=False))
               for c in chats]
    return encoded + [tokenizer.encode(text) for text in raw]


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch: int,
             temperature: float | None = None) -> list[list[int]]:
    """The target's continuation of each prompt (prompt + answer token ids), greedy by default."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = model.generation_config.eos_token_id
    stops = set(eos if isinstance(eos, list) else [eos])
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), batch):
        rows = order[start : start + batch]
        width = max(len(prompts[i]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):  # left padding
            ids[r, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[r, width - len(prompts[i]) :] = 1
        sampling = {"do_sample": True, "temperature": temperature, "top_p": 0.95, "top_k": 0} if temperature else {
            "do_sample": False}
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                             pad_token_id=pad, **sampling)
        for r, i in enumerate(rows):
            answer = out[r, width:].tolist()
            for k, token in enumerate(answer):
                if token in stops:
                    answer = answer[: k + 1]
                    break
            results[i] = prompts[i] + answer
        _log(f"generated {min(start + batch, len(order))}/{len(order)}")
    return results


def text_chunks(tokenizer, text: str, seq_len: int, limit_tokens: int) -> list[list[int]]:
    ids = tokenizer.encode(text)[:limit_tokens]
    return [ids[i : i + seq_len] for i in range(0, len(ids) - seq_len // 4, seq_len)]


def _text_prefixes(text: str, tokenizer, count: int, rng: random.Random) -> list[list[int]]:
    """Random 32-256 token windows of running text, for the target to continue."""
    if count <= 0:
        return []
    ids = tokenizer.encode(text)
    starts = [rng.randrange(0, max(1, len(ids) - 256)) for _ in range(count)]
    return [ids[start : start + rng.randint(32, 256)] for start in starts]


def _batches(sequences: list[list[int]], batch_tokens: int, seq_len: int, rng: random.Random) -> list[list[list[int]]]:
    pieces = [piece for seq in sequences for i in range(0, len(seq), seq_len) if len(piece := seq[i : i + seq_len]) > 8]
    pieces.sort(key=len)
    batches, current = [], []
    for piece in pieces:
        if current and (len(current) + 1) * len(piece) > batch_tokens:
            batches.append(current)
            current = []
        current.append(piece)
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


def _pad(batch: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, batch))
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.bool)
    for r, seq in enumerate(batch):
        ids[r, : len(seq)] = torch.tensor(seq)
        mask[r, : len(seq)] = True
    return ids.to(device), mask.to(device)


@torch.no_grad()
def target_features(model, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's final (normed) hidden states and the embeddings of the next tokens."""
    hidden = model.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    embeds = model.model.embed_tokens(ids)
    next_embeds = torch.zeros_like(embeds)
    next_embeds[:, :-1] = embeds[:, 1:]
    return hidden, next_embeds


def head_loss(head: EagleHead, model, ids, mask, steps: int, cls_weight: float) -> tuple[torch.Tensor, list[float]]:
    """Sum over draft steps of smooth-L1 on hidden states + ``cls_weight`` x soft cross-entropy to the target.

    EAGLE weighs the token loss 0.1; on SmolLM2-135M that left first-draft acceptance at
    ~0.35, so the recipe weighs the token loss as much as the feature loss.
    """
    hidden, next_embeds = target_features(model, ids, mask)
    outputs = head.forward_unrolled(next_embeds, hidden, steps)
    lm_head = model.lm_head.weight
    total = hidden.new_zeros(())
    per_step = []
    for j, out in enumerate(outputs, start=1):
        length = hidden.shape[1] - j
        if length <= 0:
            break
        valid = (mask[:, :length] & mask[:, j:]).float()
        pred, goal = out[:, :length], hidden[:, j:]
        reg = F.smooth_l1_loss(pred, goal, reduction="none").mean(-1)
        with torch.no_grad():
            goal_probs = torch.softmax(goal @ lm_head.T, dim=-1)
        ce = -(goal_probs * torch.log_softmax(pred @ lm_head.T, dim=-1)).sum(-1)
        step_loss = ((reg + cls_weight * ce) * valid).sum() / valid.sum().clamp(min=1)
        total = total + (0.8 ** (j - 1)) * step_loss
        per_step.append(step_loss.item())
    return total, per_step


def init_as_copy(head: EagleHead) -> None:
    """Start as "the next hidden state is this one": fc passes h_t through, the layer adds 0.

    The output projections start at zero (the layer's branches then learn from a stable
    identity), and unrolled steps start bounded instead of compounding random outputs.
    """
    hidden = head.shape.hidden_size
    with torch.no_grad():
        head.fc.weight.zero_()
        head.fc.weight[:, hidden:].copy_(torch.eye(hidden))
        head.o_proj.weight.zero_()
        head.down_proj.weight.zero_()


@torch.no_grad()
def replay_greedy(head: EagleHead, model, sequences: list[tuple[list[int], int]], k: int, device) -> dict:
    """Greedy speculative decoding replayed on the target's own answers.

    For a target answer (teacher-forced), each target step drafts ``k`` tokens from the
    current position; the accepted run is the leading drafts equal to the target's tokens,
    then decoding jumps past them plus the target's own token. Returns mean tokens per
    target step (1 + accepted) and per-position acceptance.
    """
    lm_head = model.lm_head.weight
    steps_taken, tokens_emitted = 0, 0
    accepted_at = [0] * k
    drafted_at = [0] * k
    for seq, prompt_len in sequences:
        ids, mask = _pad([seq], 0, device)
        hidden, next_embeds = target_features(model, ids, mask)
        outputs = head.forward_unrolled(next_embeds, hidden, k)
        drafts = torch.stack([(out[0] @ lm_head.T).argmax(-1) for out in outputs]).tolist()  # [k][T]
        t = prompt_len - 1  # the target has just produced token t+1 from position t
        while t + 1 < len(seq) - 1:
            # drafts from position t: step j proposes token t + 1 + j
            run = 0
            for j in range(k):
                if t + 1 + j + 1 >= len(seq):
                    break
                drafted_at[j] += 1
                if drafts[j][t] != seq[t + 1 + j + 1]:
                    break
                accepted_at[j] += 1
                run += 1
            steps_taken += 1
            tokens_emitted += run + 1
            t += run + 1
    return {
        "draft_steps": k,
        "mean_tokens_per_target_step": tokens_emitted / max(steps_taken, 1),
        "acceptance_by_position": [a / max(d, 1) for a, d in zip(accepted_at, drafted_at, strict=True)],
        "target_steps": steps_taken,
    }


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, type=Path, help="HF directory of the target model")
    parser.add_argument("--out", required=True, type=Path, help="where the head is written")
    parser.add_argument("--work", type=Path, default=Path("/tmp/leanserve-head"), help="stage cache")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="gpu")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--austen", type=Path, help="plain text of running prose (the bench's Austen text)")
    parser.add_argument("--eval-prompts", type=Path, help="JSON {'chat': [[msgs]], 'raw': [str]} held out for eval")
    parser.add_argument("--draft-steps", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-budget-s", type=float, default=None,
                        help="shrink the schedule so training ends within this many seconds")
    parser.add_argument("--stop-after-generate", action="store_true",
                        help="only build and cache the generations (split a run across sessions)")
    return parser.parse_args()


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    args = _parse()
    preset = PRESETS[args.preset]
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = False
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    tokenizer = AutoTokenizer.from_pretrained(args.target)
    model = AutoModelForCausalLM.from_pretrained(args.target, dtype=torch.float32).to(args.device).eval()
    model.requires_grad_(False)
    target_config = json.loads((args.target / "config.json").read_text())

    rng = random.Random(args.seed)
    text = stdlib_source_text(preset.text_tokens * 2)
    if args.austen:
        text = args.austen.read_text()[: preset.text_tokens * 3] + "\n\n" + text
    chunks = text_chunks(tokenizer, text, preset.seq_len, preset.text_tokens)
    generations_path = args.work / f"generations-{args.preset}.json"
    if generations_path.exists():
        generations = json.loads(generations_path.read_text())
    else:
        raw_code, chat_code = code_prompts(rng, preset.code_prompts)
        prompts = _encode_prompts(tokenizer, chat_prompts(rng, preset.chat_prompts) + chat_code, raw_code)
        generations = generate(model, tokenizer, prompts, preset.max_new_tokens, preset.generate_batch)
        if preset.sampled_copies:
            generations += generate(model, tokenizer, prompts, preset.max_new_tokens, preset.generate_batch, 0.7)
        prefixes = _text_prefixes(text, tokenizer, preset.continuations, rng)
        generations += generate(model, tokenizer, prefixes, preset.max_new_tokens // 2, preset.generate_batch)
        generations_path.write_text(json.dumps(generations))
    _log(f"{len(generations)} generations, {sum(map(len, generations))} tokens ({time.time() - started:.0f} s)")
    sequences = generations + chunks
    _log(f"{len(chunks)} running-text chunks; {sum(map(len, sequences))} training tokens")

    eval_sets: dict[str, list[tuple[list[int], int]]] = {}
    eval_path = args.work / f"eval-{args.preset}.json"
    if eval_path.exists():
        eval_sets = {name: [tuple(pair) for pair in pairs] for name, pairs in json.loads(eval_path.read_text()).items()}
    elif args.eval_prompts:
        held_out = json.loads(args.eval_prompts.read_text())
        for name, chats, raw in (("chat", held_out.get("chat", []), []), ("code", [], held_out.get("raw", []))):
            prompts = _encode_prompts(tokenizer, chats, raw)
            answers = generate(model, tokenizer, prompts, preset.max_new_tokens, preset.generate_batch)
            eval_sets[name] = [(seq, len(p)) for seq, p in zip(answers, prompts, strict=True)]
        eval_path.write_text(json.dumps(eval_sets))
    if args.stop_after_generate:
        _log(f"generations cached in {args.work}")
        return

    shape = HeadShape.from_target_config(target_config)
    head = EagleHead(shape).to(args.device)
    init_as_copy(head)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # the head's training tolerates TF32
    optimizer = torch.optim.AdamW(head.parameters(), lr=preset.lr, betas=(0.9, 0.95), weight_decay=0.0)
    batches = _batches(sequences, preset.batch_tokens, preset.seq_len, rng)
    total_steps = preset.epochs * len(batches)
    warmup = min(100, total_steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(warmup, 1)) * 0.5 * (1 + math.cos(math.pi * min(s / total_steps, 1.0))))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    step = 0
    train_started = time.time()
    for epoch in range(preset.epochs):
        for batch in batches:
            if step == 20 and args.time_budget_s:
                per_step = (time.time() - train_started) / step
                total_steps = min(total_steps, int(args.time_budget_s / per_step))
                _log(f"{per_step * 1000:.0f} ms/step: training for {total_steps} steps")
            if step >= total_steps:
                break
            ids, mask = _pad(batch, pad, args.device)
            loss, per_step = head_loss(head, model, ids, mask, args.draft_steps, preset.cls_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), 0.5)
            optimizer.step()
            schedule.step()
            step += 1
            if step % 50 == 0 or step == total_steps:
                _log(f"epoch {epoch} step {step}/{total_steps} loss {loss.item():.4f} "
                     f"per-step {[round(x, 3) for x in per_step]} ({time.time() - started:.0f} s)")
    torch.backends.cuda.matmul.allow_tf32 = False
    head.eval()

    results = {name: replay_greedy(head, model, seqs, args.draft_steps, args.device) for name, seqs in eval_sets.items()}
    for name, result in results.items():
        _log(f"eval {name}: {result}")
    save_head(head, target_config, args.out)
    metrics = {
        "preset": args.preset, "preset_values": asdict(preset), "draft_steps": args.draft_steps,
        "device": str(torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"),
        "generations": len(generations), "generated_tokens": sum(map(len, generations)),
        "text_chunks": len(chunks), "training_tokens": sum(map(len, sequences)),
        "optimizer_steps": total_steps, "wall_seconds": round(time.time() - started, 1),
        "held_out": results,
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _log(f"wrote {args.out} in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
