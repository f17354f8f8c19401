"""The network's forward pass on other runtimes: ONNX export, ONNX Runtime and OpenVINO.

A runtime replaces only `module(batch) -> raw head maps`; letterboxing, test-time views, decoding and NMS stay
the project's torch code (`model.ops`), so every runtime gives the same detections from the same maps. The
graph is the BatchNorm-folded float32 network with dynamic batch, height and width, one input `images`
(B, 3, H, W) in 0..1 and one output per level (B, 4 * reg_max + nc, H / stride, W / stride).

    torch         the fused channels-last network (`model.detector`); CUDA and Grad-CAM always use it
    openvino      OpenVINO's CPU plugin, compiled once for dynamic shapes, one image per inference (bounded
                  memory), float32 inference precision (its default on CPUs with bfloat16 units is bfloat16,
                  which moves raw maps by up to ~15 logits)
    onnxruntime   ONNX Runtime's CPU execution provider
    auto          OpenVINO on the CPU when it is installed, torch otherwise

model/export.py writes the graph for other tools (`masenet export`), with the checkpoint's metadata beside it.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from model.cli_args import RUNTIMES

logger = logging.getLogger(__name__)

INPUT_NAME = "images"
ONNX_OPSET = 17
SAMPLE_SIZE = (384, 480)  # (height, width) traced for export; the axes stay dynamic


class RuntimeUnavailable(RuntimeError):
    """The runtime asked for is not installed or cannot run on this device."""


Forward = Callable[[Tensor], list[Tensor]]


def resolve_runtime(runtime: str, device: torch.device) -> str:
    """The runtime `runtime` means on `device`: auto picks OpenVINO on the CPU when installed, else torch."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; use one of: {', '.join(RUNTIMES)}")
    if runtime == "auto":
        return "openvino" if device.type == "cpu" and _installed("openvino") else "torch"
    if runtime != "torch" and device.type != "cpu":
        raise RuntimeUnavailable(f"the {runtime} runtime runs on the CPU only; use runtime torch on {device}")
    if runtime != "torch" and not _installed(runtime):
        raise RuntimeUnavailable(f"runtime {runtime} is not installed: pip install the project's runtimes extra")
    return runtime


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def export_onnx(module: torch.nn.Module, path: str | Path, dynamic: bool = True) -> Path:
    """Write `module` (float32, eval, on the CPU) as ONNX with one output per level; axes dynamic when asked."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    levels = len(module.strides)
    sample = torch.rand(1, 3, *SAMPLE_SIZE)
    names = [f"level{index}" for index in range(levels)]
    axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}} if dynamic else None
    if axes is not None:
        axes.update({name: {0: "batch", 2: f"{name}_height", 3: f"{name}_width"} for name in names})
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer notes that the input checks in MASENet.forward become constants, and torch that this
        # exporter is the older one: both are expected for this graph.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (sample,),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=names,
            dynamic_axes=axes,
            opset_version=ONNX_OPSET,
        )
    return path


class OnnxRuntimeForward:
    """The forward pass through an ONNX Runtime CPU session."""

    def __init__(self, onnx_path: str | Path, threads: int | None = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

    def __call__(self, batch: Tensor) -> list[Tensor]:
        outputs = self.session.run(None, {INPUT_NAME: batch.float().contiguous().numpy()})
        return [torch.from_numpy(output) for output in outputs]


class OpenVinoForward:
    """The forward pass through OpenVINO's CPU plugin, compiled for dynamic shapes once per calling thread.

    A compiled model with the latency hint runs one inference at a time, so a worker's second lane (a cheap frame
    run beside an expensive one) gets a compiled model of its own: the two then share the cores.
    """

    def __init__(self, model_path: str | Path, precision: str = "f32", threads: int | None = None) -> None:
        import openvino

        # Threads not pinned to cores: with two compiled models running at once, pinned threads of both queue on the
        # same cores (a 480x384 frame beside a 1920x1536 one took 287 ms against 155 ms unpinned, 75 ms alone; alone,
        # pinning changed neither).
        self.config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": precision,
            "PERFORMANCE_HINT": "LATENCY",
            "ENABLE_CPU_PINNING": False,
        }
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = threads
        self.core = openvino.Core()
        self.model = self.core.read_model(str(model_path))
        self._local = threading.local()
        self._request()  # the constructing thread's, compiled now

    def _request(self) -> tuple[Any, int]:
        """This thread's infer request and the number of outputs."""
        made = getattr(self._local, "request", None)
        if made is None:
            compiled = self.core.compile_model(self.model, "CPU", self.config)
            made = self._local.request = (compiled.create_infer_request(), len(compiled.outputs))
        return made

    def __call__(self, batch: Tensor) -> list[Tensor]:
        """One image per inference: with dynamic shapes the CPU plugin's memory grows with the batch (8 images of
        1920x1536: 10.6 GB against 1.6 GB for one) while its time per image does not fall (54 against 50 ms at
        480x384, 932 against 901 ms at 1920x1536), so a batch runs image by image and memory stays bounded."""
        request, count = self._request()
        outputs = range(count)
        per_image = []
        for image in batch.float().contiguous().numpy():
            request.infer({0: image[None]})
            per_image.append([torch.from_numpy(request.get_output_tensor(index).data.copy()) for index in outputs])
        return [torch.cat(level) for level in zip(*per_image, strict=True)]


def build_forward(runtime: str, module: torch.nn.Module, half: bool = False) -> Forward:
    """A `Forward` on `runtime` for the fused float32 `module` (exported to a temporary ONNX file first)."""
    with tempfile.TemporaryDirectory(prefix="masenet-export-") as folder:
        onnx_path = export_onnx(module, Path(folder) / "masenet.onnx")
        if runtime == "onnxruntime":
            return OnnxRuntimeForward(onnx_path)
        if runtime == "openvino":
            return OpenVinoForward(onnx_path, precision="bf16" if half else "f32")
    raise ValueError(f"no forward for runtime {runtime!r}")
