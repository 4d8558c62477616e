"""The bytes behind an image or video URL of a chat request: a base64 data URL or, where enabled, http(s).

Every way a URL can be wrong is the client's fault and a 400 naming the part, with a code
built from the kind of media (``invalid_image_url``, ``video_too_large``, ...): a malformed data
URL, bytes beyond the limit, or a remote URL the operator has not allowed.

Remote ``http(s)`` URLs are off unless the operator enables them (``--remote-images``, which
covers video too); then they are fetched with a time and byte limit, without following
redirects, and only from the allowed hosts or — when no host list is given — from hosts that
resolve to public addresses (no SSRF into the cluster).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

import httpx

from service.errors import bad_request


@dataclass(frozen=True)
class MediaSource:
    """Where one kind of media may come from, and how large it may be."""

    kind: Literal["image", "video"]
    max_bytes: int
    remote: bool
    remote_hosts: tuple[str, ...]
    remote_timeout_s: float

    @property
    def data_url(self) -> re.Pattern[str]:
        return re.compile(rf"^data:{self.kind}/(?P<subtype>[a-zA-Z0-9.+-]+)(?:;[^,;]*)*;base64,(?P<data>.*)$",
                          re.DOTALL)


async def media_bytes(url: str, source: MediaSource, param: str) -> bytes:
    """The encoded bytes a content part's URL names (not yet decoded)."""
    if url.startswith("data:"):
        return data_url_bytes(url, source, param)
    if url.startswith(("http://", "https://")):
        return await _fetch(url, source, param)
    raise bad_request(f"{source.kind}_url.url must be a base64 data URL (data:{source.kind}/...;base64,...)"
                      + (" or an http(s) URL" if source.remote else ""), param=param,
                      code=f"invalid_{source.kind}_url")


def too_large(source: MediaSource, param: str) -> Exception:
    return bad_request(f"{source.kind} is larger than {source.max_bytes} bytes", param=param,
                       code=f"{source.kind}_too_large")


def data_url_bytes(url: str, source: MediaSource, param: str) -> bytes:
    match = source.data_url.match(url)
    if match is None:
        raise bad_request(f"{source.kind}_url.url: expected data:{source.kind}/<type>;base64,<data>", param=param,
                          code=f"invalid_{source.kind}_url")
    encoded = match.group("data")
    if len(encoded) // 4 * 3 > source.max_bytes + 3:
        raise too_large(source, param)
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as error:
        raise bad_request(f"{source.kind}_url.url: invalid base64 ({error})", param=param,
                          code=f"invalid_{source.kind}_url") from error
    if len(data) > source.max_bytes:
        raise too_large(source, param)
    return data


async def _fetch(url: str, source: MediaSource, param: str) -> bytes:
    kind = source.kind
    if not source.remote:
        raise bad_request(f"remote {kind} URLs are not enabled on this server: send a base64 data URL",
                          param=param, code=f"remote_{kind}s_disabled")
    host = urlsplit(url).hostname or ""
    await _check_host(host, source, param)
    try:
        async with httpx.AsyncClient(timeout=source.remote_timeout_s, follow_redirects=False) as client, \
                client.stream("GET", url) as response:
            if response.status_code != 200:
                raise bad_request(f"fetching the {kind} returned HTTP {response.status_code}", param=param,
                                  code=f"{kind}_fetch_failed")
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > source.max_bytes:
                    raise too_large(source, param)
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as error:
        raise bad_request(f"fetching the {kind} failed: {type(error).__name__}", param=param,
                          code=f"{kind}_fetch_failed") from error


async def _check_host(host: str, source: MediaSource, param: str) -> None:
    """Allowed hosts only; without a list, only hosts whose every address is public."""
    kind = source.kind
    if source.remote_hosts:
        if host.lower() not in source.remote_hosts:
            raise bad_request(f"{kind} host {host!r} is not allowed on this server", param=param,
                              code=f"{kind}_host_not_allowed")
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as error:
        raise bad_request(f"{kind} host {host!r} cannot be resolved", param=param,
                          code=f"{kind}_fetch_failed") from error
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise bad_request(f"{kind} host {host!r} is not a public address", param=param,
                              code=f"{kind}_host_not_allowed")
