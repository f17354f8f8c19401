"""The shipped-weights format: one safetensors file whose header metadata describes the model.

A checkpoint holds the model's state dict (floating tensors in float16 by default, about 13 MB for
MASENet-n) and these metadata entries, each value stored as JSON text:

    architecture    "masenet"
    scale           "n" | "s" | "l" | "x"
    nc              number of classes
    in_channels     input channels (3)
    class_names     list of nc names
    imgsz           serving image size (`masenet train --serve-imgsz`, else the training size): the longer side a
                    frame is resized to when the file has no pixel_scale, or a request asks for a fixed size
    pixel_scale     the pixel scale the network was trained at (`masenet train --serve-scale`, else derived from
                    the training frames): every frame is resized by this factor by default (optional; files
                    without it resize the longer side to imgsz, as before)
    tta             test-time augmentation served by default: "off", "mirror" or "flips" (optional; "off")
    provenance      free dict: command, dataset, epochs, hardware, date, metrics
    format_version  FORMAT_VERSION

Loading never unpickles anything: safetensors stores raw tensors and a JSON header. `read_metadata` parses
that header directly, so callers can inspect a checkpoint without torch or a model.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.errors import CheckpointError

if TYPE_CHECKING:
    import torch

    from model.masenet import MASENet

FORMAT_VERSION = 1
ARCHITECTURE = "masenet"
MAX_HEADER_BYTES = 100_000_000
_REQUIRED_KEYS = ("architecture", "scale", "nc", "in_channels", "class_names", "imgsz", "format_version")
MAX_PIXEL_SCALE = 8.0
TTA_MODES = ("off", "mirror", "flips")  # the keys of model.ops.TTA_VIEWS, named here without importing torch


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint says about its model."""

    scale: str
    nc: int
    in_channels: int
    class_names: list[str]
    imgsz: int
    provenance: dict[str, Any] = field(default_factory=dict)
    tta: str = "off"
    pixel_scale: float | None = None
    architecture: str = ARCHITECTURE
    format_version: int = FORMAT_VERSION

    def to_metadata(self) -> dict[str, str]:
        return {
            "architecture": json.dumps(self.architecture),
            "scale": json.dumps(self.scale),
            "nc": json.dumps(self.nc),
            "in_channels": json.dumps(self.in_channels),
            "class_names": json.dumps(self.class_names),
            "imgsz": json.dumps(self.imgsz),
            "tta": json.dumps(self.tta),
            "pixel_scale": json.dumps(self.pixel_scale),
            "provenance": json.dumps(self.provenance, default=str),
            "format_version": json.dumps(self.format_version),
        }

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], source: str = "checkpoint") -> CheckpointMeta:
        missing = [key for key in _REQUIRED_KEYS if key not in metadata]
        if missing:
            raise CheckpointError(f"{source}: metadata lacks {', '.join(missing)}; it was not saved by save_checkpoint")
        try:
            known = (*_REQUIRED_KEYS, "tta", "pixel_scale", "provenance")
            values = {key: json.loads(text) for key, text in metadata.items() if key in known}
            if values["architecture"] != ARCHITECTURE:
                raise CheckpointError(
                    f"{source}: architecture is {values['architecture']!r}, expected {ARCHITECTURE!r}"
                )
            if values.get("tta", "off") not in TTA_MODES:
                raise CheckpointError(f"{source}: tta is {values['tta']!r}, expected one of {', '.join(TTA_MODES)}")
            pixel_scale = values.get("pixel_scale")
            if pixel_scale is not None and not (
                isinstance(pixel_scale, int | float) and 0 < pixel_scale <= MAX_PIXEL_SCALE
            ):
                raise CheckpointError(
                    f"{source}: pixel_scale is {pixel_scale!r}, expected a number in (0, {MAX_PIXEL_SCALE}]"
                )
            if int(values["format_version"]) > FORMAT_VERSION:
                raise CheckpointError(
                    f"{source}: format version {values['format_version']} is newer than this code ({FORMAT_VERSION})"
                )
            meta = cls(
                scale=str(values["scale"]),
                nc=int(values["nc"]),
                in_channels=int(values["in_channels"]),
                class_names=[str(name) for name in values["class_names"]],
                imgsz=int(values["imgsz"]),
                provenance=dict(values.get("provenance") or {}),
                tta=values.get("tta", "off"),
                pixel_scale=float(pixel_scale) if pixel_scale is not None else None,
                architecture=values["architecture"],
                format_version=int(values["format_version"]),
            )
        except (TypeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
            raise CheckpointError(f"{source}: malformed metadata: {exc}") from exc
        if len(meta.class_names) != meta.nc:
            raise CheckpointError(f"{source}: {len(meta.class_names)} class names for nc={meta.nc}")
        return meta


def default_weights_path() -> Path:
    """The weights shipped with the package (produced by training; may be absent in a fresh checkout)."""
    return Path(__file__).resolve().parent / "weights" / "masenet-n-synthetic.safetensors"


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_header(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) != 8:
                raise CheckpointError(f"{path}: file too short to be a safetensors checkpoint")
            (header_size,) = struct.unpack("<Q", prefix)
            if header_size == 0 or header_size > min(MAX_HEADER_BYTES, path.stat().st_size - 8):
                raise CheckpointError(f"{path}: not a safetensors file (bad header size)")
            header = json.loads(handle.read(header_size).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a safetensors file (unreadable header)") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (header is not an object)")
    return header


def read_metadata(path: str | Path) -> CheckpointMeta:
    """The metadata of a checkpoint, from its header only (no tensors read, no model built)."""
    path = Path(path)
    metadata = _read_header(path).get("__metadata__")
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: safetensors file has no metadata; it was not saved by save_checkpoint")
    return CheckpointMeta.from_metadata(metadata, source=str(path))


def _check_state_dict(model: MASENet, state: dict[str, torch.Tensor]) -> None:
    """Refuse to save a state dict that a freshly built model of the same kind could not load (e.g. a fused one)."""
    import torch

    from model.masenet import build_model

    with torch.device("meta"):
        reference = build_model(scale=model.scale, nc=model.nc, in_channels=model.in_channels).state_dict()
    missing = sorted(set(reference) - set(state))
    unexpected = sorted(set(state) - set(reference))
    if missing or unexpected:
        raise CheckpointError(
            f"model does not match a built masenet-{model.scale} (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); save the unfused training model"
        )


def save_checkpoint(
    path: str | Path,
    model: MASENet,
    *,
    class_names: list[str],
    imgsz: int,
    provenance: dict | None = None,
    half: bool = True,
    tta: str = "off",
    pixel_scale: float | None = None,
) -> Path:
    """Write `model` and its metadata to a safetensors file; floating tensors in float16 when `half`.

    `tta` is the test-time augmentation the file's users get unless they choose another (`model.detector`);
    `pixel_scale` the factor frames are resized by by default (None: the longer side to `imgsz`).
    """
    from safetensors.torch import save_file

    if tta not in TTA_MODES:
        raise CheckpointError(f"tta is {tta!r}, expected one of {', '.join(TTA_MODES)}")
    if pixel_scale is not None and not 0 < pixel_scale <= MAX_PIXEL_SCALE:
        raise CheckpointError(f"pixel_scale is {pixel_scale!r}, expected a number in (0, {MAX_PIXEL_SCALE}]")
    if len(class_names) != model.nc:
        raise CheckpointError(f"{len(class_names)} class names given for a model with nc={model.nc}")
    state = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu")
        if half and tensor.is_floating_point():
            tensor = tensor.half()
        state[name] = tensor.contiguous().clone()
    _check_state_dict(model, state)
    meta = CheckpointMeta(
        scale=model.scale,
        nc=model.nc,
        in_channels=model.in_channels,
        class_names=list(class_names),
        imgsz=int(imgsz),
        provenance=dict(provenance or {}),
        tta=tta,
        pixel_scale=float(pixel_scale) if pixel_scale is not None else None,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=meta.to_metadata())
    return path


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[MASENet, CheckpointMeta]:
    """Build the model the metadata describes and load the tensors strictly: float32, eval mode, on `device`."""
    import torch
    from safetensors.torch import load_file

    from model.masenet import build_model

    path = Path(path)
    meta = read_metadata(path)
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error type for truncated or corrupt data
        raise CheckpointError(f"{path}: corrupt safetensors data: {exc}") from exc
    model = build_model(scale=meta.scale, nc=meta.nc, in_channels=meta.in_channels)
    state = {name: tensor.float() if tensor.is_floating_point() else tensor for name, tensor in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: tensors do not match the metadata (masenet-{meta.scale}, nc={meta.nc}): {exc}"
        ) from exc
    model = model.to(device=torch.device(device), dtype=torch.float32).eval()
    return model, meta
