"""What the checks of deploy/k8s share: the overlays, rendering them with `kubectl kustomize`, and lookups.

No cluster is involved: the manifests are rendered here and validated offline (kubernetes-validate for core
objects, the JSON schemas in deploy/k8s/schemas for the CRDs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SCHEMAS = K8S / "schemas"
OVERLAYS = ("gpu", "cpu", "external-redis")
KUBERNETES_VERSION = "1.30"  # the version core objects are validated against (kubernetes-validate)
NAMESPACE = "masenet"

# Kinds validated against deploy/k8s/schemas (apiVersion -> file prefix).
CRD_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}

# Environment variables set in the manifests that are not MASENet settings, and why.
KNOWN_OTHER_ENV = {
    "OMP_NUM_THREADS": "torch's CPU thread pool, sized to the CPU worker's limit",
    "REDIS_PASSWORD": "the Redis container's requirepass (redis.yaml)",
}


def kubectl() -> str:
    """The kubectl binary (KUBECTL overrides); fails, saying how to install it, when there is none."""
    path = os.environ.get("KUBECTL") or shutil.which("kubectl")
    assert path, (
        "kubectl is not installed: the Kubernetes manifests are rendered with `kubectl kustomize`. Install it "
        "(Debian: apt-get install -y kubernetes-client, or a kubectl release binary)"
    )
    return path


@cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    """The objects `kubectl kustomize deploy/k8s/overlays/<overlay>` renders."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {overlay} failed:\n{result.stderr}"
    return tuple(document for document in yaml.safe_load_all(result.stdout) if document)


def find(overlay: str, kind: str, name: str) -> dict[str, Any]:
    """The rendered object of that kind whose name is `name` (generated names: their hash suffix ignored)."""
    matches = [
        document
        for document in render(overlay)
        if document["kind"] == kind
        and (document["metadata"]["name"] == name or document["metadata"]["name"].startswith(f"{name}-"))
    ]
    assert len(matches) == 1, f"{overlay}: expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def of_kind(overlay: str, kind: str) -> list[dict[str, Any]]:
    return [document for document in render(overlay) if document["kind"] == kind]


def pod_spec(document: dict[str, Any]) -> dict[str, Any]:
    return document["spec"]["template"]["spec"]


def workloads(overlay: str) -> list[dict[str, Any]]:
    return [document for document in render(overlay) if document["kind"] in {"Deployment", "StatefulSet"}]


def container(document: dict[str, Any], name: str) -> dict[str, Any]:
    (match,) = [item for item in pod_spec(document)["containers"] if item["name"] == name]
    return match


def container_env(overlay: str, document: dict[str, Any], name: str) -> dict[str, Any]:
    """Every variable a container gets: its `env` (value or valueFrom) and its ConfigMaps' keys (envFrom)."""
    item = container(document, name)
    env: dict[str, Any] = {}
    for source in item.get("envFrom", []):
        config = find(overlay, "ConfigMap", source["configMapRef"]["name"])
        env.update(config["data"])
    for variable in item.get("env", []):
        env[variable["name"]] = variable.get("value", variable.get("valueFrom"))
    return env


@cache
def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    group, version = api_version.split("/")
    return json.loads((SCHEMAS / f"{group}_{version}_{kind}.json").read_text(encoding="utf-8"))


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))
