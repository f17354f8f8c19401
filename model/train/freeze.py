"""Freezing: `freeze` names module paths ("backbone", "neck", "head.box_branches", ...) whose weights and
BatchNorm statistics stay as loaded, e.g. to fine-tune only the class branches on a small dataset; a frozen part
costs only its forward pass."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def freeze(model: nn.Module, prefixes: Sequence[str]) -> list[str]:
    """Stop the gradients of every parameter whose name is or lies under one of `prefixes` (module paths such
    as "backbone" or "head.box_branches"); returns the names of the modules whose BatchNorm layers stay in eval
    mode (`train_mode`), so a frozen part keeps its running statistics as well as its weights."""
    names = [name for name, _ in model.named_parameters()]

    def under(name: str, prefix: str) -> bool:
        return name == prefix or name.startswith(prefix + ".")

    def covered(name: str) -> bool:
        return any(under(name, prefix) for prefix in prefixes)

    for prefix in prefixes:
        if not any(under(name, prefix) for name in names):
            tops = sorted({name.split(".")[0] for name in names})
            raise ValueError(f"--freeze {prefix!r} names no parameters; use module paths such as {', '.join(tops)}")
    for name, parameter in model.named_parameters():
        if covered(name):
            parameter.requires_grad_(False)
    if prefixes and not any(parameter.requires_grad for parameter in model.parameters()):
        raise ValueError(f"--freeze {' '.join(prefixes)} leaves nothing to train")
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and covered(name)
    ]


def train_mode(model: nn.Module, frozen_norms: Sequence[str]) -> nn.Module:
    """`model.train()`, except the BatchNorm layers named in `frozen_norms`, which stay in eval mode."""
    model.train()
    modules = dict(model.named_modules())
    for name in frozen_norms:
        modules[name].eval()
    return model
