"""The parallel drafter's training recipe runs end to end on the CPU (smoke preset, real target):
vLLM generates the target's answers, transformers its residual streams, and the drafter it
writes loads back with its held-out acceptance measured."""

from __future__ import annotations

import json
import subprocess
import sys

from engine.plugins.speculative.config import is_parallel_drafter
from engine.plugins.speculative.parallel_head import load_drafter

from .conftest import Server


def test_training_recipe_writes_a_loadable_drafter_with_measured_acceptance(server: Server, tmp_path) -> None:
    out = tmp_path / "drafter"
    subprocess.run(
        [sys.executable, "-m", "engine.plugins.speculative.train_drafter", "--target", str(server.model_dir),
         "--out", str(out), "--work", str(tmp_path / "work"), "--preset", "smoke"],
        check=True, timeout=900,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["optimizer_steps"] > 0 and metrics["answer_tokens"]["train"] > 0
    for name in ("chat", "code"):
        by_k = metrics["held_out"][name]
        assert sorted(by_k) == ["1", "2", "3"]
        for result in by_k.values():
            assert result["target_steps"] > 0 and 1.0 <= result["mean_tokens_per_target_step"] <= 4.0
    assert 1 <= metrics["serve_draft_tokens"] <= 3
    assert is_parallel_drafter(out)
    drafter = load_drafter(out)
    assert drafter.fc.weight.shape == (576, 3 * 576) and drafter.lm_head.weight.shape[0] == 512
