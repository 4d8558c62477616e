"""Images in chat requests: every broken or oversized image is a 400 naming its part (service/images.py)."""

from __future__ import annotations

import base64
import io
import random

import pytest
from PIL import Image

from service.errors import APIError
from service.images import ImageLimits, decode_image, load_image

LIMITS = ImageLimits(max_images=4, max_bytes=200_000, max_pixels=1000 * 1000, max_aspect_ratio=20.0,
                     remote=False, remote_hosts=(), remote_timeout_s=1.0)
PARAM = "messages[0].content[1].image_url"


def encoded(image: Image.Image, fmt: str, **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def data_url(data: bytes, subtype: str = "png") -> str:
    return f"data:image/{subtype};base64," + base64.b64encode(data).decode()


def rejected(call) -> APIError:
    with pytest.raises(APIError) as caught:
        call()
    assert caught.value.status_code == 400 and caught.value.param == PARAM
    return caught.value


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_common_formats_decode_to_rgb(fmt):
    image = decode_image(encoded(Image.new("RGB", (31, 17), (200, 10, 10)), fmt), LIMITS, PARAM)
    assert image.mode == "RGB" and image.size == (31, 17)
    assert abs(image.getpixel((15, 8))[0] - 200) < 10


def test_a_gif_gives_its_first_frame_and_palette_images_become_rgb():
    frames = [Image.new("P", (8, 8), colour) for colour in (1, 2)]
    frames[0].putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    image = decode_image(data, LIMITS, PARAM)
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.parametrize(("data", "code"), [
    (b"", "invalid_image"),
    (b"not an image at all", "invalid_image"),
    (encoded(Image.new("RGB", (64, 64)), "BMP"), "invalid_image"),  # a real image, not an accepted format
])
def test_empty_garbage_and_other_formats_are_refused(data, code):
    assert rejected(lambda: decode_image(data, LIMITS, PARAM)).code == code


def test_a_truncated_image_is_refused():
    noisy = Image.frombytes("RGB", (120, 120), bytes(range(256)) * 168 + bytes(192))
    data = encoded(noisy, "PNG")
    assert rejected(lambda: decode_image(data[: len(data) // 2], LIMITS, PARAM)).code == "invalid_image"


@pytest.mark.parametrize(("size", "code"), [
    ((1001, 1000), "image_too_large"),  # pixels beyond the limit (checked from the header)
    ((400, 10), "invalid_image"),  # aspect ratio 40 > 20
])
def test_size_and_shape_limits(size, code):
    data = encoded(Image.new("L", size), "PNG")
    assert rejected(lambda: decode_image(data, LIMITS, PARAM)).code == code


def test_bytes_limit_is_checked_before_decoding():
    data = encoded(Image.frombytes("L", (600, 600), random.Random(0).randbytes(600 * 600)), "PNG")  # incompressible
    assert len(data) > LIMITS.max_bytes
    assert rejected(lambda: decode_image(data, LIMITS, PARAM)).code == "image_too_large"


async def test_data_urls_and_their_errors():
    good = encoded(Image.new("RGB", (5, 5)), "PNG")
    assert (await load_image(data_url(good), LIMITS, PARAM)).size == (5, 5)
    for url, code in [("data:image/png;base64,@@@", "invalid_image_url"), ("data:text/plain;base64,AAAA", "invalid_image_url"),
                      ("file:///etc/passwd", "invalid_image_url"), ("https://example.com/cat.png", "remote_images_disabled")]:
        with pytest.raises(APIError) as caught:
            await load_image(url, LIMITS, PARAM)
        assert caught.value.status_code == 400 and caught.value.code == code, url


async def test_remote_urls_need_an_allowed_or_public_host():
    remote = ImageLimits(**{**LIMITS.__dict__, "remote": True})
    for url in ("http://127.0.0.1:9/x.png", "http://10.0.0.1/x.png", "http://localhost/x.png"):
        with pytest.raises(APIError) as caught:
            await load_image(url, remote, PARAM)
        assert caught.value.code == "image_host_not_allowed", url
    listed = ImageLimits(**{**LIMITS.__dict__, "remote": True, "remote_hosts": ("images.internal",)})
    with pytest.raises(APIError) as caught:
        await load_image("https://example.com/x.png", listed, PARAM)
    assert caught.value.code == "image_host_not_allowed"
