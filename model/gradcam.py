"""Grad-CAM overlays: where the network looks when it reports its detections.

One float32 forward with gradients, hooked at the P2 and P3 neck features (`MASENet.gradcam_layers()`).
The target of each image is the sum of the class scores of its kept detections, or, when it has none, the
score of its best anchor, so every image still gets a map. One backward for the whole batch gives the
gradients; per layer the map is ReLU(sum_c mean(grad_c) * activation_c) (Selvaraju et al., 2017). Each map
is upsampled to the letterboxed input, cropped to the frame, resized to the original size and normalised to
0..1 per image; the two layers are averaged, coloured with a jet look-up table and blended over the frame.
With test-time augmentation (`tta="mirror"` or `"flips"`, default the detector's) every frame's flipped views go through
together, the detections are those of the averaged head maps, and each frame's map is the mean of its views'
maps, each flipped back.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from model.detector import Detector
from model.imaging import to_rgb8
from model.ops import LetterboxParams, decode_levels, merge_tta, select_detections, tta_batch

logger = logging.getLogger(__name__)


def jet_lut() -> np.ndarray:
    """A 256-entry jet colour map (dark blue, cyan, yellow, dark red) as (256, 3) uint8."""
    position = np.linspace(0.0, 1.0, 256)
    channels = [np.clip(1.5 - np.abs(4.0 * position - offset), 0.0, 1.0) for offset in (3.0, 2.0, 1.0)]
    return (np.stack(channels, axis=1) * 255.0 + 0.5).astype(np.uint8)


_JET = jet_lut()


def encode_png(array: np.ndarray) -> bytes:
    """An (H, W) or (H, W, 3) uint8 array as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def _layer_cam(activation: Tensor, gradient: Tensor) -> Tensor:
    """(B, C, h, w) activation and gradient to a (B, h, w) class activation map."""
    weights = gradient.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    return (weights * activation).sum(dim=1).relu()


def _merge_views(maps: Tensor, views: Sequence[tuple[int, ...]]) -> Tensor:
    """(V*B, h, w) maps of a `tta_batch` to (B, h, w): each view's map flipped back, then the views averaged."""
    if len(views) == 1:
        return maps
    chunks = maps.chunk(len(views))
    return torch.stack([m.flip([d - 1 for d in dims]) for m, dims in zip(chunks, views, strict=True)]).mean(dim=0)


def _to_frame(cam: Tensor, input_size: tuple[int, int], params: LetterboxParams) -> Tensor:
    """(h, w) map on the network grid to (height, width) of the original frame, normalised to 0..1."""
    cam = F.interpolate(cam[None, None], size=input_size, mode="bilinear", align_corners=False)
    top, left = params.pad_y, params.pad_x
    cam = cam[:, :, top : top + params.resized_height, left : left + params.resized_width]
    cam = F.interpolate(cam, size=(params.height, params.width), mode="bilinear", align_corners=False)[0, 0]
    cam = cam - cam.min()
    peak = cam.max()
    return cam / peak if peak > 0 else cam


def _blend(frame_rgb: np.ndarray, heat: np.ndarray, alpha: float) -> np.ndarray:
    colours = _JET[np.clip(heat * 255.0 + 0.5, 0, 255).astype(np.uint8)]
    mixed = (1.0 - alpha) * frame_rgb.astype(np.float32) + alpha * colours.astype(np.float32)
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


def gradcam(
    detector: Detector,
    frames: list[np.ndarray],
    conf: float | Sequence[float] = 0.25,
    iou: float | Sequence[float] = 0.45,
    max_det: int | Sequence[int] = 300,
    imgsz: int | None = None,
    alpha: float = 0.45,
    pixel_scale: float | None = None,
    tta: str | None = None,
) -> tuple[list[list[dict]], list[np.ndarray]]:
    """Detections and a Grad-CAM overlay (H, W, 3) uint8 per frame, the same size as the frame."""
    if not frames:
        return [], []
    module = detector.float_module()
    layers = list(module.gradcam_layers())
    batch, params = detector.prepare(detector.to_tensors(frames), imgsz, pixel_scale)
    views = detector.views_for(tta)
    batch = tta_batch(batch, views).float().requires_grad_(True)  # gradients flow from the input, whatever the flags
    activations: list[Tensor] = []
    handles = [layer.register_forward_hook(lambda _m, _i, output: activations.append(output)) for layer in layers]
    try:
        with torch.enable_grad():
            levels = merge_tta([level.float() for level in module(batch)], views, detector.reg_max)
            decoded = decode_levels(levels, detector.strides, detector.reg_max)
            selections = select_detections(decoded.detach(), conf=conf, iou=iou, max_det=max_det)
            targets = []
            for image, (anchors, classes) in enumerate(selections):
                scores = decoded[image, 4:]  # (nc, A)
                if anchors.numel():
                    targets.append(scores[classes, anchors].sum())
                else:
                    targets.append(scores.max())
            gradients = torch.autograd.grad(torch.stack(targets).sum(), activations)
    finally:
        for handle in handles:
            handle.remove()

    input_size = (batch.shape[2], batch.shape[3])
    heats = []
    with torch.no_grad():
        maps = [
            _layer_cam(activation.detach().float(), gradient.float())
            for activation, gradient in zip(activations, gradients, strict=True)
        ]
        maps = [_merge_views(layer_map, views) for layer_map in maps]
        for image, frame_params in enumerate(params):
            per_layer = [_to_frame(layer_map[image], input_size, frame_params) for layer_map in maps]
            heats.append(torch.stack(per_layer).mean(dim=0).cpu().numpy())
        detections = detector.postprocess(decoded.detach(), params, conf=conf, iou=iou, max_det=max_det)
    overlays = [_blend(to_rgb8(np.asarray(frame)), heat, alpha) for frame, heat in zip(frames, heats, strict=True)]
    return detections, overlays
