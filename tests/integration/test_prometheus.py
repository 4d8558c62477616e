"""A real Prometheus scrapes the real server under load; its PromQL agrees with the load generator.

The queries are the deployed ones, unchanged: the dashboard's panels (Grafana's variables
filled in), the prometheus-adapter rule behind the HPA, the KEDA trigger, and the alert
rules (loaded and evaluated by Prometheus against the real series).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.deploy_manifests import DEPLOY, alert_groups, panel_targets
from tests.integration.conftest import API_KEY, MAX_QUEUED, MAX_RUNNING, Server
from tests.prometheus import JOB, NAMESPACE, POD, Prometheus, panel_query

pytestmark = pytest.mark.integration

NUM, CONCURRENCY, INPUT_LEN, OUTPUT_LEN = 16, 8, 64, 16


def run_bench(server: Server, out: Path) -> dict:
    """``leanserve bench`` (the project's load generator): one closed-loop level, no warm-up."""
    command = [sys.executable, "-m", "service.cli", "bench", "--base-url", server.base_url, "--api-key", API_KEY,
               "--tokenizer", str(server.model_dir), "--no-progress", "--no-plots", "--warmup", "0",
               "--dataset", "random", "--input-len", str(INPUT_LEN), "--output-len", str(OUTPUT_LEN),
               "--num-requests", str(NUM), "--concurrency", str(CONCURRENCY), "--max-duration-s", "300",
               "--out", str(out)]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:] + "\n" + server.log_tail()
    return json.loads((out / "report.json").read_text())


def bucket_edges(prometheus: Prometheus) -> list[float]:
    found = prometheus.query('count by (le) (leanserve_time_to_first_token_seconds_bucket{job="leanserve"})')
    return sorted(float(labels["le"]) for labels, _ in found)


def in_same_bucket(estimate_s: float, measured_s: float, edges: list[float]) -> bool:
    """Prometheus interpolates inside the bucket that holds the quantile: the load generator's
    figure must fall in that bucket (client-side TTFT adds the HTTP hop: 10 % and 50 ms slack)."""
    upper = next(edge for edge in edges if edge >= estimate_s)
    lower = max((edge for edge in edges if edge < estimate_s), default=0.0)
    return lower * 0.9 <= measured_s <= (upper * 1.1 if math.isfinite(upper) else math.inf) + 0.05


@pytest.fixture(scope="module")
def scraped_load(server: Server, tmp_path_factory):
    """Prometheus scraping the session server every second while the bench runs."""
    workdir = tmp_path_factory.mktemp("prometheus")
    # A labelled series exists only once observed, and Prometheus counts a counter's increase from
    # its first scrape: one request first, so the load's every request lies between two scrapes.
    warm = httpx.post(f"{server.base_url}/v1/completions", headers=server.headers, timeout=120,
                      json={"model": server.model, "prompt": "Hello", "max_tokens": 2})
    assert warm.status_code == 200, warm.text
    with Prometheus([server.base_url.removeprefix("http://")], workdir) as prometheus:
        before = prometheus.wait_for_scrapes(2)
        report = run_bench(server, workdir / "bench")
        after = prometheus.wait_for_scrapes(2)
        yield prometheus, report, before, after


def test_the_target_is_up_with_the_operator_labels(scraped_load):
    prometheus, *_ = scraped_load
    [(labels, value)] = prometheus.query(f'up{{job="{JOB}"}}')
    assert value == 1 and labels["namespace"] == NAMESPACE and labels["pod"] == POD


def test_request_rate_and_tokens_agree_with_the_load(scraped_load):
    prometheus, report, before, after = scraped_load
    window = math.ceil(after - before) + 2
    [run] = report["levels"][0]["runs"].values()
    assert run["completed"] == NUM and run["failed"] == 0

    [by_status] = panel_targets("Requests/s by status")
    rates = {labels["status_code"]: value for labels, value in prometheus.query(panel_query(by_status, window), after)}
    assert rates["200"] * window == pytest.approx(NUM, rel=0.1), rates
    assert all(rate * window < 0.5 for code, rate in rates.items() if code != "200"), rates

    generated, prompted = panel_targets("Throughput (tokens/s)")
    assert prometheus.value(panel_query(generated, window), after) * window == pytest.approx(
        run["output_tokens"], rel=0.1)
    assert prometheus.value(panel_query(prompted, window), after) * window == pytest.approx(
        run["prompt_tokens"], rel=0.1)
    assert run["output_tokens"] == NUM * OUTPUT_LEN


def test_ttft_quantiles_agree_with_the_load(scraped_load):
    prometheus, report, before, after = scraped_load
    window = math.ceil(after - before) + 2
    [run] = report["levels"][0]["runs"].values()
    edges = bucket_edges(prometheus)
    p50_expr, p99_expr = panel_targets("Time to first token (p50 / p99)")
    for expr, measured_ms in ((p50_expr, run["ttft_ms"]["p50"]), (p99_expr, run["ttft_ms"]["p99"])):
        estimate = prometheus.value(panel_query(expr, window), after)
        assert in_same_bucket(estimate, measured_ms / 1000, edges), (expr, estimate, measured_ms, edges)


def test_queue_depth_seen_by_dashboard_hpa_and_keda(scraped_load):
    prometheus, _, before, after = scraped_load
    running, waiting = (panel_query(expr, 60) for expr in panel_targets("Queue (requests running / waiting)"))
    assert prometheus.range_max(running, before, after) == MAX_RUNNING  # 8 clients, 4 slots
    peak_waiting = prometheus.range_max(waiting, before, after)
    assert 1 <= peak_waiting <= MAX_QUEUED
    assert prometheus.value(running, after) == 0 and prometheus.value(waiting, after) == 0

    # The HPA reads the adapter's metricsQuery with its template filled for this pod.
    adapter = yaml.safe_load((DEPLOY / "prometheus-adapter" / "rules-configmap.yaml").read_text())
    rule = next(rule for rule in yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
                if rule["name"]["as"] == "leanserve_requests_waiting")
    hpa_query = (rule["metricsQuery"].replace("<<.Series>>", "leanserve_requests_waiting")
                 .replace("<<.LabelMatchers>>", f'namespace="{NAMESPACE}",pod=~"{POD}"').replace("<<.GroupBy>>", "pod"))
    assert prometheus.range_max(hpa_query, before, after) == peak_waiting
    series = prometheus._api("series", **{"match[]": rule["seriesQuery"]})
    assert series and all(item["namespace"] == NAMESPACE and item["pod"] == POD for item in series)

    keda = yaml.safe_load((DEPLOY / "components" / "keda" / "scaledobject.yaml").read_text())
    keda_query = keda["spec"]["triggers"][0]["metadata"]["query"]
    assert prometheus.range_max(keda_query, before, after) == peak_waiting


def test_alert_rules_evaluate_cleanly_on_the_real_series(scraped_load):
    prometheus, *_ = scraped_load
    deadline = time.monotonic() + 30
    rules = prometheus.rules()
    while not all(rule.get("lastEvaluation", "0001").startswith("20") for rule in rules):  # evaluated once
        assert time.monotonic() < deadline, rules
        time.sleep(0.5)
        rules = prometheus.rules()
    expected = {rule["alert"] for group in alert_groups() for rule in group["rules"]}
    assert {rule["name"] for rule in rules} == expected
    for rule in rules:
        assert rule["health"] == "ok", rule
    states = {rule["name"]: rule["state"] for rule in rules}
    # The engine is up and the target scraped: these two must be quiet on a healthy server.
    assert states["LeanserveEngineNotReady"] == states["LeanserveTargetDown"] == "inactive", states
