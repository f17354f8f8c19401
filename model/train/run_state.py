"""Where a training run lives and what it starts from: its output folder, initial weights, the saved state
of an earlier run to resume, and atomic saves of that state."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.errors import CheckpointError
from model.train.config import TrainConfig
from model.train.data import YoloDataset

logger = logging.getLogger(__name__)


def output_dir(config: TrainConfig) -> Path:
    """`config.out`, or `out2`, `out3`, ... when it already holds a run that this one does not resume."""
    out = Path(config.out)
    if config.resume or not (out / "weights" / "last.pt").exists():
        return out
    number = 2
    while (out.parent / f"{out.name}{number}" / "weights" / "last.pt").exists():
        number += 1
    chosen = out.parent / f"{out.name}{number}"
    logger.info("%s already holds a run; writing to %s (use --resume to continue it)", out, chosen)
    return chosen


def initial_model(config: TrainConfig, nc: int) -> nn.Module:
    """A fresh model of `config.scale`, or one of the checkpoint's scale with `config.weights`' matching tensors."""
    from model.checkpoint import load_checkpoint
    from model.masenet import build_model

    if not config.weights:
        return build_model(scale=config.scale, nc=nc)
    source, meta = load_checkpoint(config.weights, device="cpu")
    model = build_model(scale=meta.scale, nc=nc)
    target = model.state_dict()
    matching = {k: v for k, v in source.state_dict().items() if k in target and v.shape == target[k].shape}
    model.load_state_dict(matching, strict=True)
    logger.info(
        "initialised %d of %d tensors from %s (masenet-%s)", len(matching), len(target), config.weights, meta.scale
    )
    return model


def save_state(path: Path, state: dict[str, Any]) -> None:
    """torch.save to a temporary file beside `path`, then rename, so `path` is never half written."""
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    temporary.replace(path)


def resume_state(config: TrainConfig, last_path: Path) -> tuple[TrainConfig, dict[str, Any]]:
    """The saved run state and its config, with this invocation's epochs (if larger), time limit and devices."""
    if not last_path.is_file():
        raise CheckpointError(f"nothing to resume: {last_path} not found")
    state = torch.load(last_path, map_location="cpu", weights_only=True)
    saved = dict(state["config"])
    saved.update(
        resume=True,
        epochs=max(config.epochs, int(saved["epochs"])),
        time_limit=config.time_limit,
        serve_imgsz=config.serve_imgsz or saved.get("serve_imgsz"),
        serve_scale=config.serve_scale or saved.get("serve_scale"),
        workers=config.workers,
        device=config.device,
        threads=config.threads,
        command=config.command,
    )
    config = TrainConfig(**saved)
    if state["epoch"] >= config.epochs:
        raise CheckpointError(
            f"{last_path}: training already finished {state['epoch']} of {config.epochs} epochs; pass a larger "
            "--epochs to continue"
        )
    return config, state


def trained_pixel_scale(dataset: YoloDataset, imgsz: int) -> float:
    """The factor training resized frames by: `imgsz` over the median longer side of the split's frames."""
    sides = sorted(max(record.width, record.height) for record in dataset.records)
    return round(imgsz / sides[len(sides) // 2], 4)
