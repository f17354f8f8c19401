"""deploy/k8s: every overlay renders, every object validates against its schema, lint, and the policies."""

from __future__ import annotations

import copy
import ipaddress
import subprocess
import sys

import jsonschema
import kubernetes_validate
import pytest

from tests.deploy.k8s_files import (
    CRD_KINDS,
    K8S,
    KUBERNETES_VERSION,
    NAMESPACE,
    OVERLAYS,
    container,
    crd_schema,
    find,
    of_kind,
    pod_spec,
    render,
    workloads,
)

# ----------------------------------------------------------------------------------------------- render


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_stack(overlay: str) -> None:
    kinds = {(document["kind"], document["metadata"]["name"].split("-config-")[0]) for document in render(overlay)}
    expected = {
        ("Namespace", "masenet"),
        ("Deployment", "masenet-api"),
        ("Service", "masenet-api"),
        ("HorizontalPodAutoscaler", "masenet-api"),
        ("PodDisruptionBudget", "masenet-api"),
        ("Deployment", "masenet-worker"),
        ("PodDisruptionBudget", "masenet-worker"),
        ("ScaledObject", "masenet-worker"),
        ("TriggerAuthentication", "masenet-redis"),
        ("Secret", "masenet-redis"),
        ("PersistentVolumeClaim", "masenet-jobs"),
        ("ServiceMonitor", "masenet-api"),
        ("PodMonitor", "masenet-worker"),
        ("PrometheusRule", "masenet"),
        ("ConfigMap", "masenet-dashboard"),
        ("ConfigMap", "masenet"),
        ("NetworkPolicy", "masenet-default-deny"),
    }
    assert expected <= kinds, expected - kinds
    in_cluster_redis = {("StatefulSet", "masenet-redis"), ("Service", "masenet-redis")}
    assert (in_cluster_redis <= kinds) == (overlay != "external-redis")
    for document in render(overlay):
        if document["kind"] != "Namespace":
            assert document["metadata"].get("namespace") == NAMESPACE, document["metadata"]["name"]


# ----------------------------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_objects_match_the_kubernetes_schemas(overlay: str) -> None:
    failures = []
    for document in render(overlay):
        if (document["apiVersion"], document["kind"]) in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            failures.append(f"{document['kind']} {document['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_match_the_vendored_crd_schemas(overlay: str) -> None:
    seen = set()
    for document in render(overlay):
        key = (document["apiVersion"], document["kind"])
        if key in CRD_KINDS:
            seen.add(key)
            jsonschema.Draft202012Validator(crd_schema(*key)).validate(document)
    assert seen == CRD_KINDS


def test_crd_schemas_are_valid_and_refuse_mistakes() -> None:
    for key in CRD_KINDS:
        jsonschema.Draft202012Validator.check_schema(crd_schema(*key))
    scaled = find("gpu", "ScaledObject", "masenet-worker")
    validator = jsonschema.Draft202012Validator(crd_schema("keda.sh/v1alpha1", "ScaledObject"))
    typo = copy.deepcopy(scaled)
    typo["spec"]["pollingIntervall"] = typo["spec"].pop("pollingInterval")
    no_length = copy.deepcopy(scaled)
    del no_length["spec"]["triggers"][0]["metadata"]["listLength"]
    text_length = copy.deepcopy(scaled)
    text_length["spec"]["triggers"][0]["metadata"]["listLength"] = "many"
    for broken in (typo, no_length, text_length):
        assert not validator.is_valid(broken)
    monitor = copy.deepcopy(find("gpu", "PodMonitor", "masenet-worker"))
    monitor["spec"]["podMetricEndpoints"] = monitor["spec"].pop("podMetricsEndpoints")
    assert not jsonschema.Draft202012Validator(crd_schema("monitoring.coreos.com/v1", "PodMonitor")).is_valid(monitor)


# ----------------------------------------------------------------------------------------------- lint


def test_manifests_are_yamllint_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "yamllint", "--strict", "-c", str(K8S / ".yamllint.yaml"), "."],
        cwd=K8S,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ----------------------------------------------------------------------------------------------- policies


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_locked_down(overlay: str) -> None:
    for workload in workloads(overlay):
        spec = pod_spec(workload)
        assert spec.get("automountServiceAccountToken") is False, workload["metadata"]["name"]
        pod_context = spec["securityContext"]
        assert pod_context["runAsNonRoot"] is True and pod_context["runAsUser"] != 0
        assert pod_context["seccompProfile"]["type"] == "RuntimeDefault"
        for item in spec["containers"] + spec.get("initContainers", []):
            where = f"{workload['metadata']['name']}/{item['name']}"
            context = item["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"] and "add" not in context["capabilities"], where
            # Every container runs with a read-only root; what it writes goes to mounted volumes.
            assert context["readOnlyRootFilesystem"] is True, where
            assert {"cpu", "memory"} <= item["resources"]["requests"].keys(), where
            assert "memory" in item["resources"]["limits"], where
            assert item.get("livenessProbe") and item.get("readinessProbe"), where


