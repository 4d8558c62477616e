"""Request sets for the bench: reproducible from ``--seed``, identical for every target.

Every builder returns plain ``BenchRequest`` values, so a set can be built once and sent
to several servers, or written out (``save_jsonl``) for vLLM's own ``bench serve``
(``--dataset-name custom``) to replay exactly the same prompts.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from benchmarks.bench import sources
from benchmarks.bench.chat_prompts import CHAT_PROMPTS

DATASETS = ("random", "austen", "humaneval", "long", "images", "videos", "chat")
DEFAULT_LONG_LENGTHS = (4096, 8192, 16384, 32768)


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer the builders use (tests pass a small fake)."""

    vocab_size: int
    all_special_ids: list[int]

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclass(frozen=True)
class BenchRequest:
    """One request of a set: a text prompt (completions) or user turn (chat), plus optional images or videos."""

    prompt: str
    max_tokens: int
    prompt_len: int | None = None  # by the bench's tokenizer; the server's usage count is what is reported
    images: tuple[str, ...] = ()   # data URLs: only sent on /v1/chat/completions
    videos: tuple[str, ...] = ()   # data URLs (MP4), likewise
    source: str = ""


def _lengths(rng: np.random.Generator, mean: int, range_ratio: float, n: int) -> list[int]:
    """Uniform integer lengths in [mean*(1-r), mean*(1+r)], as vLLM's random dataset draws them."""
    low, high = max(1, int(mean * (1 - range_ratio))), max(1, int(mean * (1 + range_ratio)))
    return [int(v) for v in rng.integers(low, high + 1, size=n)]


def _exact_length_text(tokenizer: Tokenizer, ids: list[int], n: int, rng: np.random.Generator,
                       allowed: np.ndarray) -> tuple[str, int]:
    """Text that re-encodes to ``n`` tokens where possible (decode→encode is not an identity)."""
    text = tokenizer.decode(ids)
    for _ in range(10):
        encoded = tokenizer.encode(text, add_special_tokens=False)
        if len(encoded) == n:
            break
        if len(encoded) > n:
            text = tokenizer.decode(encoded[:n])
        else:
            extra = allowed[rng.integers(0, len(allowed), size=n - len(encoded))].tolist()
            text = tokenizer.decode(encoded + extra)
    return text, len(tokenizer.encode(text, add_special_tokens=False))


def random_requests(tokenizer: Tokenizer, num: int, input_len: int, output_len: int, seed: int,
                    range_ratio: float = 0.0) -> list[BenchRequest]:
    """Prompts of random non-special tokens: length-controlled load with no cache-friendly structure."""
    rng = np.random.default_rng(seed)
    special = set(tokenizer.all_special_ids)
    allowed = np.array([t for t in range(tokenizer.vocab_size) if t not in special])
    inputs = _lengths(rng, input_len, range_ratio, num)
    outputs = _lengths(rng, output_len, range_ratio, num)
    requests = []
    for n, out in zip(inputs, outputs):
        ids = allowed[rng.integers(0, len(allowed), size=n)].tolist()
        text, actual = _exact_length_text(tokenizer, ids, n, rng, allowed)
        requests.append(BenchRequest(text, out, actual, source="random"))
    return requests


def slice_text(tokenizer: Tokenizer, text: str, lengths: Sequence[int], output_len: int, seed: int,
               source: str) -> list[BenchRequest]:
    """Windows of exactly ``length`` tokens from ``text`` at seeded offsets, starting on a word."""
    rng = np.random.default_rng(seed)
    requests = []
    for n in lengths:
        window = n * 8 + 64
        if window >= len(text):
            raise ValueError(f"text of {len(text)} characters is too short for {n}-token prompts")
        start = int(rng.integers(0, len(text) - window))
        while start > 0 and not text[start - 1].isspace():
            start += 1
        ids: list[int] = []
        while len(ids) < n and window < len(text) - start:
            ids = tokenizer.encode(text[start:start + window], add_special_tokens=False)
            window *= 2
        prompt = tokenizer.decode(ids[:n])
        requests.append(BenchRequest(prompt, output_len, len(tokenizer.encode(prompt, add_special_tokens=False)),
                                     source=source))
    return requests


def austen_requests(tokenizer: Tokenizer, num: int, input_len: int, output_len: int, seed: int,
                    range_ratio: float = 0.0, cache: Path | None = None) -> list[BenchRequest]:
    """Running English prose (Jane Austen's six novels), sliced to the requested lengths."""
    lengths = _lengths(np.random.default_rng(seed + 1), input_len, range_ratio, num)
    return slice_text(tokenizer, sources.austen_text(cache), lengths, output_len, seed, "austen")


