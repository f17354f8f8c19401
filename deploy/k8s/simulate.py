"""A deterministic model of the image queue under KEDA's scaling, for a burst of traffic.

    python deploy/k8s/simulate.py                         # the results table (markdown)
    python deploy/k8s/simulate.py --plot deploy/k8s/scaling.png

Discrete time, one-second steps, a fluid FIFO queue:
- images arrive at `rate(t)` a second; an arrival that would take the queue past MASENET_MAX_QUEUE is refused
  (the API answers 503);
- every ready worker serves `throughput` images a second, oldest first; an image's wait is the time from its
  arrival to the step in which a worker takes it;
- every `poll_s` seconds the HPA that KEDA drives computes ceil(queue / listLength) (left unchanged within its
  10% tolerance), clamped to [min, max]; scaling up is immediate but at most max(+4 pods, +100%) per poll;
  scaling down takes the highest recommendation of the last `scale_down_window_s` seconds and at most one pod
  a minute (the ScaledObject's behavior in base/keda.yaml);
- a new pod serves `startup_s` seconds after it is asked for (scheduling, image already on the node, model
  load); a removed pod stops serving at once (its warm shutdown finishes work it already holds).

Not modelled: batching delay, the jobs a worker has taken ahead of the list (so KEDA sees a slightly shorter
list), video chunks, image pulls onto fresh nodes and cluster autoscaling (minutes more per new node).
"""

from __future__ import annotations

import argparse
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

HPA_TOLERANCE = 0.1


@dataclass(frozen=True)
class Traffic:
    """A baseline arrival rate with one burst of `burst_factor` times it."""

    base_rate: float  # images per second
    burst_factor: float = 10.0
    burst_start_s: int = 120
    burst_s: int = 300
    duration_s: int = 1200

    def rates(self) -> list[float]:
        burst = range(self.burst_start_s, self.burst_start_s + self.burst_s)
        return [self.base_rate * (self.burst_factor if t in burst else 1.0) for t in range(self.duration_s)]


@dataclass(frozen=True)
class Scaling:
    """Per-worker throughput, start-up time and the ScaledObject's values."""

    throughput: float  # images per second one worker serves
    startup_s: int  # from the scale-up decision to serving
    list_length: int  # KEDA listLength of the image queue
    min_replicas: int = 1
    max_replicas: int = 8
    poll_s: int = 15  # max(KEDA pollingInterval, the HPA's 15 s sync period)
    scale_down_window_s: int = 300
    scale_down_pods_per_minute: int = 1
    scale_up_pods: int = 4  # per poll, or +100%, whichever is more
    max_queue: int = 1024  # MASENET_MAX_QUEUE


@dataclass
class Result:
    replicas: list[int] = field(default_factory=list)  # asked for, per second
    ready: list[int] = field(default_factory=list)  # serving, per second
    queue: list[float] = field(default_factory=list)  # images waiting at the end of each second
    waits: list[tuple[float, float]] = field(default_factory=list)  # (wait in seconds, images)
    rejected: float = 0.0

    def wait_percentile(self, quantile: float) -> float:
        return weighted_percentile(self.waits, quantile)

    @property
    def worker_minutes(self) -> float:
        return sum(self.replicas) / 60.0


def weighted_percentile(samples: Sequence[tuple[float, float]], quantile: float) -> float:
    """The smallest value whose cumulative weight reaches `quantile` of the total (0 for no samples)."""
    ordered = sorted((value, weight) for value, weight in samples if weight > 0)
    total = sum(weight for _, weight in ordered)
    if total == 0:
        return 0.0
    cumulative = 0.0
    for value, weight in ordered:
        cumulative += weight
        if cumulative >= quantile * total - 1e-9:
            return value
    return ordered[-1][0]


def desired_replicas(queue_length: float, current: int, scaling: Scaling) -> int:
    """What KEDA's HPA asks for from the list length (AverageValue target = listLength), before rate limits."""
    if current > 0 and abs(queue_length / (scaling.list_length * current) - 1.0) <= HPA_TOLERANCE:
        return current
    wanted = math.ceil(queue_length / scaling.list_length - 1e-9)
    return max(scaling.min_replicas, min(scaling.max_replicas, wanted))


def simulate(rates: Sequence[float], scaling: Scaling, fixed_workers: int | None = None) -> Result:
    """Run the model over `rates` (images per second, one entry per second); see the module docstring.

    With `fixed_workers` the autoscaler is off and that many workers serve from the start.
    """
    result = Result()
    cohorts: deque[list[float]] = deque()  # [arrival second, images left]
    queued = 0.0
    replicas = fixed_workers if fixed_workers is not None else scaling.min_replicas
    ready_at = [0] * replicas  # the second each asked-for pod starts serving
    recommendations: deque[tuple[int, int]] = deque()  # (second, recommendation) for the scale-down window
    last_scale_down = -(10**9)
    for second, rate in enumerate(rates):
        accepted = min(rate, max(0.0, scaling.max_queue - queued))
        result.rejected += rate - accepted
        if accepted > 0:
            cohorts.append([second, accepted])
            queued += accepted
        ready = sum(1 for at in ready_at if at <= second)
        capacity = ready * scaling.throughput
        while capacity > 1e-12 and cohorts:
            cohort = cohorts[0]
            taken = min(capacity, cohort[1])
            result.waits.append((float(second - cohort[0]), taken))
            cohort[1] -= taken
            capacity -= taken
            queued -= taken
            if cohort[1] <= 1e-12:
                cohorts.popleft()
        queued = max(queued, 0.0)
        if fixed_workers is None and second % scaling.poll_s == scaling.poll_s - 1:
            replicas, last_scale_down = _autoscale(
                second, queued, replicas, ready_at, recommendations, last_scale_down, scaling
            )
        result.replicas.append(len(ready_at))
        result.ready.append(ready)
        result.queue.append(queued)
    return result


