"""Small real video files for tests: MP4 (MPEG-4 Part 2) written by OpenCV, which vLLM decodes with."""

from __future__ import annotations

import base64
import os
import tempfile

import numpy as np


def mp4_bytes(frames: int = 16, width: int = 320, height: int = 240, fps: float = 8.0, seed: int = 0,
              moving: bool = True) -> bytes:
    """A clip of a random still background with (``moving``) a white bar sliding across it."""
    import cv2

    background = (np.random.default_rng(seed).random((height, width, 3)) * 255).astype("uint8")
    handle, path = tempfile.mkstemp(suffix=".mp4")
    os.close(handle)
    try:
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        assert writer.isOpened(), "OpenCV cannot write MP4 here"
        for index in range(frames):
            frame = background.copy()
            if moving:
                start = (index * 16) % width
                frame[:, start:start + 48] = 255
            writer.write(frame)
        writer.release()
        with open(path, "rb") as file:
            return file.read()
    finally:
        os.unlink(path)


def video_data_url(data: bytes, mime: str = "video/mp4") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()
