"""`masenet train`, `masenet val` and `masenet predict` (torch is imported inside the handlers)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from model.cli_args import add_runtime_argument, add_tta_argument

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MIN_DRAWN_BOX = 12


def register(subparsers: argparse._SubParsersAction, bench_subparsers: argparse._SubParsersAction) -> None:
    """Add train, val and predict."""
    train = subparsers.add_parser("train", help="train MASENet on a YOLO dataset (data.yaml)")
    train.add_argument("--data", help="data.yaml (path, train, val, names); not needed with --resume")
    train.add_argument("--scale", default="n", choices=("n", "s", "l", "x"), help="model scale (default n)")
    train.add_argument("--imgsz", type=int, default=320, help="training image size, longer side (default 320)")
    train.add_argument(
        "--serve-imgsz",
        type=int,
        help="inference size written into the exported checkpoint (default: --imgsz); the network is fully "
        "convolutional, so a model trained on small frames at native pixel scale can serve larger frames",
    )
    train.add_argument(
        "--serve-scale",
        type=float,
        help="pixel scale written into the exported checkpoint: serving resizes every frame by it (default: the "
        "scale training saw, --imgsz over the median longer side of the training frames)",
    )
    train.add_argument("--epochs", type=int, default=100, help="epochs (default 100)")
    train.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    train.add_argument("--workers", type=int, default=2, help="data-loading processes, 0 loads inline (default 2)")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    train.add_argument("--out", default="runs/train/exp", help="output folder (default runs/train/exp)")
    train.add_argument("--resume", action="store_true", help="continue from OUT/weights/last.pt")
    train.add_argument("--weights", help="initialise from a .safetensors checkpoint (fine-tuning)")
    train.add_argument("--time-limit", type=float, help="stop cleanly after this many minutes (schedule fits it)")
    train.add_argument("--lr0", type=float, help="initial learning rate (default: chosen with the optimiser)")
    train.add_argument("--optimizer", default="auto", choices=("auto", "sgd", "adamw"), help="default auto")
    train.add_argument("--val-every", type=int, default=1, help="validate every N epochs (default 1)")
    train.add_argument("--mosaic", type=float, default=0.5, help="mosaic probability (default 0.5)")
    train.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    train.add_argument(
        "--threads", type=int, help="torch CPU threads (default: one per core; 1 is steadier on a busy machine)"
    )
    train.add_argument(
        "--bf16",
        action="store_true",
        help="on a CPU: bfloat16 mixed precision and channels-last memory (faster on CPUs with AVX-512 BF16 or "
        "AMX); CUDA always trains in mixed precision (bfloat16, or float16 on GPUs without it)",
    )
    train.add_argument(
        "--cls-target",
        default="iou",
        choices=("iou", "presence"),
        help="class target of a matched anchor: its box IoU (default, as in YOLOv8 and later) or 1 for the best "
        "anchor of each target (presence: scores say only whether a target is there)",
    )
    train.add_argument(
        "--freeze",
        nargs="+",
        default=[],
        metavar="MODULE",
        help="module paths whose weights stay as loaded, e.g. backbone neck head.masem head.fusions "
        "head.box_branches to train only the class branches of --weights",
    )
    train.set_defaults(func=_train)

    val = subparsers.add_parser("val", help="evaluate weights on a dataset split (mAP, P, R, Pd, Fa)")
    val.add_argument("--data", required=True, help="data.yaml")
    val.add_argument("--weights", help="a .safetensors checkpoint (default: the shipped weights)")
    add_resize_arguments(val)
    val.add_argument("--conf", type=float, default=0.001, help="lowest score kept for mAP (default 0.001)")
    val.add_argument("--operating-conf", type=float, default=0.25, help="confidence for P, R, Pd, Fa (0.25)")
    val.add_argument("--iou", type=float, default=0.6, help="NMS IoU threshold (default 0.6)")
    val.add_argument("--distance", type=float, default=3.0, help="Pd match distance in pixels (default 3)")
    val.add_argument("--split", default="val", help="split to evaluate (default val)")
    val.add_argument("--batch", type=int, default=8, help="images per forward pass (default 8)")
    val.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    add_tta_argument(val)
    add_runtime_argument(val)
    val.add_argument("--json", action="store_true", help="print the full result as JSON instead of a table")
    val.add_argument("--plots", help="folder for pr_curve.png and pd_fa_curve.png (Pd against false alarms)")
    val.set_defaults(func=_val)

    predict = subparsers.add_parser("predict", help="detect targets in image files or folders")
    predict.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders of images")
    predict.add_argument("--weights", help="a .safetensors checkpoint (default: the shipped weights)")
    predict.add_argument("--conf", type=float, default=0.25, help="confidence threshold (default 0.25)")
    predict.add_argument("--iou", type=float, default=0.45, help="NMS IoU threshold (default 0.45)")
    predict.add_argument("--max-det", type=int, default=300, help="most detections per image (default 300)")
    add_resize_arguments(predict)
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    add_tta_argument(predict)
    add_runtime_argument(predict)
    predict.add_argument("--format", default="json", choices=("json", "text"), help="output format (default json)")
    predict.add_argument("--save", help="folder for annotated PNGs")
    predict.set_defaults(func=_predict)


def add_resize_arguments(parser: argparse.ArgumentParser) -> None:
    """--imgsz and --pixel-scale, one or the other; neither: the checkpoint's pixel scale (or its imgsz)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--imgsz", type=int, help="resize every frame's longer side to this size")
    group.add_argument(
        "--pixel-scale", type=float, help="resize every frame by this factor (default: the checkpoint's pixel scale)"
    )


