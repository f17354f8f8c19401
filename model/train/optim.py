"""Optimiser, learning-rate schedule and weight EMA of a training run.

Optimiser: "auto" takes AdamW (lr 0.002 * 5 / (4 + nc)) for short runs (under 10,000 iterations) and SGD
(lr 0.01, Nesterov momentum 0.937) for long ones; weight decay applies to weights of convolutions and linear
layers only. With a time limit, the iterations a run can do are estimated from one timed training step
before it starts (the smaller of that and epochs * iterations per epoch); "auto", the warm-up cap and the
EMA ramp use that estimate, and the choice is saved with the config so a resumed run keeps it.

Learning rate: a linear warm-up (warmup_epochs, at least 20 iterations, at most 10% of the planned iterations
or 5% of the progress), then a cosine from lr0 down to lr0 * lrf over the run's progress (see trainer.py).
An EMA of the weights is what gets validated and exported.
"""

from __future__ import annotations

import copy
import logging
import math

import torch
from torch import nn

from model.train.config import TrainConfig

logger = logging.getLogger(__name__)

WARMUP_PROGRESS = 0.05


class ModelEMA:
    """Exponential moving average of a model's state; the decay ramps up as decay * (1 - exp(-updates / tau))."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, updates

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        weight = self.decay * (1 - math.exp(-self.updates / self.tau))
        current = model.state_dict()
        for name, value in self.module.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(weight).add_(current[name].detach(), alpha=1 - weight)
            else:
                value.copy_(current[name])


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decayed, plain = [], []
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad:
                continue
            is_weight = name == "weight" and isinstance(module, (nn.Conv2d, nn.Linear))
            (decayed if is_weight else plain).append(parameter)
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def auto_optimizer(expected_iterations: int) -> str:
    """AdamW for short runs, SGD for long ones."""
    return "adamw" if expected_iterations < 10_000 else "sgd"


def build_optimizer(model: nn.Module, config: TrainConfig, planned_iterations: int, nc: int) -> torch.optim.Optimizer:
    """SGD or AdamW (see the module docstring); the base lr is kept in each group's 'initial_lr'."""
    name = config.optimizer.lower()
    if name == "auto":
        name = auto_optimizer(planned_iterations)
    groups = _param_groups(model, config.weight_decay)
    if name == "adamw":
        lr = config.lr0 or round(0.002 * 5 / (4 + nc), 6)
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))
    elif name == "sgd":
        lr = config.lr0 or 0.01
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=config.momentum, nesterov=True)
    else:
        raise ValueError(f"unknown optimizer {config.optimizer!r}; choose auto, sgd or adamw")
    for group in optimizer.param_groups:
        group["initial_lr"] = lr
    logger.info("optimizer %s, lr0 %g, about %d iterations", name, lr, planned_iterations)
    return optimizer


def lr_factor(progress: float, iteration: int, warmup_iterations: int, lrf: float) -> float:
    """Warm-up times cosine: the fraction of lr0 at this point of the run.

    The warm-up ends after `warmup_iterations` or at WARMUP_PROGRESS of the progress, whichever comes first (a
    time-limited run may do fewer iterations than planned from the epochs).
    """
    cosine = lrf + (1 - lrf) * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    if warmup_iterations <= 0:
        return cosine
    return cosine * min(1.0, max((iteration + 1) / warmup_iterations, progress / WARMUP_PROGRESS))
