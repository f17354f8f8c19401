"""Detector: a loaded MASENet on a device, with inference split into steps a worker can overlap.

    frames (numpy, any depth) --to_tensors--> uint8 (3, H, W) on the device
                              --prepare-->    letterboxed batch in the model's dtype and memory format
                              --infer-->      decoded (B, 4 + nc, A) float32
                              --postprocess--> per frame a list of {"box", "score", "class_id", "class_name"}

At load the model is put in eval mode, its BatchNorm layers are folded into the convolutions, its SiLU
activations run in place, and it runs channels-last, in float32 (bfloat16 with `half=True`) and optionally
through torch.compile. Boxes come back in the original frame's pixels.

float32 is the default on CUDA too. A few activations in the head of the shipped weights exceed float16's
largest value (65,504; above it on at least two of 128 held-out frames, up to about 191,000; up to about 5e6
on synthetic frames for the weights shipped before), so float16 turns some outputs into inf and NaN (with
those earlier weights, 0.43% of the raw outputs of a batch of 8 at 960x960 on an H200). bfloat16 keeps
float32's range but not its precision: on the same GPU, 14 detections of 129 at confidence 0.25 came or went
against float32 and scores moved by up to 0.08, and it was no faster for masenet-n (45 ms against 31 ms a
batch; one measurement of 20 forwards, with a small training run sharing the GPU). `half=True` is there for
larger scales and other weights.

Channels-last is the default on every device. On CUDA it is what tensor-core convolutions want. On
the CPU (oneDNN) it was measured on masenet-n, batch 8 at 320x256: with BN folded, NCHW gains only about
5-7% over the plain model, NHWC about 25-35%; the depthwise and 1x1 convolutions, which dominate this
network, are each faster in NHWC, so no per-layer layout switching is needed. `masenet bench model
--no-channels-last` repeats the comparison on other hardware.

Frames are resized by the pixel scale the network was trained at (`CheckpointMeta.pixel_scale`, 1.5 for the
shipped weights), whatever their size, so a target covers as many input pixels as it did in training: a 320x256
frame runs at 480x384, a 1280x1024 one at 1920x1536. `imgsz` (the longer side) overrides that with a fixed size,
and is the rule for checkpoints without a pixel scale. `prepare`, `infer`, `detect` and `gradcam` take either
per call, and the test-time augmentation too.

`runtime` runs the forward pass on OpenVINO or ONNX Runtime instead of torch (CPU only; "auto" picks OpenVINO on
the CPU when installed, see model/runtimes.py); letterboxing, views, decoding, NMS and Grad-CAM stay in torch.

`tta` (test-time augmentation) runs each frame together with flipped copies of itself and averages the raw
head maps anchor by anchor before decoding, so one set of boxes comes out and a flipped frame gets flipped
detections: "mirror" (or True) adds the left-right mirror, "flips" also the up-down and the doubly flipped
frame (the trainer flips both ways, so all four views are in distribution). Each view costs one more image
per frame in the forward pass. Unset (None), it is what the checkpoint says (`CheckpointMeta.tta`; "off" for
a model passed in directly): the shipped weights serve with "off"; "flips" cuts their false alarms by 15 to 25%
at the same Pd for four times the compute (MODEL_CARD.md, "Serving scale and test-time views").
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from model.checkpoint import default_weights_path, file_sha256, load_checkpoint
from model.imaging import to_rgb8
from model.masenet import MASENet
from model.ops import (
    TTA_VIEWS,
    LetterboxParams,
    decode_levels,
    letterbox,
    merge_tta,
    non_max_suppression,
    scale_boxes,
    tta_batch,
    tta_mode,
)
from model.runtimes import Forward, build_forward, resolve_runtime

logger = logging.getLogger(__name__)

DEFAULT_IMGSZ = 640


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' picks CUDA when available, else the CPU; anything else is passed to torch.device."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _set_inplace_activations(model: torch.nn.Module, inplace: bool) -> None:
    """Switch the SiLU modules to in place, or back.

    In MASENet every SiLU module directly follows a convolution (or its BatchNorm) whose output nothing else
    reads, so computing it in place is exact and saves allocating and writing one tensor per block: about a
    tenth of the CPU forward time. In-place activations cannot run under autograd, so only the inference
    copy uses them.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.SiLU):
            module.inplace = inplace


