"""Synthetic scenes whose questions have checkable answers that live in specific image regions.

A scene is a 3 x 3 grid of cells on a 336 px canvas (the ViT's input, 24 x 24 patches of 14 px, so
each cell is 8 x 8 = 64 of the 576 image tokens). Up to seven cells hold a coloured shape, drawn at a
random size and offset inside its cell; one may hold a short word. Easy scenes are 1-3 shapes on
white; cluttered scenes are 4-7 shapes on a tinted background crossed by grey strokes and dots, so
a pruning method that keeps "busy" tokens keeps clutter too.

Everything is drawn from one ``random.Random``: a seed is a scene, on any machine with the same
Pillow (the font is Pillow's built-in one, so no system font is needed).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

IMAGE_SIZE = 336
GRID = 3
CELL = IMAGE_SIZE // GRID  # 112 px

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 225),
    "yellow": (235, 200, 30), "purple": (140, 60, 180), "orange": (245, 130, 30),
}
SHAPES = ("circle", "square", "triangle", "cross")
WORDS = ("cat", "dog", "sun", "car", "box", "key", "map", "pen", "cup", "hat", "egg", "bus")
# Row-major cell names, as a person would say where something is.
CELL_NAMES = ("top left", "top middle", "top right", "middle left", "center", "middle right",
              "bottom left", "bottom middle", "bottom right")


@dataclass(frozen=True)
class Shape:
    colour: str
    shape: str
    cell: int  # 0..8, row-major

    @property
    def column(self) -> int:
        return self.cell % GRID


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]
    word: str | None
    word_cell: int | None
    cluttered: bool
    seed: int


def make_scene(seed: int) -> Scene:
    """The scene of ``seed``: which shapes, colours, cells and word (rendering draws its own jitter)."""
    rng = random.Random(seed)
    cluttered = rng.random() < 0.5
    count = rng.randint(4, 7) if cluttered else rng.randint(1, 3)
    has_word = rng.random() < 0.5
    cells = rng.sample(range(GRID * GRID), count + int(has_word))
    shapes = tuple(Shape(rng.choice(list(COLOURS)), rng.choice(SHAPES), cell) for cell in cells[:count])
    word = rng.choice(WORDS) if has_word else None
    return Scene(shapes, word, cells[-1] if has_word else None, cluttered, seed)


def render(scene: Scene) -> Image.Image:
    """The scene as a 336 x 336 RGB image (deterministic in ``scene.seed``)."""
    return render_with_layout(scene)[0]


def render_with_layout(scene: Scene) -> tuple[Image.Image, np.ndarray]:
    """The image and its layout [336, 336] uint8: 1 + the index of the shape covering each pixel,
    ``len(scene.shapes) + 1`` inside the word's box, 0 elsewhere (background and clutter)."""
    rng = random.Random(scene.seed * 7919 + 1)
    background = (255, 255, 255) if not scene.cluttered else tuple(rng.randint(215, 250) for _ in range(3))
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), background)
    layout = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    draw, layout_draw = ImageDraw.Draw(image), ImageDraw.Draw(layout)
    if scene.cluttered:
        _draw_clutter(draw, rng)
    for index, shape in enumerate(scene.shapes):
        _draw_shape(draw, layout_draw, index + 1, shape, rng)
    if scene.word is not None:
        _draw_word(draw, layout_draw, len(scene.shapes) + 1, scene.word, scene.word_cell, rng)
    return image, np.asarray(layout)


def _draw_clutter(draw: ImageDraw.ImageDraw, rng: random.Random) -> None:
    for _ in range(rng.randint(8, 16)):
        grey = rng.randint(120, 200)
        points = [(rng.randint(0, IMAGE_SIZE), rng.randint(0, IMAGE_SIZE)) for _ in range(2)]
        draw.line(points, fill=(grey, grey, grey), width=rng.randint(1, 3))
    for _ in range(rng.randint(10, 30)):
        grey = rng.randint(100, 200)
        x, y, r = rng.randint(0, IMAGE_SIZE), rng.randint(0, IMAGE_SIZE), rng.randint(2, 5)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(grey, grey, grey))


def _cell_box(cell: int, size: int, rng: random.Random) -> tuple[int, int, int, int]:
    """A ``size`` px square at a random offset inside ``cell``, 6 px from its edges."""
    row, column = divmod(cell, GRID)
    left = column * CELL + rng.randint(6, CELL - 6 - size)
    top = row * CELL + rng.randint(6, CELL - 6 - size)
    return left, top, left + size, top + size


def _draw_shape(draw: ImageDraw.ImageDraw, layout: ImageDraw.ImageDraw, label: int, shape: Shape,
                rng: random.Random) -> None:
    size = rng.randint(44, 84)
    left, top, right, bottom = _cell_box(shape.cell, size, rng)
    for canvas, fill in ((draw, COLOURS[shape.colour]), (layout, label)):
        if shape.shape == "circle":
            canvas.ellipse((left, top, right, bottom), fill=fill)
        elif shape.shape == "square":
            inset = size // 10
            canvas.rectangle((left + inset, top + inset, right - inset, bottom - inset), fill=fill)
        elif shape.shape == "triangle":
            canvas.polygon([((left + right) // 2, top), (left, bottom), (right, bottom)], fill=fill)
        else:  # cross: two bars a third of the size wide
            bar = size // 3
            middle_x, middle_y = (left + right) // 2, (top + bottom) // 2
            canvas.rectangle((middle_x - bar // 2, top, middle_x + bar // 2, bottom), fill=fill)
            canvas.rectangle((left, middle_y - bar // 2, right, middle_y + bar // 2), fill=fill)


def _draw_word(draw: ImageDraw.ImageDraw, layout: ImageDraw.ImageDraw, label: int, word: str, cell: int,
               rng: random.Random) -> None:
    font = ImageFont.load_default(size=rng.randint(30, 38))
    text = word.upper()
    width = draw.textlength(text, font=font)
    row, column = divmod(cell, GRID)
    x = column * CELL + rng.randint(2, max(2, int(CELL - width - 2)))
    y = row * CELL + rng.randint(10, CELL - 50)
    draw.text((x, y), text, fill=(20, 20, 20), font=font)
    layout.rectangle(draw.textbbox((x, y), text, font=font), fill=label)
