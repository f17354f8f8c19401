"""`masenet bench service`: drive POST /detect at several concurrencies and compare with the bare model.

For each concurrency, N requests (one frame each) go through `service.client.AsyncClient`; the table shows
throughput, latency percentiles and the mean batch size the worker formed (from its `masenet_batch_size`
histogram, read before and after). The bare model's throughput is the eager torch forward of the same network on
the same frames, resized as the service resizes them, MAX_BATCH frames a pass, in this process (BareModel),
measured while the service is up but idle: before the first level, between
levels and after the last, so the two never share the CPU. Each level is compared with the mean of the bare
runs just before and just after it, which keeps a machine whose speed drifts over minutes (shared or
thermally limited cores) from skewing the ratio.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class LevelResult:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    mean_batch: float | None
    bare: float | None = None  # bare model img/s around this level (mean of the runs before and after it)

    @property
    def throughput(self) -> float:
        return (self.requests - self.errors) / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        return percentile(self.latencies_ms, q / 100.0)


def percentile(values: list[float], fraction: float) -> float:
    """The `fraction` (0 to 1) percentile of `values`; nan when there are none."""
    return float(np.percentile(values, fraction * 100.0)) if values else float("nan")


def match_worker_cpu_policy() -> None:
    """Run the bare model under the worker's OpenMP wait policy (see worker.runtime), so both compare fairly."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class BareModel:
    """The reference the service is held to: the network as built (eager float32, no BatchNorm folding, under
    `torch.no_grad`), one pass per frame, `batch` frames a pass, on the frames resized as the service resizes them
    (the checkpoint's pixel scale, or `imgsz`). Forward passes only: no decoding, NMS or image I/O."""

    def __init__(
        self, frames: list[np.ndarray], weights: str | None, device: str, batch: int, imgsz: int | None
    ) -> None:
        match_worker_cpu_policy()
        import torch

        from model.checkpoint import default_weights_path, load_checkpoint
        from model.detector import resolve_device
        from model.imaging import to_rgb8
        from model.ops import letterbox

        path = weights or default_weights_path()
        self.device = resolve_device(device)
        self.model, meta = load_checkpoint(path, device=self.device)
        if imgsz:
            rule: dict[str, float] = {"imgsz": imgsz}
        elif meta.pixel_scale is not None:
            rule = {"pixel_scale": meta.pixel_scale}
        else:
            rule = {"imgsz": meta.imgsz}
        chunk = [frames[index % len(frames)] for index in range(batch)]
        tensors = [torch.from_numpy(to_rgb8(frame).copy()).permute(2, 0, 1).to(self.device) for frame in chunk]
        self.batch, _ = letterbox(tensors, stride=max(self.model.strides), **rule)
        self.rule = rule
        for _ in range(2):
            self._forward()

    def describe(self) -> str:
        rule = ", ".join(f"{key} {value}" for key, value in self.rule.items())
        height, width = self.batch.shape[2:]
        return f"eager torch forward, {self.batch.shape[0]} frames a pass at {width}x{height} ({rule})"

    def _forward(self) -> None:
        import torch

        with torch.no_grad():
            self.model(self.batch)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def throughput(self, seconds: float = 5.0) -> float:
        """Frames per second over about `seconds` (at least three passes)."""
        frames = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds or frames < 3 * self.batch.shape[0]:
            self._forward()
            frames += self.batch.shape[0]
        return frames / (time.perf_counter() - start)


def read_batch_histogram(metrics_url: str | None) -> tuple[float, float] | None:
    """(sum, count) of masenet_batch_size from a worker's /metrics, or None when unreadable."""
    if not metrics_url:
        return None
    import httpx

    try:
        text = httpx.get(metrics_url, timeout=5.0).text
    except httpx.HTTPError:
        return None
    values = {}
    for name in ("sum", "count"):
        match = re.search(rf"^masenet_batch_size_{name}\s+([0-9.eE+-]+)$", text, re.MULTILINE)
        if match is None:
            return None
        values[name] = float(match.group(1))
    return values["sum"], values["count"]


async def drive(
    url: str, payloads: list[bytes], concurrency: int, requests: int, imgsz: int | None, headers: dict[str, str]
) -> tuple[float, list[float], int]:
    """Send `requests` single-image requests with `concurrency` in flight; (seconds, latencies ms, errors).

    No retries: a refusal (503 queue full, 429) counts as an error, as does a request that got no answer."""
    import httpx

    from service.client import ApiError, AsyncClient

    latencies: list[float] = []
    errors = 0
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client_loop(client: AsyncClient) -> None:
        nonlocal errors
        for index in counter:
            image = (f"frame{index}.png", payloads[index % len(payloads)])
            start = time.perf_counter()
            try:
                await client.detect(image, imgsz=imgsz or None)
            except (ApiError, httpx.HTTPError):
                errors += 1
            else:
                latencies.append((time.perf_counter() - start) * 1000.0)

    async with AsyncClient(url, timeout=120.0, retries=0, limits=limits) as client:
        client.http.headers.update(headers)  # the bearer key, as `masenet bench service --api-key` builds it
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    return seconds, latencies, errors


def run_levels(
    url: str,
    payloads: list[bytes],
    levels: list[int],
    requests: int,
    imgsz: int | None,
    metrics_url: str | None,
    headers: dict[str, str],
    bare: Callable[[], float] | None = None,
) -> tuple[list[LevelResult], list[float]]:
    """Every level in turn, with a bare-model run (`bare`) before the first and after each; (results, bare runs)."""
    asyncio.run(drive(url, payloads, 2, max(4, len(payloads) // 2), imgsz, headers))  # warm-up
    bare_runs = [bare()] if bare else []
    results = []
    for concurrency in levels:
        before = read_batch_histogram(metrics_url)
        seconds, latencies, errors = asyncio.run(drive(url, payloads, concurrency, requests, imgsz, headers))
        after = read_batch_histogram(metrics_url)
        mean_batch = None
        if before is not None and after is not None and after[1] > before[1]:
            mean_batch = (after[0] - before[0]) / (after[1] - before[1])
        result = LevelResult(concurrency, requests, errors, seconds, latencies, mean_batch)
        if bare:
            bare_runs.append(bare())
            result.bare = (bare_runs[-2] + bare_runs[-1]) / 2.0
        results.append(result)
    return results, bare_runs


def format_table(results: list[LevelResult], max_batch: int) -> str:
    header = (
        f"{'concurrency':>11} {'requests':>8} {'errors':>6} {'img/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
        f"{'mean batch':>10} {'bare img/s':>10} {'vs bare':>8}"
    )
    lines = [header, "-" * len(header)]
    for result in results:
        ratio = f"{result.throughput / result.bare:.2f}x" if result.bare else "-"
        bare = f"{result.bare:.1f}" if result.bare else "-"
        batch = f"{result.mean_batch:.2f}" if result.mean_batch is not None else "-"
        lines.append(
            f"{result.concurrency:>11} {result.requests:>8} {result.errors:>6} {result.throughput:>8.1f} "
            f"{result.percentile(50):>8.1f} {result.percentile(95):>8.1f} {result.percentile(99):>8.1f} "
            f"{batch:>10} {bare:>10} {ratio:>8}"
        )
    if any(result.bare for result in results):
        lines.append(
            f"bare img/s: the eager torch forward, {max_batch} frames a pass at the same scale, one view, in this "
            "process, mean of the runs just before and after the level (service idle)"
        )
    return "\n".join(lines)
