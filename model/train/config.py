"""The settings of a training run (`TrainConfig`, the `masenet train` options) and what it returns."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainConfig:
    """Settings of one training run (the `masenet train` options)."""

    data: str
    scale: str = "n"
    imgsz: int = 320
    serve_imgsz: int | None = None  # inference size written into the exported checkpoint; None: imgsz
    serve_scale: float | None = None  # pixel scale written into the exported checkpoint; None: the one trained at
    epochs: int = 100
    batch: int = 16
    workers: int = 2
    device: str = "auto"
    out: str = "runs/train/exp"
    resume: bool = False
    weights: str | None = None
    time_limit: float | None = None  # minutes
    lr0: float | None = None  # None: chosen with the optimiser
    lrf: float = 0.01
    optimizer: str = "auto"  # auto, sgd, adamw
    momentum: float = 0.937
    weight_decay: float = 5e-4
    warmup_epochs: float = 3.0
    val_every: int = 1
    seed: int = 0
    mosaic: float = 0.5
    ema_decay: float = 0.9999
    max_grad_norm: float = 10.0
    cache: bool | None = None
    threads: int | None = None  # torch CPU threads; None keeps torch's default (one per core)
    bf16: bool = False  # CPU only: bfloat16 autocast and channels-last memory (CUDA always autocasts)
    cls_target: str = "iou"  # class target of a positive: "iou" (box quality) or "presence" (see assigner.py)
    freeze: tuple[str, ...] = ()  # module paths kept as loaded, e.g. ("backbone", "neck"); see freeze()
    command: str = field(default_factory=lambda: " ".join(["masenet", *sys.argv[1:]]))


@dataclass
class TrainResult:
    out_dir: Path
    best: Path
    last: Path
    exported: Path
    epochs_completed: int
    best_fitness: float
    metrics: dict[str, Any]
    wall_seconds: float
    stopped_by_time: bool
