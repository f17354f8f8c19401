"""Fold BatchNorm layers into their preceding convolutions for inference.

Every BatchNorm in MASENet sits directly after a convolution inside a `Conv` block (including the MCAFEM residual
path and the head branches) or after the pointwise convolution of a `DSConv`. Folding uses the running statistics,
so it is only valid for eval-mode inference; GroupNorm (MASEM) depends on the input and is left alone.
"""

from __future__ import annotations

import logging

from torch import nn

from model.layers import Conv, DSConv

logger = logging.getLogger(__name__)

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm into its preceding conv, in place; returns `model` (eval-mode outputs unchanged).

    Nothing else changes: dtype, device, memory format and train/eval mode are the caller's business. Calling it
    twice is harmless. Raises ValueError if a BatchNorm remains that this function does not know how to fold.
    """
    fused = 0
    for module in model.modules():
        if isinstance(module, (Conv, DSConv)) and isinstance(module.norm, nn.BatchNorm2d):
            module.fuse()
            fused += 1
    leftover = [name for name, module in model.named_modules() if isinstance(module, _BATCHNORMS)]
    if leftover:
        raise ValueError(f"BatchNorm layers without a preceding conv block could not be fused: {leftover[:5]}")
    logger.debug("fused %d BatchNorm layers", fused)
    return model
