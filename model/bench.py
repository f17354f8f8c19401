"""Forward-pass benchmark: the model as built versus the optimised inference path of `Detector`.

Eager baseline: the unfused float32 model in eval mode, contiguous input, under `torch.no_grad`, which is
what a straightforward script does. Optimised: the same weights through `Detector` (BatchNorm folded,
`torch.inference_mode`, the device's preferred memory format, bfloat16 with `half`, optionally torch.compile).
Both time the network forward only, on random input of the given size; warm-up iterations are excluded
and the median of the timed iterations is reported. The two paths alternate iteration by iteration, so a
busy machine slows both alike instead of skewing the ratio. With `tta` both paths do that test-time
augmentation (each frame's flipped views in one forward of two or four times the batch, head maps merged), so
comparing a run with and without it gives its cost; throughput still counts frames.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from model.detector import Detector, resolve_device
from model.ops import merge_tta, tta_batch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchRow:
    """One (size, batch) measurement; times are per batch, throughput in images per second."""

    width: int
    height: int
    batch: int
    eager_ms: float
    optimised_ms: float

    @property
    def eager_images_per_second(self) -> float:
        return self.batch * 1000.0 / self.eager_ms

    @property
    def optimised_images_per_second(self) -> float:
        return self.batch * 1000.0 / self.optimised_ms

    @property
    def speedup(self) -> float:
        return self.eager_ms / self.optimised_ms


def parse_size(text: str) -> tuple[int, int]:
    """'640x512' (width x height) to (640, 512)."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError as exc:
        raise ValueError(f"size {text!r} is not WIDTHxHEIGHT, e.g. 640x512") from exc
    if width <= 0 or height <= 0:
        raise ValueError(f"size {text!r} must be positive")
    return width, height


def _paired_median_ms(
    runs: Sequence[Callable[[], object]], device: torch.device, iters: int, warmup: int
) -> list[float]:
    """Median milliseconds per run; the runs alternate each iteration so both see the same machine load."""

    def synchronise() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        for run in runs:
            run()
    synchronise()
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(iters):
        for run, samples in zip(runs, times, strict=True):
            start = time.perf_counter()
            run()
            synchronise()
            samples.append((time.perf_counter() - start) * 1000.0)
    return [statistics.median(samples) for samples in times]


def bench_model(
    scale: str = "n",
    weights: str | Path | None = None,
    device: str = "auto",
    batch_sizes: Sequence[int] = (1, 8, 32),
    sizes: Sequence[tuple[int, int]] = ((640, 512), (320, 256)),
    iters: int = 10,
    warmup: int = 2,
    half: bool = False,
    compile: bool = False,
    channels_last: bool = True,
    tta: str | bool = "off",
    progress: Callable[[str], None] | None = None,
) -> list[BenchRow]:
    """Time eager versus optimised forwards for every (size, batch); `weights=None` uses a random-init model."""
    from model.checkpoint import load_checkpoint
    from model.masenet import build_model

    target = resolve_device(device)
    if weights is not None:
        eager, _ = load_checkpoint(weights, device=target)
    else:
        eager = build_model(scale=scale).to(target).eval()
    optimised = Detector(
        model=eager, device=str(target), half=half, compile=compile, fuse=True, channels_last=channels_last, tta=tta
    )
    reg_max, views = optimised.reg_max, optimised.views
    rows = []
    generator = torch.Generator(device="cpu").manual_seed(0)
    for width, height in sizes:
        for batch in batch_sizes:
            if progress:
                progress(f"{width}x{height} batch {batch}: {warmup} warm-up + {iters} timed iterations of each path")
            images = torch.rand(batch, 3, height, width, generator=generator).to(target)

            def run_eager(images: torch.Tensor = images) -> object:
                with torch.no_grad():
                    return merge_tta(eager(tta_batch(images, views)), views, reg_max)

            prepared = images.to(optimised.dtype)
            if optimised.channels_last:
                prepared = prepared.contiguous(memory_format=torch.channels_last)

            def run_optimised(prepared: torch.Tensor = prepared) -> object:
                with torch.inference_mode():
                    return merge_tta(optimised.model(tta_batch(prepared, views)), views, reg_max)

            eager_ms, optimised_ms = _paired_median_ms((run_eager, run_optimised), target, iters, warmup)
            rows.append(BenchRow(width, height, batch, eager_ms, optimised_ms))
            logger.debug("%s", rows[-1])
    return rows


def format_table(rows: Sequence[BenchRow]) -> str:
    """A plain-text table of the rows."""
    columns = (("size", 9), ("batch", 5), ("eager ms", 10), ("eager img/s", 12), ("opt ms", 10), ("opt img/s", 10))
    header = " ".join(f"{name:>{width}}" for name, width in columns) + f" {'speed-up':>8}"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{f'{row.width}x{row.height}':>9} {row.batch:>5} {row.eager_ms:>10.1f}"
            f" {row.eager_images_per_second:>12.1f} {row.optimised_ms:>10.1f}"
            f" {row.optimised_images_per_second:>10.1f} {row.speedup:>7.2f}x"
        )
    return "\n".join(lines)
