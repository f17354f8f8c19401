"""Detection metrics: COCO mAP, precision/recall at an operating confidence, PR curves, and infrared Pd/Fa.

All functions take per-image lists: `Detections` (boxes xyxy in pixels, scores, class ids) and `GroundTruth`
(boxes, class ids, optionally the true target sizes). Nothing here needs torch.

- mAP@50 and mAP@50-95 come from COCO evaluation (faster-coco-eval, pycocotools as a fallback), per class
  and as the mean over classes that have ground truth.
- Precision and recall at a confidence use COCO-style greedy matching at IoU 0.5 within each image and class:
  detections in descending score take the unmatched ground truth they overlap most.
- Infrared small-target metrics follow the usual definitions of that field. A target is detected (Pd) when a
  detection's centre lies within `distance` pixels of its centre; detections are matched one to one, best
  score first, to the nearest free target, class-agnostic. Every detection matching no target is a false
  alarm; Fa is reported per frame. Pd is also split by target size (the true size when the dataset knows it,
  else the larger side of the box): tiny <= 3 px < small <= 6 px < medium.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

SIZE_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("tiny", 0.0, 3.0),
    ("small", 3.0, 6.0),
    ("medium", 6.0, float("inf")),
)
RECALL_GRID = np.linspace(0.0, 1.0, 101)


@dataclass
class Detections:
    """Detections of one image: boxes (N, 4) x1 y1 x2 y2 in pixels, scores (N,), class ids (N,)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        self.classes = np.asarray(self.classes, dtype=np.int64).reshape(-1)
        if not len(self.boxes) == len(self.scores) == len(self.classes):
            raise ValueError("boxes, scores and classes must have the same length")

    def above(self, conf: float) -> Detections:
        keep = self.scores >= conf
        return Detections(self.boxes[keep], self.scores[keep], self.classes[keep])


@dataclass
class GroundTruth:
    """Ground truth of one image: boxes (M, 4) xyxy pixels, class ids (M,), optional true sizes (M,) in pixels."""

    boxes: np.ndarray
    classes: np.ndarray
    sizes: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        self.classes = np.asarray(self.classes, dtype=np.int64).reshape(-1)
        if len(self.boxes) != len(self.classes):
            raise ValueError("boxes and classes must have the same length")
        if self.sizes is not None:
            self.sizes = np.asarray(self.sizes, dtype=np.float64).reshape(-1)
            if len(self.sizes) != len(self.boxes):
                raise ValueError("sizes must have one value per box")

    def target_sizes(self) -> np.ndarray:
        """True target sizes when known, else the larger side of each box."""
        if self.sizes is not None:
            return self.sizes
        return np.maximum(self.boxes[:, 2] - self.boxes[:, 0], self.boxes[:, 3] - self.boxes[:, 1])


