"""Every metric that deploy/ queries (dashboard, alerts, autoscaler) is on a real server's /metrics."""

from __future__ import annotations

import httpx

from tests.deploy_manifests import alert_expressions, autoscaler_queries, dashboard_queries, metric_names
from tests.integration.conftest import scrape


def test_every_metric_used_by_deploy_is_exported(server):
    # Labelled series appear once observed: serve one request first.
    reply = httpx.post(
        f"{server.base_url}/v1/chat/completions", headers=server.headers, timeout=120,
        json={"model": server.model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
    )
    assert reply.status_code == 200, reply.text
    exported = {name for name, _ in scrape(server)}

    sources = {"dashboard": dashboard_queries(), "alerts": alert_expressions(), "autoscaler": autoscaler_queries()}
    for source, queries in sources.items():
        used = metric_names(queries)
        assert used, source
        missing = sorted(used - exported)
        assert not missing, f"{source} uses metrics missing from /metrics: {missing}"
