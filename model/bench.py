"""Forward-pass benchmark: the model as built against the inference paths of `Detector` on each runtime.

Eager baseline: the unfused float32 model in eval mode, contiguous input, under `torch.no_grad`, which is
what a straightforward script does. torch: the same weights through `Detector` (BatchNorm folded,
`torch.inference_mode`, the device's preferred memory format, bfloat16 with `half`, optionally torch.compile).
openvino and onnxruntime: the folded float32 network exported and run there (model/runtimes.py). Sizes are camera
frame sizes; each is resized by the pixel scale (the checkpoint's by default) and padded to a multiple of 32, as
the service does. Every path times the network forward only, on random input; the first call at each size is
reported on its own (it includes any per-shape preparation), warm-up iterations are excluded and the median of
the timed iterations is reported. The paths alternate iteration by iteration, so a busy machine slows all alike
instead of skewing the ratios. With `tta` every path does that test-time augmentation (each frame's flipped
views in one forward of two or four times the batch, head maps merged); throughput still counts frames.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from model.detector import Detector, resolve_device
from model.ops import TTA_VIEWS, merge_tta, tta_batch, tta_mode

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchRow:
    """One (frame size, batch) measurement; times per batch by path ("eager" first), throughput in frames/s."""

    width: int
    height: int
    input_width: int
    input_height: int
    batch: int
    times_ms: dict[str, float]
    first_ms: dict[str, float]

    def images_per_second(self, path: str) -> float:
        return self.batch * 1000.0 / self.times_ms[path]

    def speedup(self, path: str) -> float:
        """How many times faster than the eager baseline."""
        return self.times_ms["eager"] / self.times_ms[path]


def _paired_median_ms(
    runs: Sequence[Callable[[], object]], device: torch.device, iters: int, warmup: int
) -> tuple[list[float], list[float]]:
    """(first call, median) milliseconds per run; the runs alternate so all see the same machine load."""

    def synchronise() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    first = []
    for run in runs:
        start = time.perf_counter()
        run()
        synchronise()
        first.append((time.perf_counter() - start) * 1000.0)
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
    return first, [statistics.median(samples) for samples in times]


def bench_model(
    scale: str = "n",
    weights: str | Path | None = None,
    device: str = "auto",
    batch_sizes: Sequence[int] = (1, 8),
    sizes: Sequence[tuple[int, int]] = ((320, 256), (640, 512), (1280, 1024)),
    iters: int = 10,
    warmup: int = 2,
    half: bool = False,
    compile: bool = False,
    channels_last: bool = True,
    tta: str | bool = "off",
    runtimes: Sequence[str] = ("torch", "openvino", "onnxruntime"),
    pixel_scale: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[BenchRow]:
    """Time the eager forward and each runtime's for every (frame size, batch); `weights=None`: random init.

    A runtime that is not installed or cannot run on the device is left out, with a note through `progress`.
    """
    from model.checkpoint import load_checkpoint, read_metadata
    from model.masenet import build_model
    from model.runtimes import RuntimeUnavailable, resolve_runtime

    target = resolve_device(device)
    if weights is not None:
        eager, _ = load_checkpoint(weights, device=target)
        pixel_scale = pixel_scale or read_metadata(weights).pixel_scale
    else:
        eager = build_model(scale=scale).to(target).eval()
    pixel_scale = pixel_scale or 1.0
    detectors: dict[str, Detector] = {}
    for runtime in runtimes:
        try:
            resolve_runtime(runtime, target)
        except RuntimeUnavailable as exc:
            if progress:
                progress(f"left out: {exc}")
            continue
        detectors[runtime] = Detector(
            model=eager, device=str(target), half=half, compile=compile, channels_last=channels_last, tta=tta,
            runtime=runtime,
        )  # fmt: skip
    views = TTA_VIEWS[tta_mode(tta)]
    reg_max = int(eager.reg_max)
    rows = []
    generator = torch.Generator(device="cpu").manual_seed(0)
    for width, height in sizes:
        input_width, input_height = (_stride_padded(side * pixel_scale) for side in (width, height))
        for batch in batch_sizes:
            if progress:
                progress(
                    f"{width}x{height} (input {input_width}x{input_height}) batch {batch}: first call, "
                    f"{warmup} warm-up + {iters} timed iterations of {1 + len(detectors)} paths"
                )
            images = torch.rand(batch, 3, input_height, input_width, generator=generator).to(target)

            def run_eager(images: torch.Tensor = images) -> object:
                with torch.no_grad():
                    return merge_tta(eager(tta_batch(images, views)), views, reg_max)

            runs = [run_eager] + [_detector_run(detector, images, views) for detector in detectors.values()]
            first, medians = _paired_median_ms(runs, target, iters, warmup)
            paths = ["eager", *detectors]
            rows.append(
                BenchRow(
                    width, height, input_width, input_height, batch, dict(zip(paths, medians, strict=True)),
                    dict(zip(paths, first, strict=True)),
                )
            )  # fmt: skip
            logger.debug("%s", rows[-1])
    return rows


def _stride_padded(length: float, stride: int = 32) -> int:
    return math.ceil(max(1, round(length)) / stride) * stride


def _detector_run(detector: Detector, images: torch.Tensor, views: Sequence[tuple[int, ...]]) -> Callable[[], object]:
    prepared = images.to(detector.dtype)
    if detector.channels_last:
        prepared = prepared.contiguous(memory_format=torch.channels_last)

    def run() -> object:
        with torch.inference_mode():
            return merge_tta(detector.model(tta_batch(prepared, views)), views, detector.reg_max)

    return run


def format_table(rows: Sequence[BenchRow]) -> str:
    """A plain-text table: per path ms per batch, frames/s and the speed-up over eager; first calls below."""
    paths = list(rows[0].times_ms) if rows else []
    header = f"{'frame':>9} {'input':>9} {'batch':>5}" + "".join(f" {path + ' ms':>14} {'img/s':>7}" for path in paths)
    header += "".join(f" {'x ' + path:>14}" for path in paths[1:])
    lines = [header, "-" * len(header)]
    for row in rows:
        line = f"{f'{row.width}x{row.height}':>9} {f'{row.input_width}x{row.input_height}':>9} {row.batch:>5}"
        line += "".join(f" {row.times_ms[path]:>14.1f} {row.images_per_second(path):>7.1f}" for path in paths)
        line += "".join(f" {row.speedup(path):>13.2f}x" for path in paths[1:])
        lines.append(line)
    lines.append("")
    lines.append("first call at each size (ms, includes per-shape preparation): ")
    for row in rows:
        firsts = ", ".join(f"{path} {value:.0f}" for path, value in row.first_ms.items())
        lines.append(f"  {row.width}x{row.height} batch {row.batch}: {firsts}")
    return "\n".join(lines)
