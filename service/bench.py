"""`masenet bench service`: drive POST /detect at several concurrencies and compare with the bare model.

For each concurrency, N requests (one frame each) go through an asyncio httpx client; the table shows
throughput, latency percentiles and the mean batch size the worker formed (from its `masenet_batch_size`
histogram, read before and after). The bare model's throughput is `Detector.detect` on the same frames at
MAX_BATCH, in this process, measured before the service starts and after it stops (so the two never
share the CPU); the table compares with the mean of both runs.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import sys
import time
from dataclasses import dataclass

import numpy as np

SYNTH_FRAMES = 16


@dataclass
class LevelResult:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    mean_batch: float | None

    @property
    def throughput(self) -> float:
        return (self.requests - self.errors) / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        return float(np.percentile(np.asarray(self.latencies_ms), q))


def synthetic_frames(width: int, height: int, count: int = SYNTH_FRAMES, seed: int = 0) -> list[np.ndarray]:
    """Grey infrared-like frames: smooth background, sensor noise and a few small bright targets."""
    rng = np.random.default_rng(seed)
    frames = []
    rows, cols = np.mgrid[0:height, 0:width]
    for _ in range(count):
        frame = 60.0 + 30.0 * np.sin(cols / max(width, 1) * 3.0 + rng.uniform(0, 6)) + rng.normal(0, 4, (height, width))
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            frame += 120.0 * np.exp(-((rows - cy) ** 2 + (cols - cx) ** 2) / (2 * rng.uniform(1.0, 2.5) ** 2))
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return frames


def encode_png(frame: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()


def match_worker_cpu_policy() -> None:
    """Run the bare model under the worker's OpenMP wait policy (see worker.runtime), so both compare fairly."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def bare_model_throughput(
    frames: list[np.ndarray], weights: str | None, device: str, batch: int, imgsz: int, seconds: float = 5.0
) -> float:
    """Images per second of Detector.detect on `batch` frames at a time (after a warm-up)."""
    match_worker_cpu_policy()
    from model.detector import Detector

    detector = Detector(checkpoint=weights, device=device, imgsz=imgsz)
    chunk = [frames[index % len(frames)] for index in range(batch)]
    for _ in range(2):
        detector.detect(chunk, imgsz=imgsz)
    images = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or images < 3 * batch:
        detector.detect(chunk, imgsz=imgsz)
        images += batch
    return images / (time.perf_counter() - start)


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
    url: str, payloads: list[bytes], concurrency: int, requests: int, imgsz: int, headers: dict[str, str]
) -> tuple[float, list[float], int]:
    """Send `requests` single-image requests with `concurrency` in flight; (seconds, latencies ms, errors)."""
    import httpx

    latencies: list[float] = []
    errors = 0
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal errors
        for index in counter:
            files = [("image", (f"frame{index}.png", payloads[index % len(payloads)], "image/png"))]
            start = time.perf_counter()
            try:
                response = await client.post(f"{url}/detect", params={"imgsz": imgsz}, files=files)
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append((time.perf_counter() - start) * 1000.0)
            else:
                errors += 1

    async with httpx.AsyncClient(timeout=120.0, limits=limits, headers=headers) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    return seconds, latencies, errors


def run_levels(
    url: str,
    payloads: list[bytes],
    levels: list[int],
    requests: int,
    imgsz: int,
    metrics_url: str | None,
    headers: dict[str, str],
) -> list[LevelResult]:
    asyncio.run(drive(url, payloads, 2, max(4, len(payloads) // 2), imgsz, headers))  # warm-up
    results = []
    for concurrency in levels:
        before = read_batch_histogram(metrics_url)
        seconds, latencies, errors = asyncio.run(drive(url, payloads, concurrency, requests, imgsz, headers))
        after = read_batch_histogram(metrics_url)
        mean_batch = None
        if before is not None and after is not None and after[1] > before[1]:
            mean_batch = (after[0] - before[0]) / (after[1] - before[1])
        results.append(LevelResult(concurrency, requests, errors, seconds, latencies, mean_batch))
    return results


def format_table(results: list[LevelResult], bare_throughput: float | None, max_batch: int) -> str:
    header = (
        f"{'concurrency':>11} {'requests':>8} {'errors':>6} {'img/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
        f"{'mean batch':>10} {'vs bare':>8}"
    )
    lines = [header, "-" * len(header)]
    for result in results:
        ratio = f"{result.throughput / bare_throughput:.2f}x" if bare_throughput else "-"
        batch = f"{result.mean_batch:.2f}" if result.mean_batch is not None else "-"
        lines.append(
            f"{result.concurrency:>11} {result.requests:>8} {result.errors:>6} {result.throughput:>8.1f} "
            f"{result.percentile(50):>8.1f} {result.percentile(95):>8.1f} {result.percentile(99):>8.1f} "
            f"{batch:>10} {ratio:>8}"
        )
    if bare_throughput:
        lines.append(f"bare model (Detector.detect, batch {max_batch}, in-process): {bare_throughput:.1f} img/s (mean)")
    return "\n".join(lines)
