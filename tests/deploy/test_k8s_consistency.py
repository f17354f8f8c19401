"""deploy/k8s against the code and the other deployment files: settings, ports, job names, queues, generated copies."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from jobs.settings import Settings
from tests.deploy.deploy_files import CONTRACT_METRICS, metric_names
from tests.deploy.k8s_files import (
    K8S,
    KNOWN_OTHER_ENV,
    OVERLAYS,
    ROOT,
    container,
    container_env,
    find,
    load_yaml,
    render,
    workloads,
)

PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "masenet.json"
README = ROOT / "deploy" / "README.md"

# Settings a Kubernetes deployment has to think about: each is set in the manifests or named in the README's
# Kubernetes section.
K8S_RELEVANT_SETTINGS = {
    "redis_url",
    "queue_prefix",
    "device",
    "max_batch",
    "worker_metrics_port",
    "storage",
    "max_queue",
    "timeout_s",
    "drain_s",
    "shutdown_grace_s",
    "stream_allow",
    "api_keys",
    "video_chunk_frames",
    "max_streams_per_worker",
}


def kubernetes_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Kubernetes")
    following = text.find("\n## ", start + 1)
    return text[start : following if following > 0 else None]


def prometheus_jobs() -> dict[str, int]:
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    return {
        job["job_name"]: job["dns_sd_configs"][0]["port"] for job in config["scrape_configs"] if "dns_sd_configs" in job
    }


# ----------------------------------------------------------------------------------------------- settings


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_variable_set_is_a_setting_or_known(overlay: str) -> None:
    fields = Settings.model_fields
    for workload in workloads(overlay):
        for item in workload["spec"]["template"]["spec"]["containers"]:
            for name in container_env(overlay, workload, item["name"]):
                if name.startswith("MASENET_"):
                    assert name[len("MASENET_") :].lower() in fields, f"{name} is not a field of jobs.settings.Settings"
                else:
                    assert name in KNOWN_OTHER_ENV, f"{name} ({workload['metadata']['name']}) is neither"
            # The literal values are valid settings.
            literal = {
                name[len("MASENET_") :].lower(): value
                for name, value in container_env(overlay, workload, item["name"]).items()
                if name.startswith("MASENET_") and isinstance(value, str)
            }
            Settings(_env_file=None, **literal)


def test_settings_that_matter_on_kubernetes_are_set_or_documented() -> None:
    section = kubernetes_section()
    set_anywhere = {
        name[len("MASENET_") :].lower()
        for overlay in OVERLAYS
        for workload in workloads(overlay)
        for item in workload["spec"]["template"]["spec"]["containers"]
        for name in container_env(overlay, workload, item["name"])
    }
    for field in sorted(K8S_RELEVANT_SETTINGS):
        variable = f"MASENET_{field.upper()}"
        assert field in set_anywhere or variable in section, f"{variable} is neither set nor in the Kubernetes section"
    assert set(KNOWN_OTHER_ENV) <= set(Settings.model_fields) | set(KNOWN_OTHER_ENV)
    for field in K8S_RELEVANT_SETTINGS:
        assert field in Settings.model_fields


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_and_workers_share_redis_prefix_and_storage(overlay: str) -> None:
    api = container_env(overlay, find(overlay, "Deployment", "masenet-api"), "api")
    worker = container_env(overlay, find(overlay, "Deployment", "masenet-worker"), "worker")
    for name in ("MASENET_REDIS_URL", "MASENET_QUEUE_PREFIX", "MASENET_STORAGE"):
        assert api[name] == worker[name], name
    for name in ("api", "worker"):
        deployment = find(overlay, "Deployment", f"masenet-{name}")
        mounts = {mount["mountPath"]: mount["name"] for mount in container(deployment, name)["volumeMounts"]}
        volumes = {volume["name"]: volume for volume in deployment["spec"]["template"]["spec"]["volumes"]}
        claim = volumes[mounts[api["MASENET_STORAGE"]]]["persistentVolumeClaim"]["claimName"]
        assert claim == "masenet-jobs"


def test_in_cluster_redis_url_matches_the_secret_and_service() -> None:
    secret = find("gpu", "Secret", "masenet-redis")["stringData"]
    service = find("gpu", "Service", "masenet-redis")
    assert secret["url"] == f"redis://:{secret['password']}@masenet-redis:{service['spec']['ports'][0]['port']}/0"
    assert secret["password"] == "CHANGE-ME", "the placeholder the README tells operators to replace"
    assert "CHANGE-ME" in kubernetes_section()


# ----------------------------------------------------------------------------------------------- KEDA


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_watches_the_lists_rq_keeps_for_the_queues(overlay: str) -> None:
    from rq.queue import Queue

    env = container_env(overlay, find(overlay, "Deployment", "masenet-api"), "api")
    settings = Settings(_env_file=None, queue_prefix=env["MASENET_QUEUE_PREFIX"])
    expected = {f"{Queue.redis_queue_namespace_prefix}{name}" for name in (settings.image_queue, settings.video_queue)}
    assert expected == {"rq:queue:masenet:images", "rq:queue:masenet:video"}
    scaled = find(overlay, "ScaledObject", "masenet-worker")["spec"]
    assert scaled["scaleTargetRef"]["name"] == "masenet-worker"
    triggers = scaled["triggers"]
    assert {trigger["metadata"]["listName"] for trigger in triggers} == expected
    for trigger in triggers:
        assert trigger["type"] == "redis"
        assert trigger["authenticationRef"]["name"] == "masenet-redis"
        if overlay != "external-redis":
            host, port = trigger["metadata"]["address"].split(":")
            assert host.split(".")[:2] == ["masenet-redis", "masenet"] and port == "6379"
    auth = find(overlay, "TriggerAuthentication", "masenet-redis")["spec"]["secretTargetRef"]
    assert auth == [{"parameter": "password", "name": "masenet-redis", "key": "password"}]
    assert scaled["minReplicaCount"] >= 1, "0 workers leave every API pod unready (see the ScaledObject's comment)"


# ----------------------------------------------------------------------------------------------- monitoring


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scrape_ports_and_job_names_match_prometheus_yml(overlay: str) -> None:
    jobs = prometheus_jobs()
    assert set(jobs) == {"masenet-api", "masenet-worker"}
    api = find(overlay, "Deployment", "masenet-api")
    api_ports = {port["name"]: port["containerPort"] for port in container(api, "api")["ports"]}
    service = find(overlay, "Service", "masenet-api")
    monitor = find(overlay, "ServiceMonitor", "masenet-api")["spec"]
    (endpoint,) = monitor["endpoints"]
    (service_port,) = [port for port in service["spec"]["ports"] if port["name"] == endpoint["port"]]
    assert api_ports[service_port["targetPort"]] == service_port["port"] == jobs["masenet-api"]
    assert service["metadata"]["name"] == "masenet-api", "the ServiceMonitor's job is the Service's name"
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()

    worker = find(overlay, "Deployment", "masenet-worker")
    worker_ports = {port["name"]: port["containerPort"] for port in container(worker, "worker")["ports"]}
    pod_monitor = find(overlay, "PodMonitor", "masenet-worker")["spec"]
    (pod_endpoint,) = pod_monitor["podMetricsEndpoints"]
    env = container_env(overlay, worker, "worker")
    assert worker_ports[pod_endpoint["port"]] == int(env["MASENET_WORKER_METRICS_PORT"]) == jobs["masenet-worker"]
    labels = worker["spec"]["template"]["metadata"]["labels"]
    assert labels[pod_monitor["jobLabel"]] == "masenet-worker"
    assert pod_monitor["selector"]["matchLabels"].items() <= labels.items()
    probe = "\n".join(container(worker, "worker")["readinessProbe"]["exec"]["command"])
    assert f"127.0.0.1:{jobs['masenet-worker']}/metrics" in probe and "masenet_worker_up 1.0" in probe


def test_alert_rules_select_the_kubernetes_job_names() -> None:
    rules = find("gpu", "PrometheusRule", "masenet")["spec"]["groups"]
    for job in prometheus_jobs():
        for group in rules:
            for rule in group["rules"]:
                for pattern in re.findall(r'job=~"([^"]+)"', str(rule["expr"])):
                    assert re.fullmatch(pattern, job), f"{rule['alert']} does not select {job}"


def test_generated_copies_are_in_sync_with_their_sources() -> None:
    result = subprocess.run(
        [sys.executable, str(K8S / "sync.py"), "--check"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    rule = find("gpu", "PrometheusRule", "masenet")
    assert rule["spec"] == yaml.safe_load((PROMETHEUS / "alerts.yml").read_text(encoding="utf-8"))
    dashboard = find("gpu", "ConfigMap", "masenet-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"]["masenet.json"] == DASHBOARD.read_text(encoding="utf-8")
    # Under the 256 KiB that client-side `kubectl apply` can keep in its last-applied annotation.
    assert len(json.dumps(dashboard)) < 256 * 1024


def test_dashboard_metrics_are_the_agreed_ones() -> None:
    # CONTRACT_METRICS is checked against the code by test_monitoring.py.
    dashboard = json.loads(find("gpu", "ConfigMap", "masenet-dashboard")["data"]["masenet.json"])
    exprs = [target["expr"] for panel in _panels(dashboard) for target in panel.get("targets", [])]
    used = set().union(*(metric_names(expr) for expr in exprs))
    assert used and used <= CONTRACT_METRICS, used - CONTRACT_METRICS


def _panels(dashboard: dict) -> list[dict]:
    panels = []
    for panel in dashboard["panels"]:
        panels.extend(panel.get("panels", []))
        panels.append(panel)
    return panels


def test_render_is_the_same_for_every_overlay_but_their_differences() -> None:
    # The API is identical everywhere; only the workers, Redis and KEDA's Redis differ between overlays.
    apis = [find(overlay, "Deployment", "masenet-api") for overlay in OVERLAYS]
    assert all(api == apis[0] for api in apis)
    assert len({len(render(overlay)) for overlay in ("gpu", "cpu")}) == 1
