"""Encoded videos of a prompt -> the sampled frames and metadata vLLM's processors take.

Decoding uses vLLM's own video loader (OpenCV, the backend vLLM's server uses on CPU): frames
are sampled evenly over the clip, at most ``max_frames`` of them, and the metadata (source fps,
frame indices) lets Qwen2.5-VL's processor place each frame pair in time (M-RoPE). The frame
size is read from the container's header and checked before any frame is decoded, so a 4K clip
is refused, not decoded into gigabytes. Everything here runs off the event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from engine.protocol import EncodedVideo, InvalidRequestError, MultimodalItem, Prompt


def decode_video(video: EncodedVideo) -> tuple[Any, dict[str, Any]]:
    """(frames [T, H, W, 3] uint8, metadata) of one video; InvalidRequestError naming its part if unreadable."""
    import cv2
    from vllm.multimodal.video import VIDEO_LOADER_REGISTRY
    from vllm.multimodal.video_decoders.opencv import OpenCVVideoBackendMixin

    try:
        capture = OpenCVVideoBackendMixin.open_video_capture(video.data)
    except (ValueError, cv2.error) as error:
        raise InvalidRequestError(f"video cannot be read: {error}", param=video.param) from error
    width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    frame_count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    del capture  # never .release(): on a Python byte stream it segfaults in OpenCV 5.0 (vLLM never calls it)
    if width < 1 or height < 1 or frame_count < 1:
        raise InvalidRequestError(f"video has no frames ({frame_count} of {width}x{height})", param=video.param)
    if width * height > video.max_frame_pixels:
        raise InvalidRequestError(f"video frames are {width}x{height}; at most {video.max_frame_pixels} pixels "
                                  "per frame are accepted", param=video.param)
    try:
        frames, metadata = VIDEO_LOADER_REGISTRY.load("opencv").load_bytes(video.data, num_frames=video.max_frames)
    except (ValueError, AssertionError, cv2.error) as error:
        raise InvalidRequestError(f"video cannot be decoded: {error}", param=video.param) from error
    if len(frames) == 0:
        raise InvalidRequestError("video has no decodable frames", param=video.param)
    return frames, metadata


async def with_decoded_videos(prompt: Prompt) -> Prompt:
    """``prompt`` with every ``EncodedVideo`` replaced by its frames (decoded in threads, together)."""
    encoded = [item for item in prompt.multimodal if isinstance(item.data, EncodedVideo)]
    if not encoded:
        return prompt
    decoded = iter(await asyncio.gather(*(asyncio.to_thread(decode_video, item.data) for item in encoded)))
    items = tuple(MultimodalItem(item.modality, next(decoded), item.options) if isinstance(item.data, EncodedVideo)
                  else item for item in prompt.multimodal)
    return Prompt(prompt.token_ids, items)
