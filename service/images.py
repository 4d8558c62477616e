"""Images of chat requests: from ``image_url`` content parts to decoded RGB images, within limits.

Every way an image can be wrong is the client's fault and a 400 naming the part
(``messages[1].content[0].image_url``): a malformed data URL, bytes beyond the limit, a
format other than PNG/JPEG/WebP/GIF, a zero-sized, oversized or absurdly shaped picture, a
corrupt or truncated file, or a remote URL the operator has not allowed. Sizes are checked
from the header before any pixel is decoded (a decompression bomb never gets decoded), and
decoding runs off the event loop, so one bad or huge image never stalls other requests.

Where the bytes may come from (data URLs; remote URLs only where enabled) is
``service/media_source.py``'s job.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError

from service.errors import bad_request
from service.media_source import MediaSource, media_bytes, too_large

FORMATS = ("PNG", "JPEG", "WEBP", "GIF")


@dataclass(frozen=True)
class ImageLimits:
    """Operator-set bounds on images (``Settings`` holds the defaults)."""

    max_images: int
    max_bytes: int
    max_pixels: int
    max_aspect_ratio: float
    remote: bool
    remote_hosts: tuple[str, ...]
    remote_timeout_s: float

    @classmethod
    def from_settings(cls, settings: Any) -> ImageLimits:  # service.settings.Settings (it imports this module)
        return cls(settings.max_images_per_request, settings.max_image_bytes, settings.max_image_pixels,
                   settings.max_image_aspect_ratio, settings.remote_images, settings.remote_image_hosts,
                   settings.remote_image_timeout_s)

    @property
    def source(self) -> MediaSource:
        return MediaSource("image", self.max_bytes, self.remote, self.remote_hosts, self.remote_timeout_s)


async def load_image(url: str, limits: ImageLimits, param: str) -> Image.Image:
    """The image a content part's URL names, decoded to RGB (first frame of a GIF or animated WebP)."""
    data = await media_bytes(url, limits.source, param)
    return await asyncio.to_thread(decode_image, data, limits, param)


def decode_image(data: bytes, limits: ImageLimits, param: str) -> Image.Image:
    """Bytes -> an RGB image, checking format, size and shape from the header before decoding pixels."""
    if not data:
        raise bad_request("image is empty", param=param, code="invalid_image")
    if len(data) > limits.max_bytes:
        raise too_large(limits.source, param)
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError as error:
        raise bad_request(f"not a {'/'.join(FORMATS)} image", param=param, code="invalid_image") from error
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise bad_request(f"image cannot be read: {error}", param=param, code="invalid_image") from error
    _check_shape(image.size, limits, param)
    try:
        image.seek(0)
        image.load()
        return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        raise bad_request(f"image is corrupt or truncated: {error}", param=param, code="invalid_image") from error


def _check_shape(size: tuple[int, int], limits: ImageLimits, param: str) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise bad_request(f"image has no pixels ({width}x{height})", param=param, code="invalid_image")
    if width * height > limits.max_pixels:
        raise bad_request(f"image has {width}x{height} pixels; at most {limits.max_pixels} are accepted",
                          param=param, code="image_too_large")
    if max(width, height) / min(width, height) > limits.max_aspect_ratio:
        raise bad_request(f"image is {width}x{height}: aspect ratio beyond {limits.max_aspect_ratio:g}",
                          param=param, code="invalid_image")