def long_requests(tokenizer: Tokenizer, num: int, lengths: Sequence[int], output_len: int, seed: int,
                  cache: Path | None = None) -> list[BenchRequest]:
    """Long-context prompts (4K-32K tokens) from the Austen text; lengths cycle over the list."""
    cycle = [lengths[i % len(lengths)] for i in range(num)]
    return slice_text(tokenizer, sources.austen_text(cache), cycle, output_len, seed, "long")


def humaneval_requests(num: int, output_len: int, seed: int, cache: Path | None = None) -> list[BenchRequest]:
    """HumanEval function stubs (code completion), in a seeded order; wraps round past 164."""
    problems = sources.humaneval_problems(cache)
    order = np.random.default_rng(seed).permutation(len(problems))
    return [BenchRequest(problems[int(order[i % len(order)])]["prompt"], output_len,
                         source=problems[int(order[i % len(order)])]["task_id"]) for i in range(num)]


def chat_requests(num: int, output_len: int, seed: int) -> list[BenchRequest]:
    """Held-out single-turn chat requests (chat_prompts.py), in a seeded order; sent to chat."""
    order = np.random.default_rng(seed).permutation(len(CHAT_PROMPTS))
    return [BenchRequest(CHAT_PROMPTS[int(order[i % len(order)])], output_len, source=f"chat-{int(order[i % len(order)])}")
            for i in range(num)]


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"224x224,448x336"`` → [(224, 224), (448, 336)]."""
    sizes = []
    for part in text.split(","):
        width, _, height = part.strip().lower().partition("x")
        sizes.append((int(width), int(height or width)))
    return sizes


def make_image(width: int, height: int, rng: np.random.Generator) -> str:
    """A generated PNG (coloured shapes on a gradient) as a ``data:`` URL."""
    from PIL import Image, ImageDraw

    gradient = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None]
    base = np.broadcast_to(gradient, (height, width, 3)).copy()
    base[..., 2] = 255 - base[..., 2]
    image = Image.fromarray(base, "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(8, max(9, width // 2))), y0 + int(rng.integers(8, max(9, height // 2)))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def image_requests(num: int, sizes: Sequence[tuple[int, int]], output_len: int, seed: int) -> list[BenchRequest]:
    """Chat turns with one generated image each, resolutions cycling over ``sizes``."""
    rng = np.random.default_rng(seed)
    requests = []
    for i in range(num):
        width, height = sizes[i % len(sizes)]
        requests.append(BenchRequest("Describe the shapes and colours in this image.", output_len,
                                     images=(make_image(width, height, rng),), source=f"image-{width}x{height}"))
    return requests


def make_video(width: int, height: int, frames: int, fps: float, rng: np.random.Generator) -> str:
    """A generated MP4 as a ``data:`` URL: a still scene (gradient, shapes) with one shape drifting across it,
    the kind of clip EVS is for (most patches static from one frame to the next)."""
    import os
    import tempfile

    import cv2
    from PIL import Image

    scene = np.asarray(Image.open(io.BytesIO(base64.b64decode(make_image(width, height, rng).split(",", 1)[1]))))
    size = max(8, min(width, height) // 6)
    colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
    y = int(rng.integers(0, max(1, height - size)))
    handle, path = tempfile.mkstemp(suffix=".mp4")
    os.close(handle)
    try:
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        for index in range(frames):
            frame = scene[..., ::-1].copy()  # RGB -> OpenCV's BGR
            x = int((width - size) * index / max(1, frames - 1))
            frame[y:y + size, x:x + size] = colour
            writer.write(frame)
        writer.release()
        with open(path, "rb") as file:
            return "data:video/mp4;base64," + base64.b64encode(file.read()).decode()
    finally:
        os.unlink(path)


def video_requests(num: int, sizes: Sequence[tuple[int, int]], frames: int, output_len: int,
                   seed: int) -> list[BenchRequest]:
    """Chat turns with one generated video each (``frames`` frames at 8 fps), sizes cycling over ``sizes``."""
    rng = np.random.default_rng(seed)
    requests = []
    for i in range(num):
        width, height = sizes[i % len(sizes)]
        requests.append(BenchRequest("Describe what moves in this video.", output_len,
                                     videos=(make_video(width, height, frames, 8.0, rng),),
                                     source=f"video-{width}x{height}x{frames}"))
    return requests


def save_jsonl(requests: Sequence[BenchRequest], path: Path) -> None:
    """vLLM's ``custom`` dataset format, to replay the identical set with ``vllm bench serve``."""
    if any(r.images or r.videos for r in requests):
        raise ValueError("image and video requests cannot be exported to vLLM's custom (text) format")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as out:
        out.writelines(json.dumps({"prompt": request.prompt, "output_tokens": request.max_tokens}) + "\n" for request in requests)