class Detector:
    """A MASENet ready for inference on one device. Construct once per process and reuse."""

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        device: str = "auto",
        half: bool = False,
        compile: bool = False,
        fuse: bool = True,
        channels_last: bool = True,
        model: MASENet | None = None,
        class_names: list[str] | None = None,
        imgsz: int | None = None,
        tta: str | bool | None = None,
        pixel_scale: float | None = None,
        runtime: str = "torch",
    ) -> None:
        if imgsz is not None and pixel_scale is not None:
            raise ValueError("give imgsz (a fixed longer side) or pixel_scale (a resize factor), not both")
        self.device = resolve_device(device)
        weights_sha256 = None
        if model is None:
            path = Path(checkpoint) if checkpoint is not None else default_weights_path()
            model, meta = load_checkpoint(path, device="cpu")
            class_names = class_names or meta.class_names
            if imgsz is None and pixel_scale is None:
                pixel_scale = meta.pixel_scale
            imgsz = imgsz or meta.imgsz
            tta = meta.tta if tta is None else tta
            weights_sha256 = file_sha256(path)
            logger.info("loaded %s (masenet-%s, nc=%d)", path, meta.scale, meta.nc)
        else:
            model = copy.deepcopy(model)  # fusing and casting must not change the caller's model
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(model.nc)]
        if len(self.class_names) != model.nc:
            raise ValueError(f"{len(self.class_names)} class names for a model with nc={model.nc}")
        self.imgsz = int(imgsz or DEFAULT_IMGSZ)
        self.pixel_scale = float(pixel_scale) if pixel_scale is not None else None
        self.half = bool(half)
        self.dtype = torch.bfloat16 if self.half else torch.float32
        self.channels_last = channels_last
        self.tta = tta_mode(tta)
        self.views = TTA_VIEWS[self.tta]
        self.strides = tuple(int(stride) for stride in model.strides)
        self.reg_max = int(model.reg_max)

        model = model.eval()
        if fuse:
            from model.fuse import fuse_batchnorm

            model = fuse_batchnorm(model) or model
        _set_inplace_activations(model, True)
        model = model.to(device=self.device, dtype=self.dtype)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.requires_grad_(False)
        self.module: MASENet = model
        self._float_module: MASENet | None = None
        self.runtime = resolve_runtime(runtime, self.device)
        if self.runtime == "torch":
            self.model: Forward = torch.compile(model) if compile else model
        else:  # OpenVINO or ONNX Runtime: the float32 network exported once, fed NCHW float32 batches
            started = time.perf_counter()
            self.model = build_forward(self.runtime, self.float_module(), half=self.half)
            self.dtype, self.channels_last = torch.float32, False
            logger.info("%s runtime ready in %.1f s", self.runtime, time.perf_counter() - started)
        self.info: dict[str, Any] = {
            "name": f"masenet-{model.scale}",
            "scale": model.scale,
            "nc": model.nc,
            "class_names": list(self.class_names),
            "imgsz": self.imgsz,
            "pixel_scale": self.pixel_scale,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "runtime": self.runtime,
            "tta": self.tta,
            "weights_sha256": weights_sha256,
        }

    def float_module(self) -> MASENet:
        """A float32 copy of the eager module that can run with autograd (activations not in place); cached."""
        if self._float_module is None:
            module = copy.deepcopy(self.module).float()
            _set_inplace_activations(module, False)
            self._float_module = module
        return self._float_module

    def to_tensors(self, frames: Sequence[np.ndarray]) -> list[Tensor]:
        """Frames of any supported depth and layout to uint8 (3, H, W) tensors on the device."""
        tensors = []
        for frame in frames:
            rgb = to_rgb8(np.asarray(frame))
            if not rgb.flags.writeable:
                rgb = rgb.copy()
            tensor = torch.from_numpy(rgb)  # (H, W, 3)
            if self.device.type == "cuda":
                tensor = tensor.pin_memory().to(self.device, non_blocking=True)
            tensors.append(tensor.permute(2, 0, 1))
        return tensors

    def resize_rule(self, imgsz: int | None = None, pixel_scale: float | None = None) -> dict[str, Any]:
        """The letterbox arguments for a call: its own imgsz or pixel_scale, else the detector's default."""
        if imgsz is not None and pixel_scale is not None:
            raise ValueError("give imgsz (a fixed longer side) or pixel_scale (a resize factor), not both")
        if imgsz is not None:
            return {"imgsz": int(imgsz), "pixel_scale": None}
        if pixel_scale is not None or self.pixel_scale is not None:
            return {"imgsz": None, "pixel_scale": float(pixel_scale or self.pixel_scale)}
        return {"imgsz": self.imgsz, "pixel_scale": None}

    def prepare(
        self, tensors: list[Tensor], imgsz: int | None = None, pixel_scale: float | None = None
    ) -> tuple[Tensor, list[LetterboxParams]]:
        """Letterbox on the device into one batch in the model's dtype and memory format."""
        batch, params = letterbox(tensors, stride=max(self.strides), **self.resize_rule(imgsz, pixel_scale))
        batch = batch.to(self.dtype)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch, params

    def views_for(self, tta: str | bool | None = None) -> tuple[tuple[int, ...], ...]:
        """The flips each frame runs with: those of `tta` when given, else the detector's default."""
        return self.views if tta is None else TTA_VIEWS[tta_mode(tta)]

    def frames_per_pass(self, images: int, tta: str | bool | None = None) -> int:
        """How many frames fit a forward pass of `images` images when each frame brings its test-time views."""
        return max(1, images // len(self.views_for(tta)))

    def infer(self, batch: Tensor, tta: str | bool | None = None) -> Tensor:
        """Forward and decode: (B, 3, H, W) to (B, 4 + nc, A) float32 boxes (cx, cy, w, h) and scores.

        With test-time augmentation (`tta`, default the detector's) each image's views (V of them) run in one
        forward of V*B and their raw head maps are averaged.
        """
        views = self.views_for(tta)
        with torch.inference_mode():
            levels = [level.float() for level in self.model(tta_batch(batch, views))]
            return decode_levels(merge_tta(levels, views, self.reg_max), self.strides, self.reg_max)

    def postprocess(
        self,
        decoded: Tensor,
        params: list[LetterboxParams],
        conf: float | Sequence[float] = 0.25,
        iou: float | Sequence[float] = 0.45,
        max_det: int | Sequence[int] = 300,
    ) -> list[list[dict]]:
        """NMS and mapping to original pixels; thresholds may be one value or one per frame."""
        with torch.inference_mode():
            rows = non_max_suppression(decoded, conf=conf, iou=iou, max_det=max_det)
            results = []
            for detections, frame_params in zip(rows, params, strict=True):
                boxes = scale_boxes(detections[:, :4], frame_params).cpu().tolist()
                scores = detections[:, 4].cpu().tolist()
                classes = detections[:, 5].to(torch.int64).cpu().tolist()
                results.append(
                    [
                        {
                            "box": [round(value, 2) for value in box],
                            "score": round(score, 4),
                            "class_id": class_id,
                            "class_name": self.class_names[class_id],
                        }
                        for box, score, class_id in zip(boxes, scores, classes, strict=True)
                    ]
                )
        return results

    def detect(
        self,
        frames: Sequence[np.ndarray],
        conf: float | Sequence[float] = 0.25,
        iou: float | Sequence[float] = 0.45,
        max_det: int | Sequence[int] = 300,
        imgsz: int | None = None,
        pixel_scale: float | None = None,
        tta: str | bool | None = None,
    ) -> list[list[dict]]:
        """Detections for each frame, in the frame's own pixel coordinates."""
        if not frames:
            return []
        batch, params = self.prepare(self.to_tensors(frames), imgsz, pixel_scale)
        return self.postprocess(self.infer(batch, tta), params, conf=conf, iou=iou, max_det=max_det)
