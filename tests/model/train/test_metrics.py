"""Metric functions against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from model.train.metrics import (
    Detections,
    GroundTruth,
    best_pd_within,
    coco_map,
    detection_rate,
    match_detections,
    pd_fa_curve,
    pr_curves,
    precision_recall_at,
    size_bucket,
)


def _case() -> tuple[list[Detections], list[GroundTruth]]:
    """Three images.

    image 0: gt A (class 0, 10x10) and B (class 0, 4x4). Detections: A exactly (0.9), a false box (0.8).
    image 1: gt C (class 1). Detections: C exactly (0.7) and a duplicate of C (0.3, below the 0.5 cut).
    image 2: no gt. Detection: a false box of class 0 (0.6).
    """
    targets = [
        GroundTruth([[10, 10, 20, 20], [50, 50, 54, 54]], [0, 0]),
        GroundTruth([[0, 0, 10, 10]], [1]),
        GroundTruth(np.zeros((0, 4)), []),
    ]
    predictions = [
        Detections([[10, 10, 20, 20], [30, 30, 40, 40]], [0.9, 0.8], [0, 0]),
        Detections([[0, 0, 10, 10], [1, 1, 10, 10]], [0.7, 0.3], [1, 1]),
        Detections([[5, 5, 9, 9]], [0.6], [0]),
    ]
    return predictions, targets


def test_matching_marks_true_positives() -> None:
    predictions, targets = _case()
    flags = match_detections(predictions, targets)
    assert [f.tolist() for f in flags] == [[True, False], [True, False], [False]]


def test_precision_recall_at_operating_confidence() -> None:
    predictions, targets = _case()
    result = precision_recall_at(predictions, targets, num_classes=2, conf=0.5)
    # class 0: detections 0.9 (TP), 0.8 (FP), 0.6 (FP) -> P 1/3; gts 2 -> R 1/2. class 1: P 1, R 1.
    np.testing.assert_allclose(result["precision"], [1 / 3, 1.0])
    np.testing.assert_allclose(result["recall"], [0.5, 1.0])
    assert result["all_precision"] == pytest.approx(2 / 4) and result["all_recall"] == pytest.approx(2 / 3)
    low = precision_recall_at(predictions, targets, num_classes=2, conf=0.1)
    assert low["precision"][1] == pytest.approx(0.5)


def test_coco_map_by_hand() -> None:
    predictions, targets = _case()
    result = coco_map(predictions, targets, num_classes=2)
    # class 0 ranking: TP, FP, FP over 2 gts -> precision 1 up to recall 0.5, then nothing: 51 of 101 points.
    assert result["map50"][0] == pytest.approx(51 / 101, abs=1e-6)
    assert result["map50"][1] == pytest.approx(1.0) and result["map50_95"][1] == pytest.approx(1.0)
    assert result["all_map50"] == pytest.approx((51 / 101 + 1) / 2, abs=1e-6)


def test_coco_map_without_detections_or_targets() -> None:
    _, targets = _case()
    empty = [Detections(np.zeros((0, 4)), [], []) for _ in targets]
    result = coco_map(empty, targets, num_classes=3)
    assert result["all_map50"] == 0.0 and result["map50"][0] == 0.0 and math.isnan(result["map50"][2])
    no_truth = [GroundTruth(np.zeros((0, 4)), []) for _ in targets]
    assert coco_map(_case()[0], no_truth, num_classes=2)["all_map50"] == 0.0


def test_pr_curve_envelope() -> None:
    predictions, targets = _case()
    curves = pr_curves(predictions, targets, num_classes=2)
    class_zero = curves["precision"][0]
    assert class_zero[0] == 1.0 and class_zero[50] == 1.0 and class_zero[51] == 0.0
    assert (curves["precision"][1] == 1.0).all()


def test_pd_and_false_alarms_by_hand() -> None:
    targets = [
        GroundTruth([[10, 10, 14, 14], [40, 40, 48, 48]], [0, 0], sizes=[2.0, 8.0]),
        GroundTruth([[20, 20, 25, 25]], [0]),
    ]
    predictions = [
        # hit on the tiny one (centre 1.4 px away), a second hit on it (a false alarm), a miss 5 px off the big one
        Detections([[11, 11, 15, 15], [12, 12, 16, 16], [45, 45, 53, 53]], [0.9, 0.8, 0.7], [0, 0, 0]),
        # hit within 3 px, plus a low-score box ignored at conf 0.25
        Detections([[21, 21, 26, 27], [0, 0, 2, 2]], [0.5, 0.1], [0, 0]),
    ]
    result = detection_rate(predictions, targets, conf=0.25, distance=3.0)
    assert result["detected"] == 2 and result["targets"] == 3 and result["pd"] == pytest.approx(2 / 3)
    assert result["false_alarms"] == 2 and result["fa_per_frame"] == pytest.approx(1.0)
    # sizes: 2 px (true size, tiny), 8 px (medium), 5x5 box without a true size (small)
    assert result["targets_by_size"] == {"tiny": 1, "small": 1, "medium": 1}
    assert result["pd_by_size"] == {"tiny": 1.0, "small": 1.0, "medium": 0.0}


def test_greedy_matching_prefers_the_best_score() -> None:
    targets = [GroundTruth([[10, 10, 14, 14]], [0])]
    predictions = [Detections([[13, 13, 17, 17], [10, 10, 14, 14]], [0.4, 0.9], [0, 0])]
    result = detection_rate(predictions, targets, conf=0.25, distance=3.0)
    assert result["detected"] == 1 and result["false_alarms"] == 1


def test_size_buckets() -> None:
    assert [size_bucket(s) for s in (1.0, 3.0, 3.5, 6.0, 6.1, 20.0)] == [
        "tiny",
        "tiny",
        "small",
        "small",
        "medium",
        "medium",
    ]


def test_pd_fa_curve_and_best_operating_point_by_hand() -> None:
    targets = [GroundTruth([[10, 10, 14, 14]], [0]), GroundTruth([[30, 30, 34, 34]], [0])]
    predictions = [
        Detections([[11, 11, 15, 15], [60, 60, 64, 64]], [0.9, 0.5], [0, 0]),  # a hit at 0.9, a false alarm at 0.5
        Detections([[31, 31, 35, 35], [0, 0, 4, 4], [80, 80, 84, 84]], [0.4, 0.3, 0.3], [0, 0, 0]),
    ]
    curve = pd_fa_curve(predictions, targets, confs=(0.2, 0.35, 0.45, 0.95))
    assert curve["conf"] == [0.2, 0.35, 0.45, 0.95]
    assert curve["pd"] == [1.0, 1.0, 0.5, 0.0]
    assert curve["fa_per_frame"] == [1.5, 0.5, 0.5, 0.0]
    assert best_pd_within(curve, 1.0) == (0.35, 1.0)
    assert best_pd_within(curve, 0.1) == (0.95, 0.0)
    assert best_pd_within({"conf": [0.5], "pd": [0.9], "fa_per_frame": [3.0]}, 1.0) is None
