"""The parts of a chat message's content, as OpenAI defines them: text, ``image_url``, ``video_url``.

Kept apart from ``service/protocol.py`` (the request bodies) so that each stays one page;
``service/images.py`` turns image parts into pictures.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is a 400, never silently dropped


class TextContentPart(_Part):
    type: Literal["text"]
    text: str


class ImageURL(_Part):
    url: str = Field(min_length=1, description="data:image/...;base64,... or, where enabled, http(s)://...")
    detail: Literal["auto", "low", "high"] = "auto"


class ImageContentPart(_Part):
    type: Literal["image_url"]
    image_url: ImageURL


class VideoURL(_Part):
    url: str = Field(min_length=1)


class VideoContentPart(_Part):
    type: Literal["video_url"]
    video_url: VideoURL


ContentPart = TextContentPart | ImageContentPart | VideoContentPart  # told apart by their Literal `type`
