"""MASENet: multi-level adaptive selection and enhancement network for infrared small targets.

Public entry points are imported lazily so that `import model` stays cheap for processes that only need
the torch-free parts (model.imaging, model.commands, model.cli_args).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_model": "model.masenet",
    "MASENet": "model.masenet",
    "convert_reference_state_dict": "model.convert",
    "fuse_batchnorm": "model.fuse",
    "make_anchors": "model.ops",
    "decode_levels": "model.ops",
    "non_max_suppression": "model.ops",
    "letterbox": "model.ops",
    "scale_boxes": "model.ops",
    "Detector": "model.detector",
    "save_checkpoint": "model.checkpoint",
    "load_checkpoint": "model.checkpoint",
    "default_weights_path": "model.checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