def test_the_namespace_enforces_the_restricted_pod_security_standard() -> None:
    namespace = find("gpu", "Namespace", NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_probes_and_disruption_budget(overlay: str) -> None:
    api = find(overlay, "Deployment", "masenet-api")
    item = container(api, "api")
    assert item["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert item["livenessProbe"]["httpGet"]["path"] == "/healthz"
    budget = find(overlay, "PodDisruptionBudget", "masenet-api")
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels(api).items()
    autoscaler = find(overlay, "HorizontalPodAutoscaler", "masenet-api")
    assert autoscaler["spec"]["minReplicas"] > budget["spec"]["minAvailable"], "a drain must be able to proceed"
    assert autoscaler["spec"]["scaleTargetRef"]["name"] == "masenet-api"
    # SIGTERM: /readyz 503 for MASENET_DRAIN_S, then MASENET_SHUTDOWN_GRACE_S for the requests in flight.
    config = find(overlay, "ConfigMap", "masenet-config")["data"]
    needed = float(config["MASENET_DRAIN_S"]) + float(config["MASENET_SHUTDOWN_GRACE_S"])
    assert pod_spec(api)["terminationGracePeriodSeconds"] > needed


@pytest.mark.parametrize(("overlay", "gpus"), [("gpu", 1), ("external-redis", 1), ("cpu", 0)])
def test_workers_request_one_gpu_each_or_none(overlay: str, gpus: int) -> None:
    worker = find(overlay, "Deployment", "masenet-worker")
    resources = container(worker, "worker")["resources"]
    for section in ("requests", "limits"):
        assert int(resources[section].get("nvidia.com/gpu", 0)) == gpus
    assert pod_spec(worker)["terminationGracePeriodSeconds"] >= 300, "video chunks and finalize steps need minutes"


def pod_labels(workload: dict) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


def selected(policy: dict, workload: dict) -> bool:
    selector = policy["spec"]["podSelector"]
    labels = pod_labels(workload)
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    return all(labels.get(rule["key"]) in rule["values"] for rule in selector.get("matchExpressions", []))


def rules_for(overlay: str, workload: dict, direction: str) -> list[dict]:
    return [
        rule
        for policy in of_kind(overlay, "NetworkPolicy")
        if selected(policy, workload) and direction.capitalize() in policy["spec"]["policyTypes"]
        for rule in policy["spec"].get(direction, [])
    ]


def ports(rule: dict) -> set[int]:
    return {port["port"] for port in rule.get("ports", [])}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies(overlay: str) -> None:
    deny = find(overlay, "NetworkPolicy", "masenet-default-deny")
    assert deny["spec"]["podSelector"] == {} and set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    api = find(overlay, "Deployment", "masenet-api")
    worker = find(overlay, "Deployment", "masenet-worker")
    # Workers: in, only Prometheus on the metrics port.
    (worker_in,) = rules_for(overlay, worker, "ingress")
    assert ports(worker_in) == {9101}
    (source,) = worker_in["from"]
    assert source["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    # Out: DNS for all, Redis for the API and the workers, cameras (TCP, private networks) for the workers only.
    for workload in (api, worker):
        egress = rules_for(overlay, workload, "egress")
        assert any(ports(rule) == {53} for rule in egress)
        assert any(ports(rule) == {6379} for rule in egress)
    camera_rules = [rule for rule in rules_for(overlay, worker, "egress") if {554, 80, 443} <= ports(rule)]
    assert camera_rules, "workers must reach cameras over RTSP and HTTP(S)"
    for rule in camera_rules:
        assert {port["protocol"] for port in rule["ports"]} == {"TCP"}
        for peer in rule["to"]:
            assert ipaddress.ip_network(peer["ipBlock"]["cidr"]).is_private
    assert not any(554 in ports(rule) for rule in rules_for(overlay, api, "egress")), "the API opens no camera"
    if overlay == "external-redis":
        return
    redis = find(overlay, "StatefulSet", "masenet-redis")
    (redis_in,) = rules_for(overlay, redis, "ingress")
    assert ports(redis_in) == {6379}
    sources = [peer["podSelector"]["matchLabels"].get("app.kubernetes.io/component") for peer in redis_in["from"]]
    assert sorted(filter(None, sources)) == ["api", "worker"]
    assert any("namespaceSelector" in peer for peer in redis_in["from"]), "KEDA's operator reads the queue lengths"
    assert all(ports(rule) == {53} for rule in rules_for(overlay, redis, "egress")), "Redis opens no connection"


def test_redis_keeps_an_append_only_file_on_a_volume_claim() -> None:
    redis = find("gpu", "StatefulSet", "masenet-redis")
    item = container(redis, "redis")
    command = " ".join(item["command"])
    assert "--appendonly yes" in command and '--requirepass "$REDIS_PASSWORD"' in command
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in item["volumeMounts"]
    assert find("gpu", "PersistentVolumeClaim", "masenet-jobs")["spec"]["accessModes"] == ["ReadWriteMany"]