def _train(args: argparse.Namespace) -> int:
    from model.train.config import TrainConfig
    from model.train.trainer import train

    if not args.data and not args.resume:
        raise ValueError("--data is required (a data.yaml), unless --resume continues an earlier run")
    config = TrainConfig(
        data=args.data or "",
        scale=args.scale,
        imgsz=args.imgsz,
        serve_imgsz=args.serve_imgsz,
        serve_scale=args.serve_scale,
        epochs=args.epochs,
        batch=args.batch,
        workers=args.workers,
        device=args.device,
        out=args.out,
        resume=args.resume,
        weights=args.weights,
        time_limit=args.time_limit,
        lr0=args.lr0,
        optimizer=args.optimizer,
        val_every=args.val_every,
        mosaic=args.mosaic,
        seed=args.seed,
        threads=args.threads,
        bf16=args.bf16,
        cls_target=args.cls_target,
        freeze=tuple(args.freeze),
    )
    result = train(config)
    metrics = ", ".join(f"{key} {value:.4f}" for key, value in result.metrics.items() if not math.isnan(value))
    print(f"trained {result.epochs_completed} epochs in {result.wall_seconds / 60:.1f} min; best: {metrics}")
    print(f"weights: {result.exported} (resume state: {result.last})")
    return 0


def _weights_path(weights: str | None) -> Path:
    from model.checkpoint import default_weights_path
    from model.errors import CheckpointError

    path = Path(weights) if weights else default_weights_path()
    if not path.is_file():
        hint = "" if weights else " (no shipped weights in this installation)"
        raise CheckpointError(
            f"weights not found: {path}{hint}; pass --weights FILE.safetensors, e.g. runs/train/exp/weights/"
            "best.safetensors from `masenet train`"
        )
    return path


def _json_ready(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_ready(item) for item in value]
    return value


def _detector(args: argparse.Namespace) -> Any:
    """The Detector `val` and `predict` run: their weights, device, resize rule, views and runtime."""
    from model.detector import Detector

    return Detector(
        _weights_path(args.weights),
        device=args.device,
        imgsz=args.imgsz,
        pixel_scale=args.pixel_scale,
        tta=args.tta,
        runtime=args.runtime,
    )


def _val(args: argparse.Namespace) -> int:
    from model.train.data import YoloDataset
    from model.train.evaluate import evaluate, format_table, plot_pd_fa_curve, plot_pr_curve

    detector = _detector(args)
    dataset = YoloDataset(args.data, args.split, imgsz=args.imgsz or detector.imgsz, augment=None, cache=False)
    if dataset.names != detector.class_names:
        print(f"note: dataset classes {dataset.names} differ from the checkpoint's {detector.class_names}")
    result = evaluate(
        detector,
        dataset,
        conf=args.conf,
        iou=args.iou,
        operating_conf=args.operating_conf,
        imgsz=args.imgsz,
        batch_size=args.batch,
        distance=args.distance,
        progress=True,
    )
    if args.plots:
        plot_pr_curve(result, Path(args.plots) / "pr_curve.png")
        plot_pd_fa_curve(result, Path(args.plots) / "pd_fa_curve.png")
    if args.json:
        print(json.dumps(_json_ready(result), indent=2))
    else:
        print(format_table(result))
    return 0


def expand_paths(paths: list[str]) -> list[Path]:
    """Files as given, folders expanded to the images in them (sorted); a missing path is an error."""
    files: list[Path] = []
    for entry in paths:
        path = Path(entry)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"no images in folder {path}")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return files


def draw_detections(frame: Any, detections: list[dict], path: Path) -> None:
    """Save the frame with its boxes and scores; boxes smaller than MIN_DRAWN_BOX px are drawn enlarged."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(frame).convert("RGB")
    draw = ImageDraw.Draw(image)
    for detection in detections:
        x1, y1, x2, y2 = detection["box"]
        centre_x, centre_y = (x1 + x2) / 2, (y1 + y2) / 2
        half_w, half_h = max(x2 - x1, MIN_DRAWN_BOX) / 2, max(y2 - y1, MIN_DRAWN_BOX) / 2
        box = (centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h)
        draw.rectangle(box, outline=(255, 40, 40), width=1)
        draw.text(
            (box[0], max(0, box[1] - 11)), f"{detection['class_name']} {detection['score']:.2f}", fill=(255, 230, 0)
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _predict(args: argparse.Namespace) -> int:
    from model.imaging import load_image, to_rgb8

    files = expand_paths(args.paths)
    detector = _detector(args)
    results = []
    stems = [path.stem for path in files]
    for index, path in enumerate(files):
        frame = to_rgb8(load_image(str(path)))
        detections = detector.detect([frame], conf=args.conf, iou=args.iou, max_det=args.max_det)[0]
        results.append(
            {"file": str(path), "width": int(frame.shape[1]), "height": int(frame.shape[0]), "detections": detections}
        )
        if args.save:
            name = path.stem if stems.count(path.stem) == 1 else f"{path.stem}_{index}"
            draw_detections(frame, detections, Path(args.save) / f"{name}.png")
    if args.format == "json":
        print(json.dumps(results, indent=2))
    else:
        for item in results:
            print(f"{item['file']} ({item['width']}x{item['height']}): {len(item['detections'])} detections")
            for d in item["detections"]:
                box = ", ".join(f"{value:.1f}" for value in d["box"])
                print(f"  {d['class_name']} {d['score']:.3f} [{box}]")
    return 0
