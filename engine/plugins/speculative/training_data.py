"""Training prompts and running text for the learned draft head, from what any machine has.

No dataset hub is reachable, so the head learns from three local sources:

* the target's own answers (distillation) to chat prompts built from topic x task
  templates and to code prompts cut from the Python standard library's own functions
  (signature + docstring, the shape of a HumanEval stub);
* running English prose (the Austen novels the bench already reads) and standard-library
  source, teacher-forced, for general coverage.

HumanEval and the bench's chat prompts are held out: they are what the benchmark and
the model card's acceptance figures are measured on.
"""

from __future__ import annotations

import ast
import random
import sysconfig
import textwrap
from collections.abc import Iterator
from pathlib import Path

_TOPICS = (
    "photosynthesis", "the water cycle", "compound interest", "black holes", "vaccines",
    "the French Revolution", "machine learning", "climate change", "plate tectonics",
    "the immune system", "supply and demand", "the Roman Empire", "quantum computing",
    "sleep", "coffee", "volcanoes", "the internet", "electric cars", "honey bees",
    "the stock market", "recycling", "the human heart", "solar panels", "chess",
    "the printing press", "inflation", "DNA", "rainbows", "earthquakes", "the moon",
    "public speaking", "time management", "learning a language", "gardening",
    "meditation", "budgeting", "job interviews", "healthy breakfasts", "running",
    "team work", "remote work", "password security", "cloud computing", "databases",
    "sorting algorithms", "recursion", "version control", "unit testing", "HTTP",
    "encryption", "operating systems", "compilers", "binary numbers", "prime numbers",
    "probability", "statistics", "geometry", "fractions", "the Pythagorean theorem",
    "the Great Wall of China", "the Amazon rainforest", "deserts", "oceans", "glaciers",
    "penguins", "elephants", "dolphins", "wolves", "octopuses", "dinosaurs",
    "Shakespeare", "poetry", "jazz", "the Renaissance", "photography", "film making",
    "cooking pasta", "baking bread", "making tea", "camping", "cycling", "swimming",
    "the Olympic Games", "democracy", "human rights", "the United Nations",
    "World War I", "ancient Egypt", "the Silk Road", "the Industrial Revolution",
    "renewable energy", "nuclear power", "batteries", "magnets", "gravity", "light",
    "sound", "electricity", "friction", "atoms", "chemical reactions", "acids and bases",
    "the periodic table", "evolution", "cells", "bacteria", "viruses", "nutrition",
    "exercise", "stress", "friendship", "kindness", "leadership", "negotiation",
    "writing an essay", "reading habits", "libraries", "museums", "architecture",
    "bridges", "trains", "airplanes", "rockets", "satellites", "GPS", "smartphones",
)

_TASKS = (
    "Explain {t} to a ten-year-old.",
    "What is {t}? Answer in three sentences.",
    "Give me five interesting facts about {t}.",
    "Write a short poem about {t}.",
    "List the pros and cons of {t}.",
    "Summarize the history of {t} in one paragraph.",
    "How would you teach {t} to a beginner? Give a step-by-step plan.",
    "Write a short story that involves {t}.",
    "What are common misconceptions about {t}?",
    "Compare {t} with something from everyday life.",
    "Write a haiku about {t}.",
    "Give three tips related to {t}.",
    "Describe {t} in simple words.",
    "Why is {t} important?",
    "Write a tweet about {t}.",
    "Create a quiz with three questions about {t}, with answers.",
    "Write an email to a friend about {t}.",
    "What questions would a student ask about {t}? List them.",
)

_CODE_TASKS = (
    "Write a Python function `{name}` that does the following: {doc}",
    "Implement `{name}` in Python. {doc}",
    "Can you write Python code for this? {doc}",
)


def chat_prompts(rng: random.Random, count: int) -> list[list[dict]]:
    """Single-turn chat conversations (topic x task), shuffled deterministically."""
    pairs = [(task, topic) for task in _TASKS for topic in _TOPICS]
    rng.shuffle(pairs)
    return [[{"role": "user", "content": task.format(t=topic)}] for task, topic in pairs[:count]]


def _stdlib_files() -> Iterator[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        parts = set(path.relative_to(root).parts)
        if parts & {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo"}:
            continue
        yield path


def _function_stubs(path: Path) -> Iterator[tuple[str, str, str]]:
    """(name, first docstring line, 'def ...: \"\"\"doc\"\"\"' stub) for documented functions."""
    try:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    lines = source.splitlines()
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
            continue
        doc = ast.get_docstring(node)
        if not doc or len(doc) < 40 or not node.body or not isinstance(node.body[0], ast.Expr):
            continue
        stub = textwrap.dedent("\n".join(lines[node.lineno - 1 : node.body[0].end_lineno]))
        if "self" in stub.split("\n", 1)[0] or len(stub) > 1500:
            continue
        yield node.name, doc.strip().split("\n\n", 1)[0].replace("\n", " "), stub + "\n"


def code_prompts(rng: random.Random, count: int) -> tuple[list[str], list[list[dict]]]:
    """Raw completion stubs and chat requests, both cut from standard-library functions."""
    stubs = [stub for path in _stdlib_files() for stub in _function_stubs(path)]
    rng.shuffle(stubs)
    half = count // 2
    raw = [stub for _, _, stub in stubs[:half]]
    chat = [
        [{"role": "user", "content": rng.choice(_CODE_TASKS).format(name=name, doc=doc)}]
        for name, doc, _ in stubs[half:count]
    ]
    return raw, chat


def stdlib_source_text(limit_chars: int) -> str:
    """Concatenated standard-library source, as running code text."""
    pieces, total = [], 0
    for path in _stdlib_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        pieces.append(text)
        total += len(text)
        if total >= limit_chars:
            break
    return "\n\n".join(pieces)[:limit_chars]
