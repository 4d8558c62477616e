"""A real Prometheus (Debian's ``prometheus`` 2.42, installed by ``make test``) for the tests.

It scrapes leanserve servers the way the ServiceMonitor does in a cluster (``/metrics``,
job ``leanserve``) and adds the ``namespace`` and ``pod`` labels the Prometheus Operator
would, so the dashboard's, the alerts' and the autoscaler's PromQL run unchanged. It also
loads the alert rules of ``deploy/`` (``rules_file``), so their evaluation against real
series is checked too.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self

import httpx
import yaml

from benchmarks.local_server import free_port
from tests.deploy_manifests import alert_groups, panel_targets

JOB = "leanserve"
# How far a ratio of two rate()s in evaluate_panels' window can exceed the ratio of the counters' increases.
# Prometheus extrapolates each series to the window's start on its own (promql extrapolatedRate): by the gap to
# the first sample, but never past the counter's zero point, and by half a scrape interval instead when the gap
# is over 1.1 intervals. A counter that was small before the window (a draft position rarely reached) can thus
# get 1.1 intervals where the large counter it is divided by gets 0.5: over the shortest window evaluate_panels
# samples (two rounds of two scrapes, >= 4 intervals) the share reads up to (4 + 1.1) / (4 + 0.5) = 1.13 of the
# true one. Exact bounds are asserted on the counters themselves.
RATE_RATIO_SLACK = 1.15
NAMESPACE = "leanserve"
POD = "leanserve-0"


def binary(name: str) -> str:
    """``prometheus`` or ``promtool``; a clear failure where ``make test`` did not install them."""
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: `make test` installs Debian's prometheus package (needs root or sudo)")
    return found


def rules_file(directory: Path) -> Path:
    """deploy/'s PrometheusRule groups as a plain Prometheus rule file (what the Operator loads)."""
    path = directory / "leanserve-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": alert_groups()}, sort_keys=False))
    return path


def panel_query(expr: str, window_s: int) -> str:
    """A dashboard query with Grafana's variables filled in: all namespaces and models, one window."""
    return (expr.replace("$__rate_interval", f"{window_s}s")
            .replace('=~"$namespace"', '=~".*"').replace('=~"$model"', '=~".*"'))


class Prometheus:
    """One Prometheus process scraping ``targets`` (host:port) every ``interval_s`` seconds."""

    def __init__(self, targets: list[str], workdir: Path, interval_s: float = 1.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.interval_s = interval_s
        interval_ms = round(interval_s * 1000)
        config = {
            "global": {"scrape_interval": f"{interval_ms}ms", "evaluation_interval": f"{interval_ms}ms"},
            "rule_files": [str(rules_file(workdir))],
            "scrape_configs": [{
                "job_name": JOB, "metrics_path": "/metrics", "scrape_timeout": f"{interval_ms}ms",
                "static_configs": [{"targets": targets, "labels": {"namespace": NAMESPACE, "pod": POD}}],
            }],
        }
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = workdir / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [binary("prometheus"), f"--config.file={config_path}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        self._wait_ready(timeout_s=60)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"prometheus not ready in {timeout_s} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _api(self, path: str, **params) -> dict:
        reply = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=30)
        body = reply.json()
        if reply.status_code != 200 or body.get("status") != "success":
            raise AssertionError(f"prometheus {path} {params}: {reply.status_code} {json.dumps(body)[:500]}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[tuple[dict, float]]:
        """An instant vector as [(labels, value)] (a scalar result as one unlabelled item)."""
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        data = self._api("query", **params)
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        return [(item["metric"], float(item["value"][1])) for item in data["result"]]

    def value(self, expr: str, at: float | None = None) -> float:
        """The one value of a query that must return exactly one series."""
        result = self.query(expr, at)
        assert len(result) == 1, f"{expr!r}: expected one series, got {result}"
        return result[0][1]

    def range_max(self, expr: str, start: float, end: float) -> float:
        """The largest value a query took between ``start`` and ``end`` (evaluated each interval)."""
        data = self._api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}",
                         step=str(self.interval_s))
        values = [float(v) for series in data["result"] for _, v in series["values"]]
        return max((v for v in values if not math.isnan(v)), default=math.nan)

    def series(self, selector: str) -> list[dict]:
        """The label sets of every series ``selector`` matches (as prometheus-adapter discovers them)."""
        return self._api("series", **{"match[]": selector})

    def rules(self) -> list[dict]:
        """Every loaded alerting rule with its health and state."""
        return [rule for group in self._api("rules")["groups"] for rule in group["rules"]]

    def wait_for_scrapes(self, count: int = 2, timeout_s: float = 60) -> float:
        """Wait until every target has ``count`` new successful scrapes; returns the time of the last one."""
        first = self._scrapes()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            now = self._scrapes()
            if now and all(now.get(target, 0) >= first.get(target, 0) + count for target in now):
                return time.time()
            time.sleep(self.interval_s / 2)
        raise AssertionError(f"no {count} scrapes within {timeout_s} s: {now}\n{self.log_tail()}")

    def _scrapes(self) -> dict[str, float]:
        """{instance: number of successful scrapes so far} (from Prometheus's own ``up`` series)."""
        found = self.query(f'count_over_time(up{{job="{JOB}"}}[1h]) * on (instance) group_left up{{job="{JOB}"}}')
        return {labels["instance"]: value for labels, value in found}


def evaluate_panels(base_url: str, workdir: Path, titles: Sequence[str], traffic: Callable[[], None],
                    rounds: int = 2) -> dict[str, list[list[tuple[dict, float]]]]:
    """Each dashboard panel's queries, evaluated by a real Prometheus scraping ``base_url`` over
    ``rounds`` rounds of ``traffic`` (scrapes between rounds, so even a series born in the
    first round has a rate). Every query must return at least one series and no NaN, i.e. the
    traffic moved what the panel divides by: {title: [result per target]}.
    """
    with Prometheus([base_url.removeprefix("http://")], workdir) as prometheus:
        start = prometheus.wait_for_scrapes(2)
        for _ in range(rounds):
            traffic()
            at = prometheus.wait_for_scrapes(2)
        window_s = math.ceil(at - start) + 2
        found = {}
        for title in titles:
            exprs = panel_targets(title)
            assert exprs, f"no dashboard panel titled {title!r}"
            results = [prometheus.query(panel_query(expr, window_s), at) for expr in exprs]
            for expr, result in zip(exprs, results, strict=True):
                assert result, f"{title!r}: no series for {expr}"
                assert all(math.isfinite(value) for _, value in result), f"{title!r}: {expr} -> {result}"
            found[title] = results
    return found
