"""Which layers run sparse: the model's profiled list (layers/*.json, drift.py), all, or given indices."""

from __future__ import annotations

import json
from pathlib import Path


def resolve_layers(spec: str, model_path: str) -> list[int]:
    """``auto`` | ``all`` | ``"3,5,7"`` -> sorted layer indices, checked against the model's depth."""
    depth = num_layers(model_path)
    text = spec.strip().lower()
    if text == "all":
        return list(range(depth))
    if text == "auto":
        from engine.plugins.sparse_prefill.drift import load_layer_list

        layers = load_layer_list(model_path)
        if layers is None:
            raise ValueError(f"--sparse-prefill-layers auto: no profiled layer list for {Path(model_path).name}; run "
                             f"python -m engine.plugins.sparse_prefill.drift --model {model_path} --out ... or give "
                             f"the layers (e.g. --sparse-prefill-layers 4,5,6)")
    else:
        try:
            layers = [int(part) for part in text.split(",") if part.strip()]
        except ValueError as error:
            raise ValueError(f"--sparse-prefill-layers: {spec!r} is not auto, all or layer indices") from error
    wrong = [layer for layer in layers if not 0 <= layer < depth]
    if wrong or not layers:
        raise ValueError(f"--sparse-prefill-layers: {spec!r} names no layer or layers outside 0..{depth - 1}")
    return sorted(set(layers))


def num_layers(model_path: str) -> int:
    """Decoder layers of a local model directory (the text model's, for a VLM)."""
    path = Path(model_path) / "config.json"
    if not path.exists():
        raise ValueError(f"--sparse-prefill needs a local model directory with a config.json ({model_path})")
    config = json.loads(path.read_text())
    return int((config.get("text_config") or config)["num_hidden_layers"])
