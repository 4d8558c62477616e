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
from dataclasses import dataclass
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
               "--model", server.model,  # named, so the bench sends no GET /v1/models of its own
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


@dataclass(frozen=True)
class ScrapedLoad:
    prometheus: Prometheus
    report: dict
    started: float  # just after Prometheus's first scrape of the server: no sample is much older
    before: float  # the load began after this scrape
    after: float  # two scrapes after the load ended

    @property
    def window_s(self) -> int:
        """A range covering every sample Prometheus has, so a panel's rate() spans the whole load."""
        return math.ceil(self.after - self.started) + 5

    def counted(self, rate: float, true: float) -> bool:
        """Whether rate() x window is what a rate() over this load may say for ``true`` events.

        rate() extrapolates the increase it sampled to its range: by half a scrape interval before
        the first sample (which lies far from the range's start) and at most 1.1 intervals after the
        last (a scrape just before ``after``). Over S seconds of samples it reads between ``true``
        and ``true`` x (S + 1.6) / S; S is at least ``after - started``.
        """
        sampled_s = self.after - self.started
        return true * 0.999 <= rate * self.window_s <= true * (sampled_s + 1.6) / sampled_s + 1e-6


@pytest.fixture(scope="module")
def scraped_load(server: Server, tmp_path_factory) -> ScrapedLoad:
    """Prometheus scraping the session server every second while the bench runs."""
    workdir = tmp_path_factory.mktemp("prometheus")
    # A labelled series exists only once observed, and Prometheus counts a counter's increase from
    # its first scrape: one request first, so the load's every request lies between two scrapes.
    warm = httpx.post(f"{server.base_url}/v1/completions", headers=server.headers, timeout=120,
                      json={"model": server.model, "prompt": "Hello", "max_tokens": 2})
    assert warm.status_code == 200, warm.text
    with Prometheus([server.base_url.removeprefix("http://")], workdir) as prometheus:
        started = prometheus.wait_for_scrapes(1)  # the first sample is no later than this
        before = prometheus.wait_for_scrapes(10)  # a long sampled span keeps rate()'s extrapolation small
        report = run_bench(server, workdir / "bench")
        after = prometheus.wait_for_scrapes(2)
        yield ScrapedLoad(prometheus, report, started, before, after)


def test_the_target_is_up_with_the_operator_labels(scraped_load):
    [(labels, value)] = scraped_load.prometheus.query(f'up{{job="{JOB}"}}')
    assert value == 1 and labels["namespace"] == NAMESPACE and labels["pod"] == POD


def test_request_rate_and_tokens_agree_with_the_load(scraped_load):
    prometheus, window, at = scraped_load.prometheus, scraped_load.window_s, scraped_load.after
    [run] = scraped_load.report["levels"][0]["runs"].values()
    assert run["completed"] == NUM and run["failed"] == 0 and run["output_tokens"] == NUM * OUTPUT_LEN

    [by_status] = panel_targets("Requests/s by status")
    rates = {labels["status_code"]: value for labels, value in prometheus.query(panel_query(by_status, window), at)}
    assert scraped_load.counted(rates["200"], NUM), (rates, window)
    assert all(rate == 0 for code, rate in rates.items() if code != "200"), rates

    generated, prompted = panel_targets("Throughput (tokens/s)")
    generated_rate = prometheus.value(panel_query(generated, window), at)
    assert scraped_load.counted(generated_rate, run["output_tokens"]), (generated_rate, window)
    prompted_rate = prometheus.value(panel_query(prompted, window), at)
    assert scraped_load.counted(prompted_rate, run["prompt_tokens"]), (prompted_rate, window)


def test_ttft_quantiles_agree_with_the_load(scraped_load):
    prometheus = scraped_load.prometheus
    [run] = scraped_load.report["levels"][0]["runs"].values()
    edges = bucket_edges(prometheus)
    p50_expr, p99_expr = panel_targets("Time to first token (p50 / p99)")
    for expr, measured_ms in ((p50_expr, run["ttft_ms"]["p50"]), (p99_expr, run["ttft_ms"]["p99"])):
        estimate = prometheus.value(panel_query(expr, scraped_load.window_s), scraped_load.after)
        assert in_same_bucket(estimate, measured_ms / 1000, edges), (expr, estimate, measured_ms, edges)


def test_queue_depth_seen_by_dashboard_hpa_and_keda(scraped_load):
    prometheus, before, after = scraped_load.prometheus, scraped_load.before, scraped_load.after
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
    series = prometheus.series(rule["seriesQuery"])
    assert series and all(item["namespace"] == NAMESPACE and item["pod"] == POD for item in series)

    keda = yaml.safe_load((DEPLOY / "components" / "keda" / "scaledobject.yaml").read_text())
    keda_query = keda["spec"]["triggers"][0]["metadata"]["query"]
    assert prometheus.range_max(keda_query, before, after) == peak_waiting


def test_alert_rules_evaluate_cleanly_on_the_real_series(scraped_load):
    prometheus = scraped_load.prometheus
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
