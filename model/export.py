"""`masenet export`: the checkpoint's fused network as ONNX or OpenVINO IR for other tools, metadata beside it.

The graph is the one the runtimes run (model/runtimes.py): BatchNorm-folded float32, raw head maps out.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from model.checkpoint import default_weights_path, file_sha256, read_metadata
from model.detector import Detector
from model.runtimes import INPUT_NAME, export_onnx

EXPORT_FORMATS = ("onnx", "openvino")


def export(weights: str | Path | None, out: str | Path, export_format: str, dynamic: bool, half: bool) -> list[Path]:
    """The checkpoint's fused network as ONNX or OpenVINO IR, with `<name>.json` metadata beside it.

    `half` stores the weights in float16 (OpenVINO IR; ONNX stays float32 so every ONNX runtime can run it).
    """
    if export_format not in EXPORT_FORMATS:
        raise ValueError(f"unknown format {export_format!r}; use one of: {', '.join(EXPORT_FORMATS)}")
    source = Path(weights) if weights is not None else default_weights_path()
    detector = Detector(source, device="cpu", channels_last=False, runtime="torch")
    module = detector.float_module()
    out = Path(out)
    suffix = ".onnx" if export_format == "onnx" else ".xml"
    target = out if out.suffix == suffix else out / f"{source.stem}{suffix}"
    written = []
    if export_format == "onnx":
        written.append(export_onnx(module, target, dynamic=dynamic))
    else:
        import openvino

        with tempfile.TemporaryDirectory(prefix="masenet-export-") as folder:
            model = openvino.convert_model(str(export_onnx(module, Path(folder) / "masenet.onnx", dynamic=dynamic)))
            target.parent.mkdir(parents=True, exist_ok=True)
            openvino.save_model(model, str(target), compress_to_fp16=half)
        written += [target, target.with_suffix(".bin")]
    meta = read_metadata(source)
    metadata = {
        "source": str(source),
        "source_sha256": file_sha256(source),
        "format": export_format,
        "input": {"name": INPUT_NAME, "layout": "NCHW", "range": "0..1 RGB, letterboxed, sides multiples of 32"},
        "outputs": "raw head maps per level: (B, 4 * reg_max + nc, H / stride, W / stride); decode with model.ops",
        "strides": list(detector.strides),
        "reg_max": detector.reg_max,
        "class_names": meta.class_names,
        "pixel_scale": meta.pixel_scale,
        "imgsz": meta.imgsz,
        "tta": meta.tta,
        "dynamic": dynamic,
        "weights_float16": bool(half and export_format == "openvino"),
    }
    metadata_path = target.with_suffix(".json")
    metadata_path.write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    return [*written, metadata_path]
