"""`masenet info` (size and cost of a variant) and `masenet bench model` (eager versus optimised forward).

Torch-free at import: the handlers import torch and the model when they run.
"""

from __future__ import annotations

import argparse
import json
import sys

from model.cli_args import add_tta_argument, parse_size


def register(subparsers: argparse._SubParsersAction, bench_subparsers: argparse._SubParsersAction) -> None:
    """Add `info` and `bench model`."""
    info = subparsers.add_parser("info", help="parameters, GFLOPs and strides of a MASENet variant")
    info.add_argument("--scale", default="n", choices=["n", "s", "l", "x"], help="model scale")
    info.add_argument("--nc", type=int, default=3, help="number of classes")
    info.add_argument("--in-channels", type=int, default=3, help="input channels")
    info.add_argument("--imgsz", type=int, default=640, help="square input size for the GFLOPs count")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=_run_info)

    bench = bench_subparsers.add_parser("model", help="time the eager forward against each runtime's inference path")
    bench.add_argument("--scale", default="n", choices=["n", "s", "l", "x"], help="model scale (random init)")
    bench.add_argument("--weights", default=None, help="a checkpoint to benchmark instead of a random-init model")
    bench.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    bench.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes (default 1,8)")
    bench.add_argument(
        "--sizes",
        default="320x256,640x512,1280x1024",
        help="comma-separated WIDTHxHEIGHT frame sizes, resized by the pixel scale (default 320x256,640x512,1280x1024)",
    )
    bench.add_argument(
        "--pixel-scale", type=float, help="resize factor for the frames (default: the checkpoint's; 1 without one)"
    )
    bench.add_argument(
        "--runtimes",
        default="torch,openvino,onnxruntime",
        help="comma-separated paths beside eager: torch (optimised), openvino, onnxruntime (default: all three)",
    )
    bench.add_argument("--iters", type=int, default=10, help="timed iterations per measurement (median reported)")
    bench.add_argument("--warmup", type=int, default=2, help="untimed warm-up iterations per measurement")
    bench.add_argument(
        "--half", action=argparse.BooleanOptionalAction, default=False, help="bfloat16 optimised path (default off)"
    )
    bench.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="channels-last memory format on the optimised path (default: on)",
    )
    bench.add_argument("--compile", action="store_true", help="torch.compile the optimised model")
    add_tta_argument(bench, "both paths (what MASENET_TTA costs): ", default="off")
    bench.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    bench.set_defaults(func=_run_bench)


def model_info(scale: str = "n", nc: int = 3, in_channels: int = 3, imgsz: int = 640) -> dict:
    """Parameters, GFLOPs of one imgsz x imgsz forward (FlopCounterMode; 2 x multiply-accumulates), strides."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from model.masenet import build_model

    model = build_model(scale=scale, nc=nc, in_channels=in_channels).eval()
    parameters = sum(parameter.numel() for parameter in model.parameters())
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, in_channels, imgsz, imgsz))
    return {
        "name": f"masenet-{scale}",
        "scale": scale,
        "nc": nc,
        "in_channels": in_channels,
        "parameters": parameters,
        "imgsz": imgsz,
        "gflops": round(counter.get_total_flops() / 1e9, 2),
        "strides": list(model.strides),
        "reg_max": model.reg_max,
    }


def _run_info(args: argparse.Namespace) -> int:
    info = model_info(scale=args.scale, nc=args.nc, in_channels=args.in_channels, imgsz=args.imgsz)
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"{info['name']}  nc={info['nc']}  in_channels={info['in_channels']}")
    print(f"parameters: {info['parameters']:,}")
    print(f"GFLOPs at {info['imgsz']}x{info['imgsz']}: {info['gflops']:.2f}")
    print(f"strides: {', '.join(str(stride) for stride in info['strides'])}  reg_max: {info['reg_max']}")
    return 0


def _run_bench(args: argparse.Namespace) -> int:
    from model.bench import bench_model, format_table

    batch_sizes = [int(text) for text in args.batch_sizes.split(",") if text.strip()]
    sizes = [parse_size(text.strip()) for text in args.sizes.split(",") if text.strip()]
    rows = bench_model(
        scale=args.scale,
        weights=args.weights,
        device=args.device,
        batch_sizes=batch_sizes,
        sizes=sizes,
        iters=args.iters,
        warmup=args.warmup,
        half=args.half,
        compile=args.compile,
        channels_last=args.channels_last,
        tta=args.tta,
        runtimes=[text.strip() for text in args.runtimes.split(",") if text.strip()],
        pixel_scale=args.pixel_scale,
        progress=lambda message: print(message, file=sys.stderr, flush=True),
    )
    if args.json:
        print(json.dumps([row.__dict__ for row in rows]))
    else:
        print(format_table(rows))
    return 0
