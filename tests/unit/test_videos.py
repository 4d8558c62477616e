"""Videos in chat requests, on the gateway's side: URL, bytes and count checks, each a 400 naming the part."""

from __future__ import annotations

import base64

import pytest

from engine.protocol import EncodedVideo, ModelInfo
from service.errors import APIError
from service.images import ImageLimits
from service.protocol import ChatCompletionRequest
from service.serving_chat import chat_inputs
from service.videos import VideoLimits, load_video

LIMITS = VideoLimits(max_videos=1, max_bytes=1000, max_frames=8, max_frame_pixels=640 * 480, remote=False,
                     remote_hosts=(), remote_timeout_s=1.0)
IMAGES = ImageLimits(max_images=2, max_bytes=1000, max_pixels=100 * 100, max_aspect_ratio=20.0, remote=False,
                     remote_hosts=(), remote_timeout_s=1.0)
PARAM = "messages[0].content[0].video_url"
VIDEO_MODEL = ModelInfo("vlm", 4096, modalities=("image", "video"))


def data_url(data: bytes, mime: str = "video/mp4") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


async def test_a_data_url_becomes_bytes_with_the_frame_limits():
    video = await load_video(data_url(b"\x00\x00\x00\x18ftypmp42"), LIMITS, PARAM)
    assert video == EncodedVideo(b"\x00\x00\x00\x18ftypmp42", 8, 640 * 480, PARAM)
    webm = await load_video(data_url(b"\x1aE\xdf\xa3", "video/webm"), LIMITS, PARAM)
    assert webm.data == b"\x1aE\xdf\xa3"


@pytest.mark.parametrize(("url", "code"), [
    (data_url(b""), "invalid_video"),
    (data_url(b"x" * 1001), "video_too_large"),
    ("data:video/mp4;base64,@@@", "invalid_video_url"),
    (data_url(b"\x89PNG", "image/png"), "invalid_video_url"),
    ("file:///etc/passwd", "invalid_video_url"),
    ("https://example.com/clip.mp4", "remote_videos_disabled"),
])
async def test_bad_urls_are_400s_naming_the_part(url, code):
    with pytest.raises(APIError) as caught:
        await load_video(url, LIMITS, PARAM)
    assert (caught.value.status_code, caught.value.code, caught.value.param) == (400, code, PARAM)


async def test_remote_videos_follow_the_remote_media_rules():
    remote = VideoLimits(**{**LIMITS.__dict__, "remote": True})
    with pytest.raises(APIError) as caught:
        await load_video("http://127.0.0.1:9/clip.mp4", remote, PARAM)
    assert caught.value.code == "video_host_not_allowed"


def request(*parts: dict) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "vlm", "messages": [{"role": "user", "content": list(parts)}]})


def video_part(data: bytes = b"\x00\x00\x00\x18ftypmp42") -> dict:
    return {"type": "video_url", "video_url": {"url": data_url(data)}}


async def test_video_parts_keep_their_place_for_the_chat_template():
    body = request({"type": "text", "text": "What happens?"}, video_part())
    messages, items = await chat_inputs(body, VIDEO_MODEL, IMAGES, LIMITS)
    assert messages == [{"role": "user", "content": [{"type": "text", "text": "What happens?"}, {"type": "video"}]}]
    assert [item.modality for item in items] == ["video"]
    assert isinstance(items[0].data, EncodedVideo) and items[0].data.param == "messages[0].content[1].video_url"


async def test_too_many_videos_and_video_to_a_model_without_video_are_400s():
    with pytest.raises(APIError) as caught:
        await chat_inputs(request(video_part(), video_part()), VIDEO_MODEL, IMAGES, LIMITS)
    assert (caught.value.code, caught.value.param) == ("too_many_videos", "messages")
    images_only = ModelInfo("llava", 4096, modalities=("image",))
    with pytest.raises(APIError) as caught:
        await chat_inputs(request(video_part()), images_only, IMAGES, LIMITS)
    assert (caught.value.code, caught.value.param) == ("unsupported_modality", "messages[0].content[0]")
