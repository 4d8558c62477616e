"""Questions about a scene, each with the one answer a correct reader gives.

Five kinds, each needing a different part of the image: ``colour`` and ``shape`` (one object,
named by a unique attribute or by its cell), ``count`` (every object of a colour or shape, so every
region matters), ``position`` (where an object is) and ``text`` (read the word). Answers are short
lowercase strings; ``normalise_answer`` is how a model's reply is compared with them.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from engine.scenes_vlm.scenes import CELL_NAMES, COLOURS, SHAPES, Scene, Shape

KINDS = ("colour", "shape", "count", "position", "text")


@dataclass(frozen=True)
class Question:
    kind: str
    text: str
    answer: str
    # Layout values (``scenes.render_with_layout``) of the objects the answer is read from: shape i is
    # i + 1, the word is len(shapes) + 1. Training points the answer's attention at their patches.
    objects: tuple[int, ...] = ()


def normalise_answer(reply: str) -> str:
    """A reply as compared with an answer: lowercase, surrounding blanks and final full stop gone."""
    return reply.strip().lower().rstrip(".").strip()


def question_of_kind(scene: Scene, kind: str, rng: random.Random) -> Question | None:
    """One question of ``kind`` about ``scene``, or None where the scene has nothing to ask it about."""
    return _ASKERS[kind](scene, rng)


def all_questions(scene: Scene, rng: random.Random) -> list[Question]:
    """One question of every kind the scene allows, in random order (training asks them all)."""
    questions = [q for kind in KINDS if (q := question_of_kind(scene, kind, rng)) is not None]
    rng.shuffle(questions)
    return questions


def _layout_values(scene: Scene, *shapes: Shape) -> tuple[int, ...]:
    return tuple(scene.shapes.index(shape) + 1 for shape in shapes)


def _unique(shapes: tuple[Shape, ...], key) -> list[Shape]:
    counts = Counter(key(shape) for shape in shapes)
    return [shape for shape in shapes if counts[key(shape)] == 1]


def _ask_colour(scene: Scene, rng: random.Random) -> Question | None:
    if not scene.shapes:
        return None
    target = rng.choice(scene.shapes)
    if target in _unique(scene.shapes, lambda s: s.shape) and rng.random() < 0.5:
        text = f"What colour is the {target.shape}?"
    else:
        text = f"What colour is the {target.shape} in the {CELL_NAMES[target.cell]}?"
    return Question("colour", text, target.colour, _layout_values(scene, target))


def _ask_shape(scene: Scene, rng: random.Random) -> Question | None:
    if not scene.shapes:
        return None
    target = rng.choice(scene.shapes)
    if target in _unique(scene.shapes, lambda s: s.colour) and rng.random() < 0.5:
        text = f"What shape is the {target.colour} object?"
    else:
        text = f"What shape is in the {CELL_NAMES[target.cell]}?"
    return Question("shape", text, target.shape, _layout_values(scene, target))


def _ask_count(scene: Scene, rng: random.Random) -> Question:
    if rng.random() < 0.5:
        present = [shape.colour for shape in scene.shapes]
        colour = rng.choice(present) if present and rng.random() < 0.75 else rng.choice(list(COLOURS))
        counted = [shape for shape in scene.shapes if shape.colour == colour]
        return Question("count", f"How many {colour} shapes are there?", str(len(counted)),
                        _layout_values(scene, *counted))
    present = [shape.shape for shape in scene.shapes]
    kind = rng.choice(present) if present and rng.random() < 0.75 else rng.choice(SHAPES)
    counted = [shape for shape in scene.shapes if shape.shape == kind]
    return Question("count", f"How many {kind}s are there?", str(len(counted)), _layout_values(scene, *counted))


def _ask_position(scene: Scene, rng: random.Random) -> Question | None:
    candidates = _unique(scene.shapes, lambda s: (s.colour, s.shape))
    if not candidates:
        return None
    target = rng.choice(candidates)
    return Question("position", f"Where is the {target.colour} {target.shape}?", CELL_NAMES[target.cell],
                    _layout_values(scene, target))


def _ask_text(scene: Scene, rng: random.Random) -> Question | None:
    if scene.word is None:
        return None
    return Question("text", rng.choice(("What word is written in the image?", "What does the text say?")), scene.word,
                    (len(scene.shapes) + 1,))


_ASKERS = {"colour": _ask_colour, "shape": _ask_shape, "count": _ask_count, "position": _ask_position,
           "text": _ask_text}
