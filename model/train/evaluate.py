"""Evaluation of a detector on a dataset split: COCO mAP, P/R, infrared Pd/Fa, PR curves.

`evaluate` runs the same inference path as the worker (model.detector.Detector: letterbox, forward, decode,
NMS, boxes back in original pixels) on the split's original frames and scores the results against the labels
in those pixels. mAP uses every detection above `conf` (0.001 by default, as mAP needs the whole ranking);
precision, recall, Pd and false alarms are taken at the operating confidence `operating_conf` (0.25, the
default of `masenet predict` and the service). The results.csv helpers and the PNG plots live here too.
"""

from __future__ import annotations

import csv
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model.train.metrics import (
    SIZE_BUCKETS,
    Detections,
    GroundTruth,
    best_pd_within,
    coco_map,
    detection_rate,
    pd_fa_curve,
    pr_curves,
    precision_recall_at,
)

if TYPE_CHECKING:
    import torch

    from model.detector import Detector
    from model.train.data import YoloDataset

logger = logging.getLogger(__name__)

DEFAULT_CONF = 0.001
DEFAULT_IOU = 0.6
DEFAULT_OPERATING_CONF = 0.25


def fitness(metrics: dict[str, Any]) -> float:
    """The single number that picks the best checkpoint: 0.1 * mAP50 + 0.9 * mAP50-95."""
    overall = metrics["all"]
    return 0.1 * overall["map50"] + 0.9 * overall["map50_95"]


def _as_detector(detector_or_model: Detector | torch.nn.Module, names: list[str], imgsz: int) -> Detector:
    from model.detector import Detector

    if isinstance(detector_or_model, Detector):
        return detector_or_model
    device = next(detector_or_model.parameters()).device
    return Detector(
        model=detector_or_model,
        device=str(device),
        half=False,
        fuse=True,
        channels_last=False,
        class_names=names,
        imgsz=imgsz,
    )


