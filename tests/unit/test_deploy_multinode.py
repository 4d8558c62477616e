"""deploy/overlays/multi-node: a LeaderWorkerSet whose groups run one vLLM engine over Ray.

Rendered with ``kubectl kustomize`` and validated offline like the other overlays
(tests/unit/test_deploy_manifests.py); the LeaderWorkerSet is a custom resource, so its
structure is checked here and each pod template is validated as a v1 Pod. The engine
arguments are read back with leanserve's own settings into what vLLM would receive.
"""

from __future__ import annotations

import os
import re

import pytest

from engine.vllm_args import async_engine_args, core_engine_args, merge_engine_args
from service.settings import Settings
from tests.deploy_manifests import K8S_VERSIONS, deploy_copy, one_of_kind, render, validate_strictly

OVERLAY = "overlays/multi-node"
LWS = ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet")
CRD_KINDS = {LWS, ("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
LEADER_LABEL = ("leaderworkerset.sigs.k8s.io/worker-index", "0")  # set by the LWS controller on leaders
RAY_PORT = 6379


@pytest.fixture(scope="module")
def docs(tmp_path_factory) -> list[dict]:
    return render(deploy_copy(tmp_path_factory.mktemp("deploy")) / OVERLAY)


def _templates(docs: list[dict]) -> dict[str, dict]:
    template = one_of_kind(docs, "LeaderWorkerSet")["spec"]["leaderWorkerTemplate"]
    return {"leader": template["leaderTemplate"], "worker": template["workerTemplate"]}


def _container(template: dict) -> dict:
    [container] = template["spec"]["containers"]
    return container


def _script(container: dict) -> str:
    return " ".join((*container.get("command", []), *container.get("args", [])))


def _pod_labels(template: dict, leader: bool) -> dict[str, str]:
    """The labels a pod of this template gets: its own plus the LWS controller's worker index."""
    return {**template["metadata"]["labels"], LEADER_LABEL[0]: "0" if leader else "1"}


def _gpus(container: dict) -> int:
    resources = container["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]
    return int(resources["limits"]["nvidia.com/gpu"])


def _settings(docs: list[dict], monkeypatch) -> Settings:
    """Settings as the leader's server reads them: the ConfigMap's keys as environment variables."""
    for key in list(os.environ):
        if key.startswith("LEANSERVE_"):
            monkeypatch.delenv(key)
    config = one_of_kind(docs, "ConfigMap")["data"]
    for key, value in config.items():
        assert key.startswith("LEANSERVE_") and key.removeprefix("LEANSERVE_").lower() in Settings.model_fields, key
        monkeypatch.setenv(key, value)
    return Settings()


def test_overlay_renders_a_leaderworkerset_instead_of_the_deployment(docs):
    kinds = {doc["kind"] for doc in docs}
    assert kinds == {"Namespace", "ConfigMap", "Secret", "Service", "LeaderWorkerSet", "PersistentVolumeClaim",
                     "PodDisruptionBudget", "HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule"}
    assert all(doc["metadata"].get("namespace") == "leanserve" for doc in docs if doc["kind"] != "Namespace")


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_and_pod_templates_validate_against_the_kubernetes_schema(docs, version):
    checked = 0
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            continue
        validate_strictly(doc, version, f"{doc['kind']}/{doc['metadata']['name']}")
        checked += 1
    assert checked == 7
    for role, template in _templates(docs).items():
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {**template["metadata"], "name": f"leanserve-0-{role}"}, "spec": template["spec"]}
        validate_strictly(pod, version, f"{role} pod template")


def test_leaderworkerset_has_its_required_structure(docs):
    lws = one_of_kind(docs, "LeaderWorkerSet")
    assert (lws["apiVersion"], lws["kind"]) == LWS
    spec = lws["spec"]
    assert spec["replicas"] >= 1
    assert spec["startupPolicy"] == "LeaderCreated"
    template = spec["leaderWorkerTemplate"]
    assert template["size"] >= 2  # one node is overlays/gpu's job
    assert template["restartPolicy"] == "RecreateGroupOnPodRestart"
    assert {"leaderTemplate", "workerTemplate"} <= template.keys()
    rollout = spec["rolloutStrategy"]["rollingUpdateConfiguration"]
    assert rollout["maxSurge"] or rollout["maxUnavailable"]  # the LWS webhook refuses 0 and 0


def test_references_to_the_generated_config_and_secret_carry_their_hash(docs):
    leader = _container(_templates(docs)["leader"])
    refs = {(kind, ref[kind]["name"]) for ref in leader["envFrom"] for kind in ref}
    assert refs == {("configMapRef", one_of_kind(docs, "ConfigMap")["metadata"]["name"]),
                    ("secretRef", one_of_kind(docs, "Secret")["metadata"]["name"])}
    claim = one_of_kind(docs, "PersistentVolumeClaim")
    assert "ReadWriteMany" in claim["spec"]["accessModes"] or "ReadOnlyMany" in claim["spec"]["accessModes"]
    for role, template in _templates(docs).items():
        [models] = [volume for volume in template["spec"]["volumes"] if volume.get("persistentVolumeClaim")]
        assert models["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"], role
        assert {"name": models["name"], "mountPath": "/models", "readOnly": True} in _container(template)["volumeMounts"]


def test_service_selects_only_the_leaders_and_the_monitor_selects_the_service(docs):
    templates = _templates(docs)
    leader, worker = _pod_labels(templates["leader"], True), _pod_labels(templates["worker"], False)
    service = one_of_kind(docs, "Service")
    selector = service["spec"]["selector"]
    assert dict([LEADER_LABEL]).items() <= selector.items()
    assert selector.items() <= leader.items()
    assert not selector.items() <= worker.items()
    monitor = one_of_kind(docs, "ServiceMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["endpoints"]} <= {port["name"] for port in service["spec"]["ports"]}
    # The PDB covers every pod of a group: evicting any of them takes the group down.
    pdb = one_of_kind(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    assert pdb.items() <= leader.items() and pdb.items() <= worker.items()


def test_hpa_scales_whole_groups_on_the_queue_metric(docs):
    hpa = one_of_kind(docs, "HorizontalPodAutoscaler")["spec"]
    lws = one_of_kind(docs, "LeaderWorkerSet")
    assert hpa["scaleTargetRef"] == {"apiVersion": LWS[0], "kind": LWS[1], "name": lws["metadata"]["name"]}
    assert [m["pods"]["metric"]["name"] for m in hpa["metrics"]] == ["leanserve_requests_waiting"]
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]


def test_engine_args_reach_vllm_as_pipeline_times_tensor_parallel_over_ray(docs, monkeypatch):
    settings = _settings(docs, monkeypatch)
    templates = _templates(docs)
    size = one_of_kind(docs, "LeaderWorkerSet")["spec"]["leaderWorkerTemplate"]["size"]
    args = merge_engine_args(core_engine_args(settings, "/models/model", "model"), [], settings.engine_args)
    assert args["pipeline_parallel_size"] == size
    assert args["distributed_executor_backend"] == "ray"
    assert args["tensor_parallel_size"] == _gpus(_container(templates["leader"]))
    engine_args = async_engine_args(args)  # raises ValueError on a name vLLM does not know
    assert (engine_args.pipeline_parallel_size, engine_args.tensor_parallel_size) == (size, settings.tensor_parallel_size)
    assert engine_args.distributed_executor_backend == "ray"
    # The leader runs `leanserve serve` with no flags: a --engine-arg would replace the env's dict.
    assert "--engine-arg" not in _script(_container(templates["leader"]))


def test_gpus_per_pod_match_in_leader_and_workers(docs, monkeypatch):
    templates = _templates(docs)
    leader, worker = (_container(templates[role]) for role in ("leader", "worker"))
    assert _gpus(leader) == _gpus(worker) == _settings(docs, monkeypatch).tensor_parallel_size >= 1
    assert leader["resources"] == worker["resources"]


def test_workers_join_the_ray_head_the_leader_starts(docs):
    templates = _templates(docs)
    leader, worker = _script(_container(templates["leader"])), _script(_container(templates["worker"]))
    assert "ray start --head" in leader and f"--port={RAY_PORT}" in leader
    assert re.search(r"exec leanserve serve\s*$", leader)  # the server is PID 1 and gets SIGTERM
    assert "ray start --block" in worker
    address = re.search(r"--address=\"?(\S+?)\"?(\s|$)", worker).group(1)
    assert address in (f"${{LWS_LEADER_ADDRESS}}:{RAY_PORT}", f"$(LWS_LEADER_ADDRESS):{RAY_PORT}")
    assert "exec ray start" in worker  # Ray ending ends the container, and the group restarts


def test_pods_are_shaped_like_the_base_server(docs):
    for role, template in _templates(docs).items():
        pod, container = template["spec"], _container(template)
        assert pod["terminationGracePeriodSeconds"] == 45, role
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0, role
        assert container["securityContext"]["readOnlyRootFilesystem"], role
        assert container["image"] == "leanserve:gpu-multinode", role  # the image with Ray (EXTRAS=multinode)
        [shm] = [v for v in pod["volumes"] if v["name"] == "dshm"]
        assert shm["emptyDir"]["medium"] == "Memory", role
        mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
        assert mounts["/dev/shm"] == "dshm" and "/tmp" in mounts and "/home/leanserve" in mounts, role  # Ray, caches
    leader, worker = (_container(template) for template in _templates(docs).values())
    assert "ports" not in worker and not {"startupProbe", "readinessProbe", "livenessProbe"} & worker.keys()
    [port] = leader["ports"]
    assert port["containerPort"] == Settings.model_fields["port"].default
    for probe, path in (("startupProbe", "/health"), ("readinessProbe", "/ready"), ("livenessProbe", "/health")):
        assert leader[probe]["httpGet"] == {"path": path, "port": port["name"]}, probe
    startup = leader["startupProbe"]
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 900  # as overlays/gpu



def test_the_image_the_overlay_names_can_be_built_with_ray():
    """vllm==0.32.0 does not install Ray: the multinode extra does, and the Dockerfile passes it to make."""
    import tomllib

    from tests.deploy_manifests import ROOT

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(requirement.startswith("ray") for requirement in extras["multinode"])
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ARG EXTRAS=""' in dockerfile and 'EXTRAS="${EXTRAS}"' in dockerfile
    assert "EXTRAS=multinode -t leanserve:gpu-multinode" in dockerfile
    assert "$(EXTRAS)" in (ROOT / "Makefile").read_text()
