"""`masenet export`: the network for other runtimes (ONNX, OpenVINO IR), its metadata beside it (model/export.py)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser("export", help="write the network as ONNX or OpenVINO IR (raw head maps out)")
    export.add_argument("--weights", help="a .safetensors checkpoint (default: the shipped weights)")
    export.add_argument("--format", required=True, choices=("onnx", "openvino"), help="onnx or openvino (IR .xml/.bin)")
    export.add_argument("--out", default="runs/export", help="a folder, or a file path ending .onnx / .xml")
    export.add_argument(
        "--dynamic", action="store_true", help="dynamic batch, height and width (default: fixed 1x3x384x480)"
    )
    export.add_argument("--half", action="store_true", help="float16 weights (OpenVINO IR; ONNX stays float32)")
    export.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from model.export import export

    for path in export(args.weights, args.out, args.format, dynamic=args.dynamic, half=args.half):
        print(path)
    return 0
