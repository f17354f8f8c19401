"""Synthetic infrared small-target data: frames, datasets and videos.

`generate_frame(rng, config)` builds one frame (raw 16-bit counts, the 8-bit AGC image and its targets);
`write_dataset` and `write_video` write ultralytics-layout datasets and labelled videos. The default recipe
is for training; `holdout_config()` is a deliberately different recipe for measuring generalisation.
Exports are imported lazily so that registering the command line stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SynthConfig": "model.synth.config",
    "SynthFrame": "model.synth.dataset",
    "generate_frame": "model.synth.dataset",
    "holdout_config": "model.synth.config",
    "frame_rng": "model.synth.dataset",
    "write_dataset": "model.synth.dataset",
    "write_preview": "model.synth.dataset",
    "write_video": "model.synth.dataset",
    "Target": "model.synth.targets",
    "MIN_BOX_SIDE": "model.synth.targets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'model.synth' has no attribute {name!r}")
