"""Images of chat requests: from ``image_url`` content parts to decoded RGB images, within limits.

Every way an image can be wrong is the client's fault and a 400 naming the part
(``messages[1].content[0].image_url``): a malformed data URL, bytes beyond the limit, a
format other than PNG/JPEG/WebP/GIF, a zero-sized, oversized or absurdly shaped picture, a
corrupt or truncated file, or a remote URL the operator has not allowed. Sizes are checked
from the header before any pixel is decoded (a decompression bomb never gets decoded), and
decoding runs off the event loop, so one bad or huge image never stalls other requests.

Remote ``http(s)`` URLs are off unless the operator enables them; then they are fetched with
a time and byte limit, without following redirects, and only from the allowed hosts or — when
no host list is given — from hosts that resolve to public addresses (no SSRF into the cluster).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from PIL import Image, UnidentifiedImageError

from service.errors import bad_request

FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
_DATA_URL = re.compile(r"^data:image/(?P<subtype>[a-zA-Z0-9.+-]+)(?:;[^,;]*)*;base64,(?P<data>.*)$", re.DOTALL)


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


async def load_image(url: str, limits: ImageLimits, param: str) -> Image.Image:
    """The image a content part's URL names, decoded to RGB (first frame of a GIF or animated WebP)."""
    if url.startswith("data:"):
        data = _data_url_bytes(url, limits, param)
    elif url.startswith(("http://", "https://")):
        data = await _fetch(url, limits, param)
    else:
        raise bad_request("image_url.url must be a base64 data URL (data:image/png;base64,...)"
                          + (" or an http(s) URL" if limits.remote else ""), param=param, code="invalid_image_url")
    return await asyncio.to_thread(decode_image, data, limits, param)


def _data_url_bytes(url: str, limits: ImageLimits, param: str) -> bytes:
    match = _DATA_URL.match(url)
    if match is None:
        raise bad_request("image_url.url: expected data:image/<type>;base64,<data>", param=param,
                          code="invalid_image_url")
    encoded = match.group("data")
    if len(encoded) // 4 * 3 > limits.max_bytes + 3:
        raise bad_request(f"image is larger than {limits.max_bytes} bytes", param=param, code="image_too_large")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as error:
        raise bad_request(f"image_url.url: invalid base64 ({error})", param=param, code="invalid_image_url") from error


def decode_image(data: bytes, limits: ImageLimits, param: str) -> Image.Image:
    """Bytes -> an RGB image, checking format, size and shape from the header before decoding pixels."""
    if not data:
        raise bad_request("image is empty", param=param, code="invalid_image")
    if len(data) > limits.max_bytes:
        raise bad_request(f"image is larger than {limits.max_bytes} bytes", param=param, code="image_too_large")
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


async def _fetch(url: str, limits: ImageLimits, param: str) -> bytes:
    if not limits.remote:
        raise bad_request("remote image URLs are not enabled on this server: send a base64 data URL",
                          param=param, code="remote_images_disabled")
    host = urlsplit(url).hostname or ""
    await _check_host(host, limits, param)
    try:
        async with httpx.AsyncClient(timeout=limits.remote_timeout_s, follow_redirects=False) as client, \
                client.stream("GET", url) as response:
            if response.status_code != 200:
                raise bad_request(f"fetching the image returned HTTP {response.status_code}", param=param,
                                  code="image_fetch_failed")
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > limits.max_bytes:
                    raise bad_request(f"image is larger than {limits.max_bytes} bytes", param=param,
                                      code="image_too_large")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as error:
        raise bad_request(f"fetching the image failed: {type(error).__name__}", param=param,
                          code="image_fetch_failed") from error


async def _check_host(host: str, limits: ImageLimits, param: str) -> None:
    """Allowed hosts only; without a list, only hosts whose every address is public."""
    if limits.remote_hosts:
        if host.lower() not in limits.remote_hosts:
            raise bad_request(f"image host {host!r} is not allowed on this server", param=param,
                              code="image_host_not_allowed")
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as error:
        raise bad_request(f"image host {host!r} cannot be resolved", param=param, code="image_fetch_failed") from error
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise bad_request(f"image host {host!r} is not a public address", param=param,
                              code="image_host_not_allowed")
