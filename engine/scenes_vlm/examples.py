"""Scenes -> training and evaluation tensors, in exactly the token layout vLLM serves.

A conversation is rendered as the served chat template renders it (ChatML, no default system line),
tokenised whole as vLLM tokenises it, and the single ``<image>`` id is expanded to the 576
placeholders LLaVA's processor puts there. Only answer tokens and the ``<|im_end|>`` that ends each
answer are supervised, so the model learns to answer and to stop.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import numpy as np
import torch

from engine.scenes_vlm.model import IMAGE_TOKEN, NUM_IMAGE_TOKENS, PATCH_SIZE
from engine.scenes_vlm.questions import Question
from engine.scenes_vlm.scenes import CELL_NAMES, COLOURS, IMAGE_SIZE, SHAPES, WORDS, Scene

SYSTEM_LINES = ("You are a helpful assistant.", "Answer with one or two words.", "Look at the image carefully.")
# Scene-level labels for the [CLS] objective: every (colour, shape) pair present, and the word.
PRESENCE_LABELS = [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES] + [f"word {w}" for w in WORDS]
# Patch-level labels for the dense objective: 0 is "nothing" (background, clutter), then the attribute.
PATCH_LABEL_CLASSES = {"colour": 1 + len(COLOURS), "shape": 1 + len(SHAPES), "word": 1 + len(WORDS),
                       "cell": 1 + len(CELL_NAMES)}
MIN_PATCH_COVER = 40  # of a patch's 196 pixels, for it to count as part of an object


class FixedDraws(random.Random):
    """Draws that always return ``value``: pins a conversation's layout (0.5 is a plain API request: no
    system line, the image before the question)."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


PLAIN_LAYOUT = 0.5  # above the 1/7 system-line draw, below the 3/4 image-first draw


@dataclass
class Example:
    input_ids: list[int]  # image id expanded to NUM_IMAGE_TOKENS placeholders
    target_positions: list[int]  # positions whose next token is supervised
    target_ids: list[int]
    target_answers: list[int]  # which answer of the conversation each supervised token belongs to
    answer_objects: list[tuple[int, ...]]  # per answer, the layout values of the objects it is read from
    read_off: list[bool]  # per supervised token: the first token of an answer seen in its objects (not a count)


def conversation_text(questions: list[Question], rng: random.Random, with_answers: bool = True) -> tuple[str, list[tuple[int, int]]]:
    """The ChatML text of a conversation about one image, and the character spans of its answers.

    The image comes with the first question, before or after it (both are valid OpenAI content
    orders); a system line is present one time in seven. Without answers, the text stops at the
    first assistant turn (the evaluation prompt).
    """
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    if rng.random() < 1 / 7:
        parts.append(f"<|im_start|>system\n{rng.choice(SYSTEM_LINES)}<|im_end|>\n")
    for turn, question in enumerate(questions):
        content = question.text
        if turn == 0:
            content = IMAGE_TOKEN + content if rng.random() < 0.75 else content + IMAGE_TOKEN
        parts.append(f"<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n")
        if not with_answers:
            break
        start = sum(len(part) for part in parts)
        answer = f"{question.answer}<|im_end|>"
        parts.append(answer + "\n")
        spans.append((start, start + len(answer)))
    return "".join(parts), spans


def encode(tokenizer, questions: list[Question], rng: random.Random) -> Example:
    """Tokenise one conversation, expand its image id, and mark the answer tokens."""
    text, spans = conversation_text(questions, rng)
    encoded = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    input_ids: list[int] = []
    positions: list[int] = []
    targets: list[int] = []
    answers: list[int] = []
    read_off: list[bool] = []
    for token, (start, _) in zip(encoded["input_ids"], encoded["offset_mapping"]):
        answer = next((index for index, (low, high) in enumerate(spans) if low <= start < high), None)
        if answer is not None:
            positions.append(len(input_ids) - 1)  # the previous position predicts this token
            read_off.append(answer not in answers and questions[answer].kind != "count")
            targets.append(token)
            answers.append(answer)
        input_ids.extend([token] * (NUM_IMAGE_TOKENS if token == image_id else 1))
    return Example(input_ids, positions, targets, answers, [question.objects for question in questions][: len(spans)],
                   read_off)


def presence_targets(scene: Scene) -> torch.Tensor:
    """[L] 0/1: which (colour, shape) pairs and which word the scene shows."""
    present = {f"{s.colour} {s.shape}" for s in scene.shapes} | ({f"word {scene.word}"} if scene.word else set())
    return torch.tensor([float(label in present) for label in PRESENCE_LABELS])


