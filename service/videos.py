"""Videos of chat requests: from ``video_url`` content parts to encoded bytes, within limits.

The gateway checks what it can without decoding (count, URL, bytes); the engine decodes the
container and samples frames as the model's processor expects (``engine/video_decoding.py``),
bounded by the frame count and frame size set here. A video the engine cannot read is still a
400 naming the part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.protocol import EncodedVideo
from service.errors import bad_request
from service.media_source import MediaSource, media_bytes


@dataclass(frozen=True)
class VideoLimits:
    """Operator-set bounds on videos (``Settings`` holds the defaults)."""

    max_videos: int
    max_bytes: int
    max_frames: int
    max_frame_pixels: int
    remote: bool
    remote_hosts: tuple[str, ...]
    remote_timeout_s: float

    @classmethod
    def from_settings(cls, settings: Any) -> VideoLimits:  # service.settings.Settings (it imports this module)
        return cls(settings.max_videos_per_request, settings.max_video_bytes, settings.max_video_frames,
                   settings.max_video_frame_pixels, settings.remote_images, settings.remote_image_hosts,
                   settings.remote_image_timeout_s)

    @property
    def source(self) -> MediaSource:
        return MediaSource("video", self.max_bytes, self.remote, self.remote_hosts, self.remote_timeout_s)


async def load_video(url: str, limits: VideoLimits, param: str) -> EncodedVideo:
    """The video a content part's URL names, as bytes the engine will decode."""
    data = await media_bytes(url, limits.source, param)
    if not data:
        raise bad_request("video is empty", param=param, code="invalid_video")
    return EncodedVideo(data, limits.max_frames, limits.max_frame_pixels, param)
