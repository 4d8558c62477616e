"""The held-out questions: scenes from a seed range training never draws, one question each, and how
to ask one through the OpenAI API (a base64 PNG and the question, as any client would send them).

Question ``i`` is about scene ``TEST_SEED_BASE + i`` and of kind ``KINDS[i % 5]`` (or the next kind
the scene allows), so the set is balanced across kinds and the first N questions are the same for
the benchmark, the CI test and training's own evaluation.
"""

from __future__ import annotations

import base64
import io
import random
from collections import Counter
from dataclasses import dataclass

from PIL import Image

from engine.scenes_vlm.questions import KINDS, Question, normalise_answer, question_of_kind
from engine.scenes_vlm.scenes import make_scene, render

TEST_SEED_BASE = 1_000_000_000


@dataclass(frozen=True)
class HeldOutQuestion:
    seed: int
    kind: str
    text: str
    answer: str

    def image(self) -> Image.Image:
        return render(make_scene(self.seed))

    def image_url(self) -> str:
        """The scene as a base64 PNG data URL."""
        buffer = io.BytesIO()
        self.image().save(buffer, "PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()

    def messages(self) -> list[dict]:
        """OpenAI chat messages: the image, then the question."""
        return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": self.image_url()}},
                                             {"type": "text", "text": self.text}]}]

    def is_right(self, reply: str) -> bool:
        return normalise_answer(reply) == self.answer


def held_out_question(seed: int) -> Question:
    """The question asked about scene ``seed`` (a seed at or past ``TEST_SEED_BASE``)."""
    scene = make_scene(seed)
    rng = random.Random(seed)
    start = seed % len(KINDS)
    for offset in range(len(KINDS)):
        question = question_of_kind(scene, KINDS[(start + offset) % len(KINDS)], rng)
        if question is not None:
            return question
    raise AssertionError("count questions apply to every scene")


def held_out_questions(count: int) -> list[HeldOutQuestion]:
    """The first ``count`` held-out questions."""
    out = []
    for index in range(count):
        seed = TEST_SEED_BASE + index
        question = held_out_question(seed)
        out.append(HeldOutQuestion(seed, question.kind, question.text, question.answer))
    return out


def chance_by_kind(questions: list[HeldOutQuestion]) -> dict[str, float]:
    """Per kind, the accuracy of always giving that kind's most common answer (the best blind guess)."""
    answers: dict[str, Counter] = {}
    for question in questions:
        answers.setdefault(question.kind, Counter())[question.answer] += 1
    return {kind: counts.most_common(1)[0][1] / sum(counts.values()) for kind, counts in answers.items()}


def accuracy_by_kind(questions: list[HeldOutQuestion], right: list[bool]) -> dict[str, float]:
    """Share right, overall (``"all"``) and per kind."""
    out = {"all": sum(right) / len(right)}
    for kind in KINDS:
        marks = [mark for question, mark in zip(questions, right) if question.kind == kind]
        if marks:
            out[kind] = sum(marks) / len(marks)
    return out
