"""Every metric that deploy/ queries (dashboard, alerts, autoscaler) is on a real server's /metrics."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy_manifests import alert_expressions, autoscaler_queries, dashboard_queries, metric_names
from tests.integration.conftest import scrape


def _declared(server) -> set[str]:
    """Series names of every family /metrics declares, sampled or not: a plugin that is off
    (as on this server) still declares its families, which its dashboard panels query."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    return {family.name + suffix for family in text_string_to_metric_families(text)
            for suffix in suffixes.get(family.type, ("",))}


def test_every_metric_used_by_deploy_is_exported(server):
    # Labelled series appear once observed: serve one request first.
    reply = httpx.post(
        f"{server.base_url}/v1/chat/completions", headers=server.headers, timeout=120,
        json={"model": server.model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
    )
    assert reply.status_code == 200, reply.text
    exported = {name for name, _ in scrape(server)} | _declared(server)

    sources = {"dashboard": dashboard_queries(), "alerts": alert_expressions(), "autoscaler": autoscaler_queries()}
    for source, queries in sources.items():
        used = metric_names(queries)
        assert used, source
        missing = sorted(used - exported)
        assert not missing, f"{source} uses metrics missing from /metrics: {missing}"