def patch_owners(scene: Scene, layout: np.ndarray) -> torch.Tensor:
    """[576] per patch (raster order): the layout value of the object covering it, 0 for none."""
    side = IMAGE_SIZE // PATCH_SIZE
    patches = layout.reshape(side, PATCH_SIZE, side, PATCH_SIZE).transpose(0, 2, 1, 3).reshape(side * side, -1)
    objects = len(scene.shapes) + 1  # layout values 1..objects
    cover = np.stack([(patches == value).sum(axis=1) for value in range(1, objects + 1)])  # [objects, 576]
    return torch.from_numpy(np.where(cover.max(axis=0) >= MIN_PATCH_COVER, cover.argmax(axis=0) + 1, 0))


def patch_targets(scene: Scene, owners: torch.Tensor) -> torch.Tensor:
    """[576, 4] per patch: the colour, shape, word and cell class of the object covering it (0: none)."""
    colour_of = [0] + [list(COLOURS).index(s.colour) + 1 for s in scene.shapes] + [0]
    shape_of = [0] + [SHAPES.index(s.shape) + 1 for s in scene.shapes] + [0]
    word_of = [0] * (len(scene.shapes) + 1) + [WORDS.index(scene.word) + 1 if scene.word else 0]
    cell_of = [0] + [s.cell + 1 for s in scene.shapes] + [scene.word_cell + 1 if scene.word else 0]
    table = torch.tensor([colour_of, shape_of, word_of, cell_of]).T  # [objects + 1, 4]
    return table[owners]


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, S] right-padded
    attention_mask: torch.Tensor  # [B, S]
    pixel_values: torch.Tensor  # [B, 3, 336, 336]
    target_rows: torch.Tensor  # [T] batch row of each supervised token
    target_positions: torch.Tensor  # [T]
    target_ids: torch.Tensor  # [T]
    presence: torch.Tensor  # [B, L]
    patch_labels: torch.Tensor  # [B, 576, 4] colour, shape, word, cell class per patch
    answer_of_target: torch.Tensor  # [T] which answer (numbered over the batch) each token belongs to
    target_patches: torch.Tensor  # [T, 576] bool: the patches each supervised token's answer is read from
    target_read_off: torch.Tensor  # [T] bool: the token can be read off its patches alone (Example.read_off)
    kept_patches: torch.Tensor | None = None  # [B, k] sorted: the image tokens the language model sees (None: all)


def collate(examples: list[Example], pixel_values: torch.Tensor, presence: torch.Tensor, owners: torch.Tensor,
            patch_labels: torch.Tensor, pad_id: int) -> Batch:
    """Right-pad ``examples`` into one batch, answers numbered across the batch. ``owners`` [B, 576]."""
    length = max(len(example.input_ids) for example in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    rows, positions, targets, answer_index, patches, read_off = [], [], [], [], [], []
    answers_before = 0
    for row, example in enumerate(examples):
        input_ids[row, : len(example.input_ids)] = torch.tensor(example.input_ids)
        attention_mask[row, : len(example.input_ids)] = 1
        rows += [row] * len(example.target_ids)
        positions += example.target_positions
        targets += example.target_ids
        read_off += example.read_off
        answer_index += [answers_before + answer for answer in example.target_answers]
        answers_before += len(example.answer_objects)
        read_from = [torch.isin(owners[row], torch.tensor(objects, dtype=owners.dtype))
                     for objects in example.answer_objects]  # per answer, [576]
        patches += [read_from[answer] for answer in example.target_answers]
    return Batch(input_ids, attention_mask, pixel_values, torch.tensor(rows), torch.tensor(positions),
                 torch.tensor(targets), presence, patch_labels, torch.tensor(answer_index), torch.stack(patches),
                 torch.tensor(read_off))


def drop_image_tokens(batch: Batch, kept: torch.Tensor, image_token_id: int) -> Batch:
    """The batch as the language model sees it after pruning inside vLLM: each row keeps only the image
    tokens ``kept`` [B, k] (sorted patch indices) and every later token moves up, so the kept ones sit at
    consecutive positions. Trained on part of the time, it stops the model reading "where" from an image
    token's place in the sequence (which pruning renumbers) instead of from its content."""
    rows, dropped = kept.shape[0], NUM_IMAGE_TOKENS - kept.shape[1]
    image_positions = (batch.input_ids == image_token_id).nonzero()[:, 1].view(rows, NUM_IMAGE_TOKENS)  # [B, 576]
    stays = batch.input_ids != image_token_id  # [B, S]
    stays.scatter_(1, image_positions.gather(1, kept), True)
    width = batch.input_ids.shape[1] - dropped
    return replace(
        batch,
        input_ids=batch.input_ids[stays].view(rows, width),  # [B, S - dropped]
        attention_mask=batch.attention_mask[stays].view(rows, width),
        target_positions=batch.target_positions - dropped,  # answers all follow the image
        target_patches=batch.target_patches.gather(1, kept[batch.target_rows]),  # [T, k]
        kept_patches=kept,
    )
