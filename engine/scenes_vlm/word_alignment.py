"""Training only: make each object patch's image token read as the words that name what it shows.

The scene reader's language model starts from nothing. Its grounded heads (``train.py``) answer by
copying what they attend to through the final norm and the tied output head, so if an object
patch's language-model input already reads, through that same head, as "red" among the colours,
"circle" among the shapes and "top" / " left" among the cell names, a question's " circle" only has
to find the patches that read "circle", and the copy is the answer. Runs 1-8 left the model to find
the lookup and the code together, and it found neither in 900 steps (benchmarks/RESULTS.md).

It is LLaVA's stage-1 "feature alignment" (Liu et al. 2023, "Visual Instruction Tuning": the
projector alone learns to put image features into the word-embedding space), with the words made
explicit per patch from the renderer's labels. Each kind is a softmax over its own words only, so
one vector can rank "red" first among colours and "circle" first among shapes at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional

from engine.scenes_vlm.scenes import CELL_NAMES, COLOURS, SHAPES, WORDS

IGNORE = -1


@dataclass(frozen=True)
class AnswerWords:
    """Per kind, the token ids of its words ([classes]), and each cell's row and column class."""

    colour: torch.Tensor  # [6]
    shape: torch.Tensor  # [4]
    word: torch.Tensor  # [12]
    row: torch.Tensor  # [4] first tokens of the cell names: top, middle, center, bottom
    column: torch.Tensor  # [3] second tokens: " left", " middle", " right"
    row_of_cell: torch.Tensor  # [9] class in ``row``
    column_of_cell: torch.Tensor  # [9] class in ``column``, IGNORE for "center"

    def to(self, device: str) -> AnswerWords:
        return AnswerWords(**{name: value.to(device) for name, value in vars(self).items()})


def answer_words(tokenizer) -> AnswerWords:
    """The tokens an answer starts with, as the model writes them right after ``assistant\\n``."""
    def tokens(name: str) -> list[int]:  # in context: alone, "triangle" splits as "tri" + "angle"
        prefix = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
        return tokenizer(f"<|im_start|>assistant\n{name}<|im_end|>", add_special_tokens=False)["input_ids"][len(prefix):-1]

    def first(name: str) -> int:
        return tokens(name)[0]

    cell_tokens = [tokens(name) for name in CELL_NAMES]
    rows = list(dict.fromkeys(tokens[0] for tokens in cell_tokens))
    columns = list(dict.fromkeys(tokens[1] for tokens in cell_tokens if len(tokens) > 1))
    return AnswerWords(
        colour=torch.tensor([first(name) for name in COLOURS]),
        shape=torch.tensor([first(name) for name in SHAPES]),
        word=torch.tensor([first(name) for name in WORDS]),
        row=torch.tensor(rows),
        column=torch.tensor(columns),
        row_of_cell=torch.tensor([rows.index(tokens[0]) for tokens in cell_tokens]),
        column_of_cell=torch.tensor([columns.index(tokens[1]) if len(tokens) > 1 else IGNORE for tokens in cell_tokens]),
    )


def alignment_loss(read_out: torch.Tensor, labels: torch.Tensor, words: AnswerWords,
                   embeddings: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean over kinds of the cross-entropy of each patch's words among its kind's words.

    read_out [N, Dt]: object patches' image tokens after the language model's final norm;
    labels [N, 4]: their colour, shape, word and cell classes (0: not shown); embeddings [V, Dt]:
    the tied table. Returns the loss and each kind's accuracy (for the training log).
    """
    colour, shape, word, cell = labels.unbind(-1)  # [N] each
    cell_index = (cell - 1).clamp_min(0)
    shown = cell > 0
    targets = {
        "colour": (words.colour, colour - 1),
        "shape": (words.shape, shape - 1),
        "word": (words.word, word - 1),
        "row": (words.row, torch.where(shown, words.row_of_cell[cell_index], IGNORE)),
        "column": (words.column, torch.where(shown, words.column_of_cell[cell_index], IGNORE)),
    }
    losses, accuracy = [], {}
    for kind, (token_ids, target) in targets.items():
        target = target.clamp_min(IGNORE)  # class 0 ("not shown") becomes IGNORE
        if not (target != IGNORE).any():
            continue
        logits = read_out @ embeddings[token_ids].T  # [N, classes]
        losses.append(functional.cross_entropy(logits, target, ignore_index=IGNORE))
        kept = target != IGNORE
        accuracy[f"aligned_{kind}"] = (logits[kept].argmax(-1) == target[kept]).float().mean().item()
    return torch.stack(losses).mean(), accuracy
