"""Videos decode through vLLM's own loader, within the frame limits, and bad ones are 400s naming their part."""

from __future__ import annotations

import numpy as np
import pytest

from engine.protocol import EncodedVideo, InvalidRequestError, MultimodalItem, Prompt
from engine.video_decoding import decode_video, with_decoded_videos
from tests.videos import mp4_bytes

PARAM = "messages[0].content[1].video_url"


def encoded(data: bytes, max_frames: int = 32, max_frame_pixels: int = 1920 * 1080) -> EncodedVideo:
    return EncodedVideo(data, max_frames, max_frame_pixels, PARAM)


def test_frames_are_sampled_evenly_up_to_the_limit_with_their_timing():
    frames, metadata = decode_video(encoded(mp4_bytes(frames=20, width=96, height=64, fps=10), max_frames=8))
    assert frames.shape == (8, 64, 96, 3) and frames.dtype == np.uint8
    assert metadata["fps"] == pytest.approx(10) and metadata["total_num_frames"] == 20
    assert metadata["frames_indices"][0] == 0 and metadata["frames_indices"][-1] == 19
    short, _ = decode_video(encoded(mp4_bytes(frames=5, width=96, height=64), max_frames=8))
    assert len(short) == 5


@pytest.mark.parametrize("data", [b"", b"not a video at all" * 50])
def test_unreadable_videos_name_their_part(data):
    with pytest.raises(InvalidRequestError) as caught:
        decode_video(encoded(data))
    assert caught.value.param == PARAM


def test_a_truncated_video_is_refused():
    data = mp4_bytes(frames=12, width=96, height=64)
    with pytest.raises(InvalidRequestError) as caught:
        decode_video(encoded(data[: len(data) // 2]))
    assert caught.value.param == PARAM


def test_frame_size_is_checked_before_decoding():
    with pytest.raises(InvalidRequestError, match="96x64"):
        decode_video(encoded(mp4_bytes(frames=4, width=96, height=64), max_frame_pixels=96 * 64 - 1))


async def test_only_videos_are_replaced_and_order_is_kept():
    image = object()
    prompt = Prompt([1, 2, 3], (MultimodalItem("video", encoded(mp4_bytes(frames=4, width=64, height=64))),
                                MultimodalItem("image", image)))
    decoded = await with_decoded_videos(prompt)
    assert decoded.token_ids == [1, 2, 3]
    assert [item.modality for item in decoded.multimodal] == ["video", "image"]
    frames, metadata = decoded.multimodal[0].data
    assert frames.shape[0] == 4 and "fps" in metadata
    assert decoded.multimodal[1].data is image
    plain = Prompt([1])
    assert await with_decoded_videos(plain) is plain