def predict_split(
    detector: Detector,
    dataset: YoloDataset,
    conf: float = DEFAULT_CONF,
    iou: float = DEFAULT_IOU,
    max_det: int = 300,
    imgsz: int | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> list[Detections]:
    """Detections for every image of the split, in original pixels; `progress` shows a bar on stderr."""
    from tqdm import tqdm

    predictions = []
    bar = tqdm(total=len(dataset), desc="val", unit="img", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    for start in range(0, len(dataset), batch_size):
        frames = [dataset.load_frame(index) for index in range(start, min(start + batch_size, len(dataset)))]
        for found in detector.detect(frames, conf=conf, iou=iou, max_det=max_det, imgsz=imgsz):
            predictions.append(
                Detections(
                    boxes=np.array([d["box"] for d in found], dtype=np.float64).reshape(-1, 4),
                    scores=np.array([d["score"] for d in found], dtype=np.float64),
                    classes=np.array([d["class_id"] for d in found], dtype=np.int64),
                )
            )
        bar.update(len(frames))
    bar.close()
    return predictions


def _only_class(items: Sequence[Detections | GroundTruth], class_id: int) -> list:
    chosen = []
    for item in items:
        keep = item.classes == class_id
        if isinstance(item, Detections):
            chosen.append(Detections(item.boxes[keep], item.scores[keep], item.classes[keep]))
        else:
            sizes = item.sizes[keep] if item.sizes is not None else None
            chosen.append(GroundTruth(item.boxes[keep], item.classes[keep], sizes))
    return chosen


def _plain(value: Any) -> Any:
    """numpy scalars to float, NaN kept (JSON writers turn it into null where needed)."""
    return float(value) if isinstance(value, (np.floating, np.integer, float, int)) else value


def score_predictions(
    predictions: Sequence[Detections],
    targets: Sequence[GroundTruth],
    names: list[str],
    operating_conf: float = DEFAULT_OPERATING_CONF,
    distance: float = 3.0,
    max_det: int = 300,
) -> dict[str, Any]:
    """All metrics from per-image predictions and ground truth (see evaluate for the layout)."""
    num_classes = len(names)
    mean_ap = coco_map(predictions, targets, num_classes, max_det=max_det)
    pr = precision_recall_at(predictions, targets, num_classes, conf=operating_conf)
    infrared = detection_rate(predictions, targets, conf=operating_conf, distance=distance)
    curves = pr_curves(predictions, targets, num_classes)
    per_class = []
    for class_id, name in enumerate(names):
        mine = detection_rate(
            _only_class(predictions, class_id), _only_class(targets, class_id), conf=operating_conf, distance=distance
        )
        per_class.append(
            {
                "class": name,
                "targets": int(mine["targets"]),
                "precision": _plain(pr["precision"][class_id]),
                "recall": _plain(pr["recall"][class_id]),
                "map50": _plain(mean_ap["map50"][class_id]),
                "map50_95": _plain(mean_ap["map50_95"][class_id]),
                "pd": _plain(mine["pd"]),
                "fa_per_frame": _plain(mine["fa_per_frame"]),
                "pd_by_size": {key: _plain(value) for key, value in mine["pd_by_size"].items()},
            }
        )
    overall = {
        "class": "all",
        "targets": int(infrared["targets"]),
        "precision": _plain(pr["all_precision"]),
        "recall": _plain(pr["all_recall"]),
        "map50": _plain(mean_ap["all_map50"]),
        "map50_95": _plain(mean_ap["all_map50_95"]),
        "pd": _plain(infrared["pd"]),
        "fa_per_frame": _plain(infrared["fa_per_frame"]),
        "pd_by_size": {key: _plain(value) for key, value in infrared["pd_by_size"].items()},
        "targets_by_size": dict(infrared["targets_by_size"]),
    }
    return {
        "images": len(targets),
        "operating_conf": operating_conf,
        "distance": distance,
        "per_class": per_class,
        "all": overall,
        "pr_curve": {"recall": curves["recall"].tolist(), "precision": curves["precision"].tolist(), "names": names},
        "pd_fa_curve": pd_fa_curve(predictions, targets, distance=distance),
    }


def evaluate(
    detector_or_model: Detector | torch.nn.Module,
    dataset: YoloDataset,
    conf: float = DEFAULT_CONF,
    iou: float = DEFAULT_IOU,
    operating_conf: float = DEFAULT_OPERATING_CONF,
    max_det: int = 300,
    imgsz: int | None = None,
    batch_size: int = 8,
    distance: float = 3.0,
    progress: bool = False,
) -> dict[str, Any]:
    """Score a Detector (or a bare MASENet, wrapped in one on its own device) on a dataset split.

    `progress` shows a bar over the images on stderr (what `masenet val` does; the trainer has its own).

    Returns {"images", "operating_conf", "distance", "per_class": [row per class], "all": row, "pr_curve":
    {"recall", "precision" (per class), "names"}, "fitness", "seconds"}; a row holds targets, precision,
    recall, map50, map50_95, pd, fa_per_frame and pd_by_size {tiny, small, medium} (NaN where undefined).
    """
    import time

    started = time.perf_counter()
    detector = _as_detector(detector_or_model, dataset.names, imgsz or dataset.imgsz)
    predictions = predict_split(
        detector, dataset, conf=conf, iou=iou, max_det=max_det, imgsz=imgsz, batch_size=batch_size, progress=progress
    )
    targets = []
    for index in range(len(dataset)):
        boxes, classes = dataset.ground_truth(index)
        targets.append(GroundTruth(boxes, classes, dataset.target_sizes(index)))
    result = score_predictions(predictions, targets, dataset.names, operating_conf, distance, max_det)
    result["fitness"] = fitness(result)
    result["seconds"] = time.perf_counter() - started
    return result


def overall_metrics(result: dict[str, Any] | None) -> dict[str, float]:
    """The overall row as plain floats (what goes into checkpoints, CSV rows and provenance)."""
    if not result:
        return {}
    overall = result["all"]
    values = {key: overall[key] for key in ("precision", "recall", "map50", "map50_95", "pd", "fa_per_frame")}
    values.update({f"pd_{name}": value for name, value in overall["pd_by_size"].items()})
    return {key: float(value) for key, value in values.items()}


def write_results(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write CSV rows (results.csv: one dict per epoch; steps.csv: one per logged iteration window)."""
    if not rows:
        return
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a CSV written by write_results (none when the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def format_table(result: dict[str, Any]) -> str:
    """A fixed-width table: one row per class and `all`."""
    buckets = [name for name, _, _ in SIZE_BUCKETS]
    header = ["class", "targets", "P", "R", "mAP50", "mAP50-95", "Pd", "Fa/frame", *(f"Pd<{b}>" for b in buckets)]
    rows = [header]
    for row in [*result["per_class"], result["all"]]:
        rows.append(
            [
                row["class"],
                str(row["targets"]),
                *(_cell(row[key]) for key in ("precision", "recall", "map50", "map50_95", "pd", "fa_per_frame")),
                *(_cell(row["pd_by_size"][b]) for b in buckets),
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(r, widths, strict=True)) for r in rows]
    note = (
        f"{result['images']} images; P, R, Pd and Fa at confidence {result['operating_conf']:g}; Pd within "
        f"{result['distance']:g} px; sizes: tiny <= 3 px < small <= 6 px < medium"
    )
    curve = result["pd_fa_curve"]
    best = best_pd_within(curve, 1.0)
    if best is None:
        span = f"{curve['conf'][0]:g} to {curve['conf'][-1]:g}"
        note += f"\nno confidence from {span} keeps false alarms at or below 1 per frame"
    else:
        note += f"\nbest Pd at <= 1 false alarm per frame: {best[1]:.3f} (confidence {best[0]:g})"
    return "\n".join([*lines, note])


def _save_figure(figure: Any, axes: Any, path: str | Path, legend: str) -> Path:
    """Grid and legend on `axes`, then write the figure to `path` (folders made) and close it."""
    from matplotlib import pyplot as plt

    axes.grid(alpha=0.3)
    axes.legend(loc=legend)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, bbox_inches="tight")
    plt.close(figure)
    return path


def plot_pr_curve(result: dict[str, Any], path: str | Path) -> Path:
    """Precision-recall curves at IoU 0.5, per class and their mean, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    curve = result["pr_curve"]
    recall = np.asarray(curve["recall"])
    precision = np.asarray(curve["precision"], dtype=np.float64).reshape(-1, len(recall))
    figure, axes = plt.subplots(figsize=(6, 5), dpi=100)
    for name, values in zip(curve["names"], precision, strict=True):
        if np.isfinite(values).any():
            axes.plot(recall, values, linewidth=1, label=str(name))
    if len(precision) > 1 and np.isfinite(precision).any():
        axes.plot(recall, np.nanmean(precision, axis=0), linewidth=2.5, color="black", label="all classes")
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    axes.set_title(f"PR curve, IoU 0.5 (mAP50 {result['all']['map50']:.3f})")
    return _save_figure(figure, axes, path, legend="lower left")


def plot_pd_fa_curve(result: dict[str, Any], path: str | Path) -> Path:
    """Pd against false alarms per frame over confidences 0.05 to 0.95 (the infrared ROC), to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    curve = result["pd_fa_curve"]
    figure, axes = plt.subplots(figsize=(6, 5), dpi=100)
    axes.plot(curve["fa_per_frame"], curve["pd"], marker="o", markersize=3, linewidth=1.5, color="tab:blue")
    for conf, fa, pd in zip(curve["conf"], curve["fa_per_frame"], curve["pd"], strict=True):
        if round(conf * 20) % 4 == 1:  # label every fourth point: 0.05, 0.25, 0.45, ...
            axes.annotate(f"{conf:g}", (fa, pd), textcoords="offset points", xytext=(4, -10), fontsize=7)
    operating = result["operating_conf"]
    axes.axvline(1.0, color="grey", linestyle="--", linewidth=1, label="1 false alarm per frame")
    axes.plot([result["all"]["fa_per_frame"]], [result["all"]["pd"]], "r*", markersize=10, label=f"conf {operating:g}")
    axes.set_xscale("symlog", linthresh=0.1)
    axes.set(xlabel="false alarms per frame", ylabel="Pd (probability of detection)", xlim=(0, None), ylim=(0, 1.02))
    axes.set_title(f"Pd vs false alarms ({result['images']} frames, centre within {result['distance']:g} px)")
    return _save_figure(figure, axes, path, legend="lower right")


def plot_losses(rows: list[dict[str, Any]], path: str | Path, steps: list[dict[str, Any]] | None = None) -> None:
    """Training losses, per logged iteration window (steps.csv rows) when given, else per epoch (results.csv
    rows), and validation mAP / Pd per epoch where measured, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    def column(name: str, table: list[dict[str, Any]] = rows) -> np.ndarray:
        return np.array([float(row[name]) if row.get(name) not in (None, "") else np.nan for row in table])

    epochs = column("epoch")
    figure, (losses, scores) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    table, axis = (steps, "iteration") if steps else (rows, "epoch")
    marker = "." if len(table) < 60 else ""
    for name in ("box", "cls", "dfl"):
        losses.plot(column(axis, table), column(f"train/{name}", table), marker=marker, label=name)
    losses.set(xlabel=axis, ylabel="loss", title="training losses")
    losses.legend()
    for name in ("map50", "map50_95", "pd"):
        values = column(f"val/{name}")
        measured = np.isfinite(values)
        scores.plot(epochs[measured], values[measured], marker=".", label=name)
    scores.set(xlabel="epoch", ylim=(0, 1.02), title="validation (EMA weights)")
    scores.legend()
    for axes in (losses, scores):
        axes.grid(alpha=0.3)
    figure.savefig(path, bbox_inches="tight")
    plt.close(figure)
