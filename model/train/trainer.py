"""Training loop: `train(TrainConfig) -> TrainResult`.

One run writes, under `out/`:

    weights/last.pt          everything needed to resume (model, EMA, optimiser, epoch, best fitness, config),
                             a torch.save dict of tensors and primitives (loads with weights_only=True)
    weights/best.pt          the same without the optimiser, at the best fitness (0.1 mAP50 + 0.9 mAP50-95)
    weights/best.safetensors the best EMA weights in float16 through model.checkpoint.save_checkpoint,
                             with provenance (command, dataset, epochs, imgsz, hardware, wall time, metrics)
    results.csv              one row per epoch; losses.png and pr_curve.png
    steps.csv                mean losses and learning rate every few iterations (at most 50), so a long epoch
                             or a fine-tune that ends inside its first epoch still shows how the loss moved

Optimiser, EMA and learning-rate schedule: optim.py; freezing: freeze.py; the run folder, initial weights
and resuming: run_state.py.

Mixed precision: always on CUDA, in bfloat16; float16 with loss scaling only on GPUs without bfloat16.
float16 does not fit the shipped weights: their pre-BatchNorm activations in the head reach about 1.4e7
(float16 stops at 65,504), and fine-tuning them in float16 gave a NaN loss at the first step on an H200. On
a CPU, `bf16=True` gives bfloat16 with channels-last memory (faster where the CPU has AVX-512 BF16 or AMX).
The master weights, loss and optimiser stay float32.
Gradients clipped to norm 10; an EMA of the weights is what gets validated and exported.

Learning rate: a linear warm-up (warmup_epochs, at least 20 iterations, at most 10% of the planned iterations
or 5% of the progress), then a cosine from lr0 down to lr0 * lrf over the run's progress:

    progress = max(iterations done / (epochs * iterations per epoch), wall time used / time budget)

so with `time_limit` the cosine reaches its floor when the budget runs out, whichever comes first. The budget
is the time limit minus a reserve for the final validation and checkpoint (estimated from the step time,
then measured at each validation).
When the time is up the epoch stops early, validates, checkpoints and the run ends cleanly. On resume the
progress continues from the saved value and a new time limit spreads the rest of the schedule over it.
Mosaic is switched off for the last 10% of the progress.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from model.train.assigner import TaskAlignedAssigner
from model.train.augment import AugmentConfig
from model.train.config import TrainConfig, TrainResult
from model.train.data import YoloDataset, collate, describe, worker_count
from model.train.evaluate import evaluate, overall_metrics, plot_losses, plot_pr_curve, read_results, write_results
from model.train.freeze import freeze, train_mode
from model.train.loss import DetectionLoss
from model.train.optim import ModelEMA, auto_optimizer, build_optimizer, lr_factor
from model.train.run_state import initial_model, output_dir, resume_state, save_state, trained_pixel_scale

logger = logging.getLogger(__name__)

LOSS_NAMES = ("box", "cls", "dfl")
CLOSE_MOSAIC = 0.9


def _amp_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 (float32's range); float16, with loss scaling, only on CUDA GPUs without bfloat16."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.float16
    return torch.bfloat16


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA), torch {torch.__version__}"
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch "
        f"threads, torch {torch.__version__}"
    )


def _cpu_has_native_bf16() -> bool:
    """Whether the CPU has AVX-512 BF16 or AMX, by torch's private probes (a probe this torch lacks counts as no)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


