"""The draft-head training recipe runs end to end on the CPU (smoke preset, real target)."""

from __future__ import annotations

import json
import subprocess
import sys

from engine.plugins.speculative.eagle_head import load_head

from .conftest import Server


def test_training_recipe_writes_a_loadable_head_with_measured_acceptance(server: Server, tmp_path) -> None:
    eval_prompts = tmp_path / "eval.json"
    eval_prompts.write_text(json.dumps({"chat": [[{"role": "user", "content": "Name three colours."}]],
                                        "raw": ["def add(a, b):\n"]}))
    out = tmp_path / "head"
    subprocess.run(
        [sys.executable, "-m", "engine.plugins.speculative.train_head", "--target", str(server.model_dir),
         "--out", str(out), "--work", str(tmp_path / "work"), "--preset", "smoke", "--device", "cpu",
         "--draft-steps", "2", "--eval-prompts", str(eval_prompts)],
        check=True, timeout=900,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["optimizer_steps"] > 0 and metrics["generations"] > 0
    for name in ("chat", "code"):
        result = metrics["held_out"][name]
        assert result["target_steps"] > 0
        assert 1.0 <= result["mean_tokens_per_target_step"] <= 3.0
    head = load_head(out)
    assert head.fc.weight.shape == (576, 1152)
