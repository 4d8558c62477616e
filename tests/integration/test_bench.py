"""`leanserve bench` against the real server: figures consistent with the server's own counts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import API_KEY, Server, sample, scrape

pytestmark = pytest.mark.integration

NUM, INPUT_LEN, OUTPUT_LEN = 6, 32, 8


def bench(server: Server, out: Path, *flags: str) -> dict:
    command = [sys.executable, "-m", "service.cli", "bench", "--base-url", server.base_url, "--api-key", API_KEY,
               "--tokenizer", str(server.model_dir), "--no-progress", "--idle-gap-s", "0.5",
               "--max-duration-s", "60", "--out", str(out), *flags]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:] + "\n" + server.log_tail()
    return json.loads((out / "report.json").read_text())


def test_bench_figures_match_server_usage_and_metrics(server: Server, tmp_path: Path) -> None:
    before = scrape(server)
    report = bench(server, tmp_path, "--dataset", "random", "--input-len", str(INPUT_LEN), "--output-len",
                   str(OUTPUT_LEN), "--num-requests", str(NUM), "--concurrency", "1,4", "--warmup", "1",
                   "--slo", "ttft=5s,tpot=500ms")
    after = scrape(server)

    assert [level["concurrency"] for level in report["levels"]] == [1, 4]
    name = report["targets"][0]["name"]
    for level in report["levels"]:
        run = level["runs"][name]
        assert run["completed"] == run["sent"] == run["requests"] == NUM and run["failed"] == 0
        assert run["errors"] == {} and run["status_codes"] == {"200": NUM}
        assert run["output_tokens"] == NUM * OUTPUT_LEN  # ignore_eos: every answer is max_tokens long
        assert run["prompt_tokens"] == sum(r["prompt_tokens"] for r in level["records"][name]) >= NUM * INPUT_LEN
        assert run["request_throughput"] == pytest.approx(NUM / run["duration_s"])
        assert run["output_throughput"] == pytest.approx(NUM * OUTPUT_LEN / run["duration_s"])
        assert run["total_token_throughput"] == pytest.approx(
            (run["prompt_tokens"] + run["output_tokens"]) / run["duration_s"])
        assert 0 <= run["good_requests"] <= NUM
        assert run["goodput"] == pytest.approx(run["good_requests"] / run["duration_s"])
        for metric in ("ttft_ms", "tpot_ms", "e2el_ms"):
            d = run[metric]
            assert d["count"] == NUM and 0 < d["p50"] <= d["p90"] <= d["p99"], (metric, d)
        assert run["itl_ms"]["count"] == NUM * (OUTPUT_LEN - 1)
        assert run["ttft_ms"]["p50"] < run["e2el_ms"]["p50"]
        for record in level["records"][name]:
            assert record["ok"] and record["output_tokens"] == OUTPUT_LEN and len(record["itl_ms"]) == OUTPUT_LEN - 1

    totals = report["totals"][name]
    assert totals["requests"] == 2 * NUM + 1
    model = server.model
    moved_out = sample(after, "leanserve_generation_tokens_total", model=model) - sample(
        before, "leanserve_generation_tokens_total", model=model)
    moved_in = sample(after, "leanserve_prompt_tokens_total", model=model) - sample(
        before, "leanserve_prompt_tokens_total", model=model)
    assert moved_out == totals["output_tokens"] == (2 * NUM + 1) * OUTPUT_LEN
    assert moved_in == totals["prompt_tokens"]
    for png in ("latency_cdf.png", "load_curves.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_counts_rejected_image_requests_as_errors(server: Server, tmp_path: Path) -> None:
    """The text-only server answers 400 to image parts: counted by type and status, no crash, no tokens."""
    report = bench(server, tmp_path, "--dataset", "images", "--image-sizes", "64x64,128x96", "--output-len", "4",
                   "--num-requests", "3", "--concurrency", "2", "--warmup", "0", "--no-plots")
    run = report["levels"][0]["runs"][report["targets"][0]["name"]]
    assert report["config"]["api"] == "chat"
    assert run["sent"] == 3 and run["completed"] == 0 and run["failed"] == 3
    assert run["status_codes"] == {"400": 3}
    assert sum(run["errors"].values()) == 3 and all(key.startswith("http_400:") for key in run["errors"])
    assert run["ttft_ms"]["count"] == 0 and run["output_tokens"] == 0 and run["request_throughput"] == 0
