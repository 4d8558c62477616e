"""Why position questions fail under pruning: the scene reader answered with the kept image tokens either
renumbered consecutively (what vLLM does) or at their original position ids (the patch's own place).

    python -m benchmarks.scenes_pruned_positions [--questions 300] [--keep 0.5] [--method random|stride]

Offline, with transformers' ``LlavaForConditionalGeneration`` on the built ``llava-scenes`` directory (the
served model is the same, ``tests/unit/test_scenes_vlm.py``): image features are projected, a subset is kept,
and greedy decoding runs with the two position-id layouts. If "where" is read from the token's place in the
sequence, the original layout recovers position accuracy; if from the token's content, both score alike.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from engine.catalogue import resolve_model
from engine.scenes_vlm.held_out import HeldOutQuestion, accuracy_by_kind, held_out_questions
from kernels.visual_token_selection import reference
from service.settings import Settings

TOKENS_PER_IMAGE = 576


def kept_indices(method: str, keep: float, seed: int) -> torch.Tensor:
    """[k] sorted patch indices: random-k (seeded per question) or uniform stride (the server's own rule)."""
    count = max(1, round(keep * TOKENS_PER_IMAGE))
    if method == "stride":
        return torch.tensor(reference.stride_reference(TOKENS_PER_IMAGE, count))
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(TOKENS_PER_IMAGE, generator=generator)[:count].sort().values


@torch.no_grad()
def encode(model, processor, question: HeldOutQuestion) -> tuple[torch.Tensor, int, torch.Tensor]:
    """The prompt's ids [L], where its image tokens start, and the projected image features [576, D]."""
    text = processor.apply_chat_template(question.messages(), add_generation_prompt=True)
    inputs = processor(text=text, images=question.image(), return_tensors="pt")
    ids = inputs["input_ids"][0]  # [L]
    start = int((ids == model.config.image_token_id).nonzero().flatten()[0])
    features = model.model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output[0]  # [576, D]
    return ids, start, features


@torch.no_grad()
def answer(model, tokenizer, encoded: tuple[torch.Tensor, int, torch.Tensor], kept: torch.Tensor | None,
           original_positions: bool, max_tokens: int = 6) -> str:
    """Greedy reply with the image's tokens cut to ``kept`` (None: all), positions as chosen."""
    ids, start, features = encoded
    embed = model.get_input_embeddings()
    keep = torch.arange(TOKENS_PER_IMAGE) if kept is None else kept
    before, after = ids[:start], ids[start + TOKENS_PER_IMAGE:]
    embeds = torch.cat([embed(before), features[keep], embed(after)])  # [L', D]
    if original_positions:
        positions = torch.cat([torch.arange(start), start + keep,
                               torch.arange(len(after)) + start + TOKENS_PER_IMAGE])  # [L']
    else:
        positions = torch.arange(len(embeds))
    generated, cache = [], None
    step_embeds, step_positions = embeds[None], positions[None]  # [1, L', D], [1, L']
    for _ in range(max_tokens):
        output = model.model.language_model(inputs_embeds=step_embeds, position_ids=step_positions,
                                            past_key_values=cache, use_cache=True)
        cache = output.past_key_values
        token = int(model.lm_head(output.last_hidden_state[0, -1]).argmax())
        if token == model.config.text_config.eos_token_id:
            break
        generated.append(token)
        step_embeds = embed(torch.tensor([[token]]))  # [1, 1, D]
        step_positions = step_positions[:, -1:] + 1  # [1, 1]
    return tokenizer.decode(generated, skip_special_tokens=True)


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--method", choices=("random", "stride"), default="random")
    args = parser.parse_args(argv)
    directory = resolve_model("llava-scenes", Settings().cache_dir).path
    model = LlavaForConditionalGeneration.from_pretrained(directory, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(directory)
    questions = held_out_questions(args.questions)
    layouts = {"unpruned": (False, False), "pruned, renumbered (vLLM)": (True, False),
               "pruned, original position ids": (True, True)}
    encoded = [encode(model, processor, question) for question in questions]
    results = {}
    for name, (pruned, original) in layouts.items():
        right = [question.is_right(answer(model, processor.tokenizer, prompt,
                                          kept_indices(args.method, args.keep, question.seed) if pruned else None,
                                          original)) for question, prompt in zip(questions, encoded)]
        results[name] = {kind: round(value, 3) for kind, value in accuracy_by_kind(questions, right).items()}
        print(f"{name:>32}: {json.dumps(results[name])}", flush=True)
    print(json.dumps({"questions": len(questions), "keep": args.keep, "method": args.method, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