def _autoscale(
    second: int,
    queued: float,
    replicas: int,
    ready_at: list[int],
    recommendations: deque[tuple[int, int]],
    last_scale_down: int,
    scaling: Scaling,
) -> tuple[int, int]:
    recommendation = desired_replicas(queued, replicas, scaling)
    recommendations.append((second, recommendation))
    while recommendations and recommendations[0][0] <= second - scaling.scale_down_window_s:
        recommendations.popleft()
    if recommendation > replicas:
        target = min(recommendation, max(replicas + scaling.scale_up_pods, 2 * replicas))
        ready_at.extend([second + 1 + scaling.startup_s] * (target - replicas))
        return target, last_scale_down
    stable = max(value for _, value in recommendations)
    if stable < replicas and second - last_scale_down >= 60:
        target = max(stable, replicas - scaling.scale_down_pods_per_minute)
        ready_at.sort()
        del ready_at[target:]  # the newest (not yet ready first) go
        return target, second
    return replicas, last_scale_down


# ----------------------------------------------------------------------------------------------- scenarios

# GPU throughput is an ASSUMPTION: no GPU was available where this project is developed. 200 images/s of
# 640x512 per worker (batches of 32 at 960x768) is a guess for MASENet-n in float32 on one data-centre GPU.
GPU = Scaling(throughput=200.0, startup_s=60, list_length=64, max_replicas=8)
# CPU throughput is MEASURED: `masenet bench service --size 640x512`, README "Benchmarks": 4.1 images/s on
# 2 cores with OpenVINO (the CPU overlay's worker has 2 cores).
CPU = Scaling(throughput=4.1, startup_s=30, list_length=8, max_replicas=16)
GPU_TRAFFIC = Traffic(base_rate=40.0)
CPU_TRAFFIC = Traffic(base_rate=2.0)


def scenarios() -> list[tuple[str, Scaling, Traffic, int | None]]:
    return [
        ("GPU, chosen values", GPU, GPU_TRAFFIC, None),
        ("GPU, minReplicaCount 2", replace(GPU, min_replicas=2), GPU_TRAFFIC, None),
        ("GPU, MASENET_MAX_QUEUE 16384", replace(GPU, max_queue=16384), GPU_TRAFFIC, None),
        ("GPU, 1 worker, no autoscaling", GPU, GPU_TRAFFIC, 1),
        ("CPU, chosen values", CPU, CPU_TRAFFIC, None),
        ("CPU, 1 worker, no autoscaling", CPU, CPU_TRAFFIC, 1),
    ]


def table() -> str:
    lines = [
        "| scenario | traffic (img/s) | workers (min / peak) | p95 wait s | max wait s | refused (503) "
        "| worker-minutes |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, scaling, traffic, fixed in scenarios():
        result = simulate(traffic.rates(), scaling, fixed)
        peak_rate = traffic.base_rate * traffic.burst_factor
        lines.append(
            f"| {name} | {traffic.base_rate:g} -> {peak_rate:g} | {min(result.replicas)} / {max(result.replicas)} | "
            f"{result.wait_percentile(0.95):.0f} | {result.wait_percentile(1.0):.0f} | {result.rejected:,.0f} | "
            f"{result.worker_minutes:.0f} |"
        )
    return "\n".join(lines)


def plot(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(3, 2, figsize=(12, 9), sharex=True)
    for column, (title, scaling, traffic) in enumerate(
        [
            ("GPU workers (assumed 200 img/s each)", GPU, GPU_TRAFFIC),
            ("CPU workers (measured 4.1 img/s each)", CPU, CPU_TRAFFIC),
        ]
    ):
        rates = traffic.rates()
        result = simulate(rates, scaling)
        minutes = [second / 60 for second in range(len(rates))]
        top, middle, bottom = axes[0][column], axes[1][column], axes[2][column]
        top.plot(minutes, rates, label="arrivals")
        top.plot(minutes, [ready * scaling.throughput for ready in result.ready], label="capacity of ready workers")
        top.set_ylabel("images/s")
        top.set_title(title)
        top.legend(loc="upper right")
        middle.step(minutes, result.replicas, where="post", label="replicas asked for")
        middle.step(minutes, result.ready, where="post", label="ready")
        middle.set_ylabel("workers")
        middle.legend(loc="upper right")
        bottom.plot(minutes, result.queue, label="queue (images)")
        bottom.axhline(scaling.max_queue, color="grey", linestyle=":", label="MASENET_MAX_QUEUE")
        bottom.set_ylabel("images waiting")
        bottom.set_xlabel(f"minutes (p95 wait {result.wait_percentile(0.95):.0f} s, refused {result.rejected:,.0f})")
        bottom.legend(loc="upper right")
    figure.suptitle("KEDA on the image queue: a 10x burst for 5 minutes (deploy/k8s/simulate.py)")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plot", type=Path, help="write the figure to this PNG")
    arguments = parser.parse_args(argv)
    print(table())
    if arguments.plot is not None:
        plot(arguments.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