class _Run:
    """The state of one training run; `train` drives it epoch by epoch."""

    def __init__(self, config: TrainConfig) -> None:
        from model.detector import resolve_device

        self.started = time.perf_counter()
        self.out = output_dir(config)
        self.last_path, self.best_path = self.out / "weights" / "last.pt", self.out / "weights" / "best.pt"
        resumed = None
        if config.resume:
            config, resumed = resume_state(config, self.last_path)
        self.config = config
        (self.out / "weights").mkdir(parents=True, exist_ok=True)
        torch.manual_seed(config.seed)
        np.random.seed(config.seed)
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = resolve_device(config.device)
        self.cpu_bf16 = config.bf16 and self.device.type == "cpu"
        self.amp_dtype = _amp_dtype(self.device) if self.device.type == "cuda" or self.cpu_bf16 else None
        self.memory_format = torch.channels_last if self.cpu_bf16 else torch.contiguous_format
        if self.cpu_bf16 and not _cpu_has_native_bf16():
            logger.warning("this CPU has neither AVX-512 BF16 nor AMX: bfloat16 is emulated and slower than float32")

        augment = AugmentConfig(mosaic=config.mosaic)
        self.train_set = YoloDataset(config.data, "train", config.imgsz, augment, config.cache, seed=config.seed)
        self.val_set = YoloDataset(self.train_set.config, "val", config.imgsz, augment=None, cache=False)
        self.batch_size = max(1, min(config.batch, len(self.train_set)))
        self.iterations_per_epoch = math.ceil(len(self.train_set) / self.batch_size)
        self.planned_iterations = config.epochs * self.iterations_per_epoch
        self.time_budget = config.time_limit * 60.0 if config.time_limit else None

        nc = self.train_set.num_classes
        self.model = initial_model(config, nc).to(self.device, memory_format=self.memory_format)
        self.frozen_norms = freeze(self.model, config.freeze)
        train_mode(self.model, self.frozen_norms)
        if config.freeze:
            trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
            logger.info(
                "training %d of %d parameters (frozen: %s)",
                trainable,
                sum(p.numel() for p in self.model.parameters()),
                ", ".join(config.freeze),
            )
        assigner = TaskAlignedAssigner(nc, score_target=config.cls_target)
        self.criterion = DetectionLoss(nc, strides=self.model.strides, reg_max=self.model.reg_max, assigner=assigner)
        expected = self.planned_iterations
        if self.time_budget and resumed is None:
            expected = max(1, min(expected, int(self.time_budget / self._probe_step_seconds())))
        if config.optimizer == "auto":
            config = self.config = dataclasses.replace(config, optimizer=auto_optimizer(expected))
        warmup = max(round(config.warmup_epochs * self.iterations_per_epoch), 20)
        self.warmup_iterations = min(warmup, expected // 10)
        self.optimizer = build_optimizer(self.model, config, expected, nc)
        self.ema = ModelEMA(self.model, config.ema_decay, tau=float(min(2000, max(10, expected // 5))))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.start_epoch, self.iteration, self.progress_start, self.best_fitness = 0, 0, 0.0, -1.0
        self.elapsed_before = 0.0
        self.best_result: dict[str, Any] | None = None
        self.rows: list[dict[str, Any]] = []
        self.steps: list[dict[str, Any]] = []
        self.log_every = max(1, min(50, self.iterations_per_epoch // 4))
        if resumed is not None:
            self._restore(resumed)
        self.progress = self.progress_start
        self.reserve = 0.0  # seconds kept for the last validation and checkpoint
        self.reserve_measured = False
        self.stopped_by_time = False
        logger.info("%s; %s", describe(self.train_set), describe(self.val_set))

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.module.load_state_dict(state["ema"])
        self.ema.updates, self.ema.tau = int(state["ema_updates"]), float(state.get("ema_tau", self.ema.tau))
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.start_epoch, self.iteration = int(state["epoch"]), int(state["iteration"])
        self.progress_start, self.best_fitness = float(state["progress"]), float(state["best_fitness"])
        self.elapsed_before = float(state.get("elapsed", 0.0))
        self.rows = read_results(self.out / "results.csv")
        self.steps = [row for row in read_results(self.out / "steps.csv") if int(row["iteration"]) <= self.iteration]
        logger.info("resuming %s at epoch %d/%d", self.out, self.start_epoch + 1, self.config.epochs)

    def _probe_step_seconds(self) -> float:
        """Time one forward and backward pass on a training batch; the weights are left as they were."""
        state = copy.deepcopy(self.model.state_dict())
        batch = collate([self.train_set[index] for index in range(self.batch_size)])
        started = time.perf_counter()
        images = self._images(batch)
        with self._autocast():
            levels = self.model(images)
        total, _ = self.criterion(levels, batch["targets"].to(self.device))
        total.backward()
        seconds = time.perf_counter() - started
        self.model.zero_grad(set_to_none=True)
        self.model.load_state_dict(state)
        logger.info("one training step takes about %.2f s", seconds)
        return seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def current_progress(self) -> float:
        by_steps = self.iteration / self.planned_iterations
        if not self.time_budget:
            return by_steps
        used = self.elapsed() / max(self.time_budget - self.reserve, 1.0)
        return max(by_steps, self.progress_start + (1 - self.progress_start) * used)

    def _images(self, batch: dict[str, Any]) -> Tensor:
        """The batch's uint8 images as float (B, 3, S, S) in [0, 1] on the device, in the model's memory format."""
        images = batch["images"].to(self.device, non_blocking=True).float().div_(255.0)
        return images.contiguous(memory_format=self.memory_format)

    def _autocast(self) -> torch.autocast:
        dtype, enabled = self.amp_dtype or torch.bfloat16, self.amp_dtype is not None
        return torch.autocast(device_type=self.device.type, dtype=dtype, enabled=enabled)

    def _step(self, batch: dict[str, Any]) -> Tensor:
        """One optimiser step; returns the detached (3,) loss items."""
        self.progress = self.current_progress()
        factor = lr_factor(self.progress, self.iteration, self.warmup_iterations, self.config.lrf)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        images = self._images(batch)
        targets = batch["targets"].to(self.device)  # (M, 6)
        with self._autocast():
            levels = self.model(images)
        total, items = self.criterion(levels, targets)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.optimizer)
        nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.ema.update(self.model)
        self.iteration += 1
        return items.cpu()

    def train_epoch(self, epoch: int) -> list[float]:
        """Train one epoch (or until the time budget is spent); returns the mean box, cls and dfl losses."""
        from tqdm import tqdm

        self.train_set.epoch = epoch
        augment = self.train_set.augment
        if self.progress >= CLOSE_MOSAIC and augment is not None and augment.mosaic > 0:
            self.train_set.augment = dataclasses.replace(augment, mosaic=0.0)
            logger.info("mosaic off for the rest of the run")
        loader = torch.utils.data.DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=True,
            num_workers=worker_count(self.config.workers),
            collate_fn=collate,
            generator=torch.Generator().manual_seed(self.config.seed * 1000 + epoch),
            pin_memory=self.device.type == "cuda",
        )
        train_mode(self.model, self.frozen_norms)
        sums, seen, step_seconds = torch.zeros(3), 0, 0.0
        window, window_seen = torch.zeros(3), 0
        val_batches = math.ceil(len(self.val_set) / self.batch_size)
        description = f"epoch {epoch + 1}/{self.config.epochs}"
        bar = tqdm(loader, desc=description, file=sys.stderr, leave=False, dynamic_ncols=True)
        for batch in bar:
            step_started = time.perf_counter()
            items = self._step(batch)
            sums, window = sums + items, window + items
            seen, window_seen = seen + 1, window_seen + 1
            if window_seen == self.log_every:
                self._log_steps(epoch, window / window_seen)
                window, window_seen = torch.zeros(3), 0
            step_seconds += time.perf_counter() - step_started
            if not self.reserve_measured:  # until a validation is timed: forward-only is about a third of a step
                self.reserve = 0.5 * step_seconds / seen * val_batches + 5.0
            remaining = self.elapsed() * (1 / self.progress - 1) if self.progress > 0.01 else None
            postfix = {name: f"{value:.3f}" for name, value in zip(LOSS_NAMES, (sums / seen).tolist(), strict=True)}
            postfix["lr"] = f"{self.optimizer.param_groups[0]['lr']:.2e}"
            postfix["eta"] = time.strftime("%H:%M:%S", time.gmtime(remaining)) if remaining is not None else "?"
            bar.set_postfix(postfix)
            if self.time_budget and self.elapsed() >= self.time_budget - self.reserve:
                self.stopped_by_time = True
                break
        bar.close()
        if window_seen:
            self._log_steps(epoch, window / window_seen)
        means = (sums / max(seen, 1)).tolist()
        if not all(math.isfinite(value) for value in means):
            raise FloatingPointError(f"loss became non-finite in epoch {epoch + 1}; lower --lr0 or check the labels")
        self.progress = self.current_progress()
        return means

    def _log_steps(self, epoch: int, losses: Tensor) -> None:
        """Append a steps.csv row: the mean losses of the iterations since the last row."""
        row: dict[str, Any] = {"iteration": self.iteration, "epoch": epoch + 1}
        row["lr"] = f"{self.optimizer.param_groups[0]['lr']:.6g}"
        row.update({f"train/{name}": f"{value:.5f}" for name, value in zip(LOSS_NAMES, losses.tolist(), strict=True)})
        row["seconds"] = f"{self.elapsed_before + self.elapsed():.1f}"
        self.steps.append(row)
        write_results(self.out / "steps.csv", self.steps)

    def validate(self) -> dict[str, Any]:
        result = evaluate(self.ema.module, self.val_set, imgsz=self.config.imgsz, batch_size=self.batch_size)
        self.reserve, self.reserve_measured = 1.5 * result["seconds"] + 5.0, True
        return result

    def _state(self, epoch: int, metrics: dict[str, float]) -> dict[str, Any]:
        return {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "ema": {k: v.detach().cpu() for k, v in self.ema.module.state_dict().items()},
            "ema_updates": self.ema.updates,
            "ema_tau": self.ema.tau,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "epoch": epoch + 1,
            "iteration": self.iteration,
            "progress": float(self.progress),
            "best_fitness": self.best_fitness,
            "elapsed": self.elapsed_before + self.elapsed(),
            "config": dataclasses.asdict(self.config),
            "names": list(self.train_set.names),
            "scale": self.model.scale,
            "metrics": metrics,
        }

    def finish_epoch(self, epoch: int, losses: list[float], result: dict[str, Any] | None, seconds: float) -> None:
        """Record the epoch: CSV row, last/best checkpoints, plots, a log line."""
        metrics = overall_metrics(result)
        improved = result is not None and result["fitness"] > self.best_fitness
        if improved:
            self.best_fitness, self.best_result = float(result["fitness"]), result
        row: dict[str, Any] = {"epoch": epoch + 1}
        row.update({f"lr/pg{i}": f"{group['lr']:.6g}" for i, group in enumerate(self.optimizer.param_groups)})
        row.update({f"train/{name}": f"{value:.5f}" for name, value in zip(LOSS_NAMES, losses, strict=True)})
        for key in ("precision", "recall", "map50", "map50_95", "pd", "fa_per_frame"):
            row[f"val/{key}"] = f"{metrics[key]:.5f}" if key in metrics else ""
        row["seconds"] = f"{seconds:.1f}"
        self.rows.append(row)
        state = self._state(epoch, metrics)
        save_state(self.last_path, state)
        if improved or not self.best_path.exists():
            save_state(
                self.best_path, {key: value for key, value in state.items() if key not in ("optimizer", "scaler")}
            )
        write_results(self.out / "results.csv", self.rows)
        plot_losses(self.rows, self.out / "losses.png", self.steps)
        if self.best_result is not None:
            plot_pr_curve(self.best_result, self.out / "pr_curve.png")
        summary = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k in ("map50", "map50_95", "pd"))
        loss_text = " ".join(f"{value:.3f}" for value in losses)
        summary = f"; {summary}" if summary else ""
        logger.info("epoch %d/%d: loss %s%s (%.1fs)", epoch + 1, self.config.epochs, loss_text, summary, seconds)

    def export(self, epochs_completed: int) -> TrainResult:
        """Write best.safetensors (fp16, with provenance) from the best EMA weights."""
        from model.checkpoint import save_checkpoint

        wall = self.elapsed_before + self.elapsed()
        best_state = torch.load(self.best_path, map_location="cpu", weights_only=True)
        export_model = copy.deepcopy(self.ema.module).cpu()
        export_model.load_state_dict(best_state["ema"])
        metrics = dict(best_state["metrics"])
        config = self.config
        pixel_scale = config.serve_scale or trained_pixel_scale(self.train_set, config.imgsz)
        provenance = {
            "command": config.command,
            "dataset": str(Path(config.data).resolve()),
            "dataset_summary": f"{describe(self.train_set)}; {describe(self.val_set)}",
            "epochs": int(best_state["epoch"]),
            "epochs_completed": epochs_completed,
            "epochs_planned": config.epochs,
            "imgsz": config.imgsz,
            "serve_imgsz": config.serve_imgsz or config.imgsz,
            "serve_scale": pixel_scale,
            "batch": self.batch_size,
            "scale": self.model.scale,
            "hardware": _hardware(self.device),
            "wall_seconds": round(wall, 1),
            "time_limit_minutes": config.time_limit,
            "metrics": metrics,
            "metrics_note": "val split, EMA weights; P, R, Pd, Fa at conf 0.25; mAP at conf 0.001",
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        exported = save_checkpoint(
            self.out / "weights" / "best.safetensors",
            export_model,
            class_names=list(self.train_set.names),
            imgsz=config.serve_imgsz or config.imgsz,
            provenance=provenance,
            pixel_scale=pixel_scale,
        )
        logger.info("best fitness %.4f; exported %s", self.best_fitness, exported)
        return TrainResult(
            out_dir=self.out,
            best=self.best_path,
            last=self.last_path,
            exported=exported,
            epochs_completed=epochs_completed,
            best_fitness=self.best_fitness,
            metrics=metrics,
            wall_seconds=wall,
            stopped_by_time=self.stopped_by_time,
        )


def train(config: TrainConfig) -> TrainResult:
    """Train MASENet on a YOLO dataset (see the module docstring)."""
    run = _Run(config)
    epoch = run.start_epoch
    for epoch in range(run.start_epoch, run.config.epochs):
        epoch_started = time.perf_counter()
        losses = run.train_epoch(epoch)
        last = run.stopped_by_time or epoch + 1 == run.config.epochs
        validate = last or (epoch + 1) % max(run.config.val_every, 1) == 0
        result = run.validate() if validate else None
        run.finish_epoch(epoch, losses, result, time.perf_counter() - epoch_started)
        if run.stopped_by_time:
            logger.info("time limit of %g min reached in epoch %d; stopping", run.config.time_limit, epoch + 1)
            break
    return run.export(epoch + 1)