def pairwise_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU of (N, 4) and (M, 4) xyxy boxes: (N, M)."""
    top_left = np.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    bottom_right = np.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    intersection = np.clip(bottom_right - top_left, 0, None).prod(axis=2)
    area_a = np.clip(boxes_a[:, 2:] - boxes_a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(boxes_b[:, 2:] - boxes_b[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - intersection
    return intersection / np.maximum(union, 1e-12)


def _check_lengths(predictions: Sequence[Detections], targets: Sequence[GroundTruth]) -> None:
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} prediction lists for {len(targets)} images")


def match_detections(
    predictions: Sequence[Detections], targets: Sequence[GroundTruth], iou_threshold: float = 0.5
) -> list[np.ndarray]:
    """Per image, a boolean (N,) array: is each detection a true positive at `iou_threshold` (same class)."""
    _check_lengths(predictions, targets)
    flags = []
    for detections, truth in zip(predictions, targets, strict=True):
        is_true = np.zeros(len(detections.scores), dtype=bool)
        if len(detections.scores) and len(truth.classes):
            iou = pairwise_iou(detections.boxes, truth.boxes)
            iou[detections.classes[:, None] != truth.classes[None, :]] = -1.0
            taken = np.zeros(len(truth.classes), dtype=bool)
            for index in np.argsort(-detections.scores, kind="stable"):
                candidates = np.where(taken, -1.0, iou[index])
                best = int(candidates.argmax())
                if candidates[best] >= iou_threshold:
                    taken[best] = True
                    is_true[index] = True
        flags.append(is_true)
    return flags


def _pooled(
    predictions: Sequence[Detections], flags: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scores = np.concatenate([d.scores for d in predictions]) if predictions else np.zeros(0)
    classes = np.concatenate([d.classes for d in predictions]) if predictions else np.zeros(0, dtype=np.int64)
    is_true = np.concatenate(flags) if flags else np.zeros(0, dtype=bool)
    return scores, classes, is_true


def precision_recall_at(
    predictions: Sequence[Detections],
    targets: Sequence[GroundTruth],
    num_classes: int,
    conf: float = 0.25,
    iou_threshold: float = 0.5,
) -> dict[str, np.ndarray | float]:
    """Precision and recall per class (arrays of length num_classes) and over all classes at confidence `conf`.

    A class with no detections has precision 0; a class with no ground truth has recall NaN (and is left out of
    the overall figures, which pool all detections and targets).
    """
    flags = match_detections(predictions, targets, iou_threshold)
    scores, classes, is_true = _pooled(predictions, flags)
    kept = scores >= conf
    gt_classes = np.concatenate([t.classes for t in targets]) if targets else np.zeros(0, dtype=np.int64)
    precision = np.zeros(num_classes)
    recall = np.full(num_classes, np.nan)
    for class_id in range(num_classes):
        mine = kept & (classes == class_id)
        true_positives = int(is_true[mine].sum())
        precision[class_id] = true_positives / mine.sum() if mine.any() else 0.0
        gt_count = int((gt_classes == class_id).sum())
        if gt_count:
            recall[class_id] = true_positives / gt_count
    total_true = int(is_true[kept].sum())
    overall_precision = total_true / kept.sum() if kept.any() else 0.0
    overall_recall = total_true / len(gt_classes) if len(gt_classes) else float("nan")
    return {
        "precision": precision,
        "recall": recall,
        "all_precision": float(overall_precision),
        "all_recall": float(overall_recall),
    }


def pr_curves(
    predictions: Sequence[Detections], targets: Sequence[GroundTruth], num_classes: int, iou_threshold: float = 0.5
) -> dict[str, np.ndarray]:
    """Precision on a fixed recall grid (101 points, 0..1) per class, at `iou_threshold`, for plotting.

    Returns `recall` (101,) and `precision` (num_classes, 101): the precision envelope (best precision at
    recall >= r), zero beyond the highest recall reached; a class without ground truth is all NaN.
    """
    flags = match_detections(predictions, targets, iou_threshold)
    scores, classes, is_true = _pooled(predictions, flags)
    gt_classes = np.concatenate([t.classes for t in targets]) if targets else np.zeros(0, dtype=np.int64)
    curves = np.full((num_classes, len(RECALL_GRID)), np.nan)
    for class_id in range(num_classes):
        gt_count = int((gt_classes == class_id).sum())
        if not gt_count:
            continue
        mine = classes == class_id
        order = np.argsort(-scores[mine], kind="stable")
        hits = is_true[mine][order]
        true_cum = np.cumsum(hits)
        recall = true_cum / gt_count
        precision = true_cum / np.arange(1, len(hits) + 1)
        envelope = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
        positions = np.searchsorted(recall, RECALL_GRID, side="left")
        curves[class_id] = np.where(positions < len(envelope), envelope[np.minimum(positions, len(envelope) - 1)], 0)
    return {"recall": RECALL_GRID.copy(), "precision": curves}


def _coco_backend():
    """Constructors of the COCO ground truth and evaluator (faster-coco-eval's messages go to the debug log)."""
    try:
        from faster_coco_eval import COCO, COCOeval_faster

        def truth(dataset: dict):
            return COCO(dataset, print_function=logger.debug)

        def evaluator(truth_api, result_api):
            return COCOeval_faster(truth_api, result_api, iouType="bbox", print_function=logger.debug)

    except ImportError:  # pragma: no cover - exercised only where faster-coco-eval is missing
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        def truth(dataset: dict):
            api = COCO()
            api.dataset = dataset
            api.createIndex()
            return api

        def evaluator(truth_api, result_api):
            return COCOeval(truth_api, result_api, iouType="bbox")

    return truth, evaluator


def coco_map(
    predictions: Sequence[Detections], targets: Sequence[GroundTruth], num_classes: int, max_det: int = 300
) -> dict[str, np.ndarray | float]:
    """COCO box AP per class: `map50` and `map50_95` arrays (NaN for classes without ground truth), and their
    means over classes with ground truth as `all_map50` and `all_map50_95` (0 when there is no ground truth)."""
    _check_lengths(predictions, targets)
    per_class_50 = np.full(num_classes, np.nan)
    per_class_50_95 = np.full(num_classes, np.nan)
    if not any(len(t.classes) for t in targets):
        return {"map50": per_class_50, "map50_95": per_class_50_95, "all_map50": 0.0, "all_map50_95": 0.0}
    make_truth, make_evaluator = _coco_backend()
    images, annotations, results = [], [], []
    for image_id, (detections, truth) in enumerate(zip(predictions, targets, strict=True), start=1):
        extent = np.concatenate([truth.boxes[:, 2:], detections.boxes[:, 2:], np.ones((1, 2))]).max(axis=0)
        images.append({"id": image_id, "width": int(np.ceil(extent[0])), "height": int(np.ceil(extent[1]))})
        for box, class_id in zip(truth.boxes, truth.classes, strict=True):
            width, height = float(box[2] - box[0]), float(box[3] - box[1])
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(class_id) + 1,
                    "bbox": [float(box[0]), float(box[1]), width, height],
                    "area": width * height,
                    "iscrowd": 0,
                }
            )
        for box, score, class_id in zip(detections.boxes, detections.scores, detections.classes, strict=True):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(class_id) + 1,
                    "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])],
                    "score": float(score),
                }
            )
    categories = [{"id": class_id + 1, "name": str(class_id)} for class_id in range(num_classes)]
    if not results:  # nothing detected: AP is 0 for every class with ground truth
        has_truth = np.isin(np.arange(num_classes), np.concatenate([t.classes for t in targets]))
        zeros = np.where(has_truth, 0.0, np.nan)
        return {"map50": zeros, "map50_95": zeros.copy(), "all_map50": 0.0, "all_map50_95": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth_api = make_truth({"images": images, "annotations": annotations, "categories": categories})
        evaluator = make_evaluator(truth_api, truth_api.loadRes(results))
        evaluator.params.maxDets = [1, 10, max_det]
        evaluator.evaluate()
        evaluator.accumulate()
    precision = np.asarray(evaluator.eval["precision"])  # (IoU thresholds, recall points, classes, areas, maxDets)
    category_index = {cat_id: k for k, cat_id in enumerate(evaluator.params.catIds)}
    for class_id in range(num_classes):
        k = category_index.get(class_id + 1)
        if k is None:
            continue
        table = precision[:, :, k, 0, -1]
        valid = table > -1
        if not valid.any():
            continue
        per_threshold = np.array(
            [row[mask].mean() if mask.any() else np.nan for row, mask in zip(table, valid, strict=True)]
        )
        per_class_50[class_id] = per_threshold[0]
        per_class_50_95[class_id] = np.nanmean(per_threshold)
    return {
        "map50": per_class_50,
        "map50_95": per_class_50_95,
        "all_map50": float(np.nanmean(per_class_50)) if np.isfinite(per_class_50).any() else 0.0,
        "all_map50_95": float(np.nanmean(per_class_50_95)) if np.isfinite(per_class_50_95).any() else 0.0,
    }


def size_bucket(size: float) -> str:
    """The size bucket name of a target of `size` pixels (see SIZE_BUCKETS)."""
    for name, _, upper in SIZE_BUCKETS:
        if size <= upper:
            return name
    return SIZE_BUCKETS[-1][0]


def detection_rate(
    predictions: Sequence[Detections],
    targets: Sequence[GroundTruth],
    conf: float = 0.25,
    distance: float = 3.0,
) -> dict[str, float | dict[str, float] | dict[str, int]]:
    """Infrared small-target metrics at confidence `conf`: Pd, false alarms per frame, Pd by size.

    Returns `pd` (NaN without targets), `fa_per_frame`, `false_alarms`, `detected`, `targets`, `frames`,
    `pd_by_size` {bucket: Pd or NaN} and `targets_by_size` {bucket: count}.
    """
    _check_lengths(predictions, targets)
    detected_by_size = {name: 0 for name, _, _ in SIZE_BUCKETS}
    total_by_size = {name: 0 for name, _, _ in SIZE_BUCKETS}
    false_alarms = 0
    for detections, truth in zip(predictions, targets, strict=True):
        kept = detections.above(conf)
        det_centres = (kept.boxes[:, :2] + kept.boxes[:, 2:]) / 2
        gt_centres = (truth.boxes[:, :2] + truth.boxes[:, 2:]) / 2
        buckets = [size_bucket(size) for size in truth.target_sizes()]
        for name in buckets:
            total_by_size[name] += 1
        taken = np.zeros(len(gt_centres), dtype=bool)
        gaps = np.linalg.norm(det_centres[:, None, :] - gt_centres[None, :, :], axis=2)
        for index in np.argsort(-kept.scores, kind="stable"):
            candidates = np.where(taken | (gaps[index] > distance), np.inf, gaps[index])
            best = int(candidates.argmin()) if len(candidates) else -1
            if best >= 0 and np.isfinite(candidates[best]):
                taken[best] = True
                detected_by_size[buckets[best]] += 1
            else:
                false_alarms += 1
    total = sum(total_by_size.values())
    detected = sum(detected_by_size.values())
    frames = len(predictions)
    return {
        "pd": detected / total if total else float("nan"),
        "fa_per_frame": false_alarms / frames if frames else 0.0,
        "false_alarms": false_alarms,
        "detected": detected,
        "targets": total,
        "frames": frames,
        "pd_by_size": {
            name: detected_by_size[name] / total_by_size[name] if total_by_size[name] else float("nan")
            for name in total_by_size
        },
        "targets_by_size": total_by_size,
    }


CURVE_CONFS: tuple[float, ...] = tuple(round(0.05 * step, 2) for step in range(1, 20))  # 0.05 ... 0.95


def pd_fa_curve(
    predictions: Sequence[Detections],
    targets: Sequence[GroundTruth],
    confs: Sequence[float] = CURVE_CONFS,
    distance: float = 3.0,
) -> dict[str, list[float]]:
    """Pd and false alarms per frame at each confidence in `confs`: the infrared small-target ROC.

    Returns {"conf", "pd", "fa_per_frame"}, lists in the order of `confs`.
    """
    points = [detection_rate(predictions, targets, conf=conf, distance=distance) for conf in confs]
    return {
        "conf": [float(conf) for conf in confs],
        "pd": [float(point["pd"]) for point in points],
        "fa_per_frame": [float(point["fa_per_frame"]) for point in points],
    }


def best_pd_within(curve: dict[str, list[float]], fa_per_frame: float) -> tuple[float, float] | None:
    """(confidence, Pd) of the curve point with the highest Pd whose false alarms per frame are at most
    `fa_per_frame` (the lowest such confidence on a tie); None when no point is that clean."""
    points = [
        (pd, -conf)
        for conf, pd, fa in zip(curve["conf"], curve["pd"], curve["fa_per_frame"], strict=True)
        if fa <= fa_per_frame and not math.isnan(pd)
    ]
    if not points:
        return None
    pd, negative_conf = max(points)
    return -negative_conf, pd
