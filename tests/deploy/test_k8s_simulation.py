"""deploy/k8s/simulate.py: the queue model's invariants, a hand-checked case, and its values against the manifests."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from types import ModuleType

import pytest

from tests.deploy.k8s_files import K8S, find


def load_simulate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("masenet_k8s_simulate", K8S / "simulate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


simulate = load_simulate()


def test_weighted_percentile_by_hand() -> None:
    assert simulate.weighted_percentile([(0.0, 90.0), (5.0, 10.0)], 0.95) == 5.0
    assert simulate.weighted_percentile([(0.0, 96.0), (5.0, 4.0)], 0.95) == 0.0
    assert simulate.weighted_percentile([(3.0, 1.0), (1.0, 1.0), (2.0, 1.0)], 0.5) == 2.0
    assert simulate.weighted_percentile([], 0.95) == 0.0


def test_a_tiny_queue_by_hand() -> None:
    # Three images arrive in second 0; one worker takes one a second: they wait 0, 1 and 2 s.
    scaling = simulate.Scaling(throughput=1.0, startup_s=0, list_length=100)
    result = simulate.simulate([3.0, 0.0, 0.0, 0.0], scaling, fixed_workers=1)
    assert sorted(result.waits) == [(0.0, 1.0), (1.0, 1.0), (2.0, 1.0)]
    assert result.wait_percentile(0.95) == 2.0 and result.wait_percentile(0.5) == 1.0
    assert result.queue == [2.0, 1.0, 0.0, 0.0]
    assert result.rejected == 0.0


def test_the_queue_limit_refuses_what_does_not_fit() -> None:
    scaling = simulate.Scaling(throughput=1.0, startup_s=0, list_length=100, max_queue=5)
    result = simulate.simulate([10.0] + [0.0] * 9, scaling, fixed_workers=1)
    assert result.rejected == 5.0
    assert sum(images for _, images in result.waits) == 5.0


@pytest.mark.parametrize("scaling", [simulate.GPU, simulate.CPU])
def test_more_workers_never_wait_longer(scaling) -> None:
    rates = simulate.Traffic(base_rate=scaling.throughput * 0.5, burst_s=120, duration_s=600).rates()
    previous = None
    for workers in range(1, 8):
        result = simulate.simulate(rates, replace(scaling, max_queue=10**9), fixed_workers=workers)
        summary = (result.wait_percentile(0.95), result.wait_percentile(1.0), sum(w * n for w, n in result.waits))
        if previous is not None:
            assert all(now <= before for now, before in zip(summary, previous, strict=True)), (workers, summary)
        previous = summary


@pytest.mark.parametrize("scaling", [simulate.GPU, simulate.CPU])
def test_no_burst_no_scale_up(scaling) -> None:
    rates = simulate.Traffic(base_rate=scaling.throughput * 0.8, burst_factor=1.0).rates()
    result = simulate.simulate(rates, scaling)
    assert set(result.replicas) == {scaling.min_replicas}
    assert result.wait_percentile(1.0) == 0.0 and result.rejected == 0.0


def test_a_burst_scales_up_within_bounds_and_back_down() -> None:
    for scaling, traffic in ((simulate.GPU, simulate.GPU_TRAFFIC), (simulate.CPU, simulate.CPU_TRAFFIC)):
        result = simulate.simulate(traffic.rates(), scaling)
        assert scaling.min_replicas < max(result.replicas) <= scaling.max_replicas
        assert all(ready <= asked or asked < before for ready, asked, before in _steps(result))
        assert result.replicas[traffic.burst_start_s - 1] == scaling.min_replicas


def _steps(result):
    return zip(result.ready, result.replicas, [result.replicas[0], *result.replicas[:-1]], strict=True)


def test_desired_replicas_follows_keda_average_value() -> None:
    scaling = simulate.Scaling(throughput=1.0, startup_s=0, list_length=64, max_replicas=8)
    assert simulate.desired_replicas(0, 3, scaling) == 1
    assert simulate.desired_replicas(65, 1, scaling) == 1  # within the 10% tolerance
    assert simulate.desired_replicas(80, 1, scaling) == 2
    assert simulate.desired_replicas(130, 2, scaling) == 2  # within the 10% tolerance
    assert simulate.desired_replicas(10_000, 1, scaling) == 8


@pytest.mark.parametrize(("overlay", "scaling"), [("gpu", simulate.GPU), ("cpu", simulate.CPU)])
def test_the_model_uses_the_manifests_values(overlay: str, scaling) -> None:
    spec = find(overlay, "ScaledObject", "masenet-worker")["spec"]
    (images,) = [trigger for trigger in spec["triggers"] if trigger["metadata"]["listName"].endswith(":images")]
    assert int(images["metadata"]["listLength"]) == scaling.list_length
    assert spec["minReplicaCount"] == scaling.min_replicas and spec["maxReplicaCount"] == scaling.max_replicas
    assert max(spec["pollingInterval"], 15) == scaling.poll_s
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == scaling.scale_down_window_s
    assert behavior["scaleDown"]["policies"] == [
        {"type": "Pods", "value": scaling.scale_down_pods_per_minute, "periodSeconds": 60}
    ]
    up = {policy["type"]: policy["value"] for policy in behavior["scaleUp"]["policies"]}
    assert up == {"Pods": scaling.scale_up_pods, "Percent": 100}
    config = find(overlay, "ConfigMap", "masenet-config")["data"]
    assert int(config["MASENET_MAX_QUEUE"]) == scaling.max_queue


def test_the_readme_shows_the_current_table() -> None:
    readme = (K8S.parent / "README.md").read_text(encoding="utf-8")
    assert simulate.table() in readme
    assert "k8s/scaling.png" in readme
