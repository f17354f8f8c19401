"""Decoding, NMS, anchors and letterboxing, checked against the reference fixture and plain-python references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.checkpoint import TTA_MODES
from model.imaging import to_rgb8
from model.ops import (
    PAD_VALUE,
    TTA_VIEWS,
    LetterboxParams,
    box_iou,
    decode_levels,
    dfl_distances,
    letterbox,
    make_anchors,
    merge_tta,
    non_max_suppression,
    scale_boxes,
    tta_batch,
    tta_mode,
    xywh_to_xyxy,
)


def test_decode_matches_reference_fixture(reference_fixture_path):
    reference = torch.load(reference_fixture_path, weights_only=True)
    decoded = decode_levels([level.float() for level in reference["raw_levels"]], reference["strides"])
    expected = reference["decoded_xywh_scores"].float()
    assert decoded.shape == expected.shape
    torch.testing.assert_close(decoded, expected, atol=1e-4, rtol=0)


def test_make_anchors_order_and_strides():
    points, strides = make_anchors([(2, 3), (1, 2)], [8, 16])
    assert points.shape == (8, 2) and strides.shape == (8, 1)
    expected_points = [[0.5, 0.5], [1.5, 0.5], [2.5, 0.5], [0.5, 1.5], [1.5, 1.5], [2.5, 1.5], [0.5, 0.5], [1.5, 0.5]]
    assert points.tolist() == expected_points
    assert strides.squeeze(1).tolist() == [8.0] * 6 + [16.0] * 2
    shifted, _ = make_anchors([(1, 1)], [4], offset=0.0)
    assert shifted.tolist() == [[0.0, 0.0]]


def test_dfl_distances_is_expected_bin():
    logits = torch.full((1, 4 * 16, 1), -1e4)
    for side, bin_index in enumerate((0, 3, 7, 15)):
        logits[0, side * 16 + bin_index, 0] = 1e4
    assert dfl_distances(logits).flatten().tolist() == [0.0, 3.0, 7.0, 15.0]
    with pytest.raises(ValueError):
        dfl_distances(torch.zeros(1, 60, 5))


def test_decode_single_anchor_geometry():
    # One 1x1 level at stride 8, distances left=1, top=2, right=3, bottom=4 bins, one class logit 0.
    level = torch.full((1, 65, 1, 1), -1e4)
    for side, bin_index in enumerate((1, 2, 3, 4)):
        level[0, side * 16 + bin_index] = 1e4
    level[0, 64] = 0.0
    decoded = decode_levels([level], [8])[0, :, 0].tolist()
    # anchor (0.5, 0.5): x1 = -0.5, y1 = -1.5, x2 = 3.5, y2 = 4.5 (bins), times 8.
    assert decoded == pytest.approx([12.0, 12.0, 32.0, 48.0, 0.5])


def _flip_prediction(level: torch.Tensor, dims: tuple[int, ...], reg_max: int = 16) -> torch.Tensor:
    """What a perfectly flip-consistent network predicts for the flipped image: the flipped sides swap places."""
    left, top, right, bottom, classes = level.split((reg_max,) * 4 + (level.shape[1] - 4 * reg_max,), 1)
    if 3 in dims:
        left, right = right, left
    if 2 in dims:
        top, bottom = bottom, top
    return torch.cat((left, top, right, bottom, classes), 1).flip(dims) if dims else level


@pytest.mark.parametrize("dims", [(3,), (2,)])
def test_flipped_prediction_decodes_to_reflected_boxes(dims):
    torch.manual_seed(0)
    levels, strides, width, height = [torch.randn(1, 66, 2, 4), torch.randn(1, 66, 1, 2)], [8, 16], 32.0, 16.0
    plain = decode_levels(levels, strides)[0]
    flipped = decode_levels([_flip_prediction(level, dims) for level in levels], strides)[0]
    places = [torch.arange(h * w).view(h, w).flip(dims[0] - 2).flatten() for h, w in ((2, 4), (1, 2))]
    moved = torch.cat((places[0], places[1] + 8))  # anchor index -> where the flip puts it, per level
    reflected = flipped[:, moved]
    axis = 0 if dims == (3,) else 1
    torch.testing.assert_close(reflected[axis], (width if axis == 0 else height) - plain[axis])  # centre reflected
    kept = [row for row in range(6) if row != axis]
    torch.testing.assert_close(reflected[kept], plain[kept])  # the other centre, width, height and scores kept


@pytest.mark.parametrize("mode", ["mirror", "flips"])
def test_merge_tta_averages_each_anchor_over_its_views(mode):
    views = TTA_VIEWS[mode]
    torch.manual_seed(1)
    levels = [torch.randn(2, 65, 3, 4), torch.randn(2, 65, 2, 2)]
    consistent = merge_tta([torch.cat([_flip_prediction(level, dims) for dims in views]) for level in levels], views)
    for got, want in zip(consistent, levels, strict=True):
        torch.testing.assert_close(got, want)  # views that agree change nothing
    others = [[torch.randn_like(level) for _ in views] for level in levels]
    flipped = [torch.cat([_flip_prediction(o, d) for o, d in zip(os, views, strict=True)]) for os in others]
    for got, os, level in zip(merge_tta(flipped, views), others, levels, strict=True):
        torch.testing.assert_close(got, sum(os) / len(views))
        assert got.shape == level.shape


def test_tta_batch_stacks_the_views_and_keeps_memory_format():
    batch = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).view(2, 3, 2, 4)
    both = tta_batch(batch.contiguous(memory_format=torch.channels_last), TTA_VIEWS["mirror"])
    assert both.shape == (4, 3, 2, 4) and both.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(both[:2], batch) and torch.equal(both[2:], batch.flip(3))
    four = tta_batch(batch, TTA_VIEWS["flips"])
    assert four.shape == (8, 3, 2, 4) and four.is_contiguous()
    assert torch.equal(four, torch.cat((batch, batch.flip(3), batch.flip(2), batch.flip(2, 3))))
    assert tta_batch(batch, TTA_VIEWS["off"]) is batch


def test_tta_mode_names_and_switches():
    assert tuple(TTA_VIEWS) == TTA_MODES  # the torch-free list the CLI and checkpoints use
    assert [tta_mode(v) for v in (None, False, True, "off", "mirror", "flips")] == ["off", "off", "mirror"] + list(
        TTA_VIEWS
    )
    with pytest.raises(ValueError, match="use one of: off, mirror, flips"):
        tta_mode("both")


def test_box_iou_and_xyxy():
    boxes = xywh_to_xyxy(torch.tensor([[5.0, 5.0, 10.0, 10.0], [10.0, 5.0, 10.0, 10.0]]))
    assert boxes.tolist() == [[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0]]
    iou = box_iou(boxes, boxes)
    assert iou[0, 1].item() == pytest.approx(50 / 150)
    assert torch.allclose(iou.diagonal(), torch.ones(2))
    degenerate = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    assert box_iou(degenerate, degenerate).item() == 0.0


def _python_iou(a: list[float], b: list[float]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _reference_nms(decoded: torch.Tensor, conf: float, iou: float, max_det: int, max_candidates: int) -> list:
    """Textbook greedy NMS, one box at a time, in python floats."""
    boxes = xywh_to_xyxy(decoded[:4].T).tolist()
    scores = decoded[4:].T.tolist()
    candidates = []
    for anchor, row in enumerate(scores):
        score = max(row)
        if score > conf:
            candidates.append((score, anchor, row.index(score)))
    candidates.sort(key=lambda item: -item[0])
    candidates = candidates[:max_candidates]
    kept: list[tuple[float, int, int]] = []
    for score, anchor, cls in candidates:
        if len(kept) == max_det:
            break
        if all(k_cls != cls or _python_iou(boxes[anchor], boxes[k_anchor]) <= iou for _, k_anchor, k_cls in kept):
            kept.append((score, anchor, cls))
    return [[*boxes[anchor], score, float(cls)] for score, anchor, cls in kept]


def _random_decoded(generator: torch.Generator, batch: int, anchors: int, classes: int) -> torch.Tensor:
    centres = torch.rand(batch, 2, anchors, generator=generator) * 200
    sizes = torch.rand(batch, 2, anchors, generator=generator) * 60 + 4
    scores = torch.rand(batch, classes, anchors, generator=generator)
    return torch.cat((centres, sizes, scores), dim=1)


@pytest.mark.parametrize("anchors", [300, 2600])
def test_nms_matches_bruteforce_with_per_image_thresholds(anchors):
    generator = torch.Generator().manual_seed(anchors)
    decoded = _random_decoded(generator, batch=3, anchors=anchors, classes=3)
    conf, iou, max_det = [0.2, 0.5, 0.05], [0.45, 0.3, 0.6], [300, 25, 1000]
    results = non_max_suppression(decoded, conf=conf, iou=iou, max_det=max_det)
    assert len(results) == 3
    for image in range(3):
        expected = _reference_nms(decoded[image], conf[image], iou[image], max_det[image], 30000)
        assert results[image].shape == (len(expected), 6)
        torch.testing.assert_close(results[image], torch.tensor(expected), atol=1e-4, rtol=0)
    assert results[1].shape[0] == 25  # max_det applies per image
    assert set(results[0][:, 5].tolist()) == {0.0, 1.0, 2.0}


def test_nms_is_class_aware_and_limits_candidates():
    # Two identical boxes of different classes both survive; the same box twice in one class does not.
    decoded = torch.tensor(
        [[[10.0, 10.0, 10.0], [10.0, 10.0, 10.0], [8.0, 8.0, 8.0], [8.0, 8.0, 8.0], [0.9, 0.8, 0.1], [0.1, 0.2, 0.7]]]
    )
    (result,) = non_max_suppression(decoded, conf=0.25, iou=0.5)
    assert result[:, 4].tolist() == pytest.approx([0.9, 0.7])
    assert result[:, 5].tolist() == [0.0, 1.0]
    (limited,) = non_max_suppression(decoded, conf=0.25, iou=0.5, max_candidates=1)
    assert limited.shape == (1, 6) and limited[0, 4].item() == pytest.approx(0.9)
    (empty,) = non_max_suppression(decoded, conf=0.95)
    assert empty.shape == (0, 6)
    with pytest.raises(ValueError):
        non_max_suppression(decoded, conf=[0.1, 0.2])


@pytest.mark.parametrize(
    ("height", "width", "imgsz"),
    [(512, 640, 640), (100, 50, 64), (64, 64, 96), (1, 300, 160), (300, 2, 128), (37, 91, 160)],
)
def test_letterbox_round_trip(height, width, imgsz):
    frame = np.zeros((height, width), dtype=np.uint8)
    # A bright rectangle in the middle half; along an axis of a few pixels it spans the whole axis.
    top, bottom = (height // 4, 3 * height // 4) if height >= 8 else (0, height)
    left, right = (width // 4, 3 * width // 4) if width >= 8 else (0, width)
    frame[top:bottom, left:right] = 255
    image = torch.from_numpy(to_rgb8(frame)).permute(2, 0, 1)
    batch, (params,) = letterbox([image], imgsz)
    assert batch.dtype == torch.float32 and batch.shape[2] % 32 == 0 and batch.shape[3] % 32 == 0
    assert params.scale == pytest.approx(imgsz / max(height, width))
    assert max(params.resized_height, params.resized_width) == imgsz
    assert batch.shape[2] - params.resized_height < 32 and batch.shape[3] - params.resized_width < 32
    # Padding sits outside the placed frame and holds the grey value.
    assert batch[0, :, : params.pad_y].eq(PAD_VALUE).all() and batch[0, :, :, : params.pad_x].eq(PAD_VALUE).all()
    bright = (batch[0, 0] > 0.75).nonzero()
    found = torch.tensor([[bright[:, 1].min(), bright[:, 0].min(), bright[:, 1].max() + 1, bright[:, 0].max() + 1]])
    mapped = scale_boxes(found.float(), params)[0].tolist()
    tolerance = 1.0 + 1.0 / params.scale
    assert mapped == pytest.approx([left, top, right, bottom], abs=tolerance)


def test_letterbox_keeps_640x512_and_batches_mixed_sizes():
    wide = torch.full((3, 512, 640), 200, dtype=torch.uint8)
    small = torch.full((3, 40, 30), 10, dtype=torch.uint8)
    batch, (wide_params, small_params) = letterbox([wide, small], 640)
    assert batch.shape == (2, 3, 640, 640)
    assert (wide_params.scale, wide_params.pad_x, wide_params.pad_y) == (1.0, 0, 0)
    assert torch.allclose(batch[0, :, :512], torch.full((3, 512, 640), 200 / 255))
    assert batch[0, :, 512:].eq(PAD_VALUE).all()  # bottom padding from batching only
    assert small_params.resized_height == 640 and small_params.resized_width == 480
    (alone, (single_params,)) = letterbox([wide], 640)
    assert alone.shape == (1, 3, 512, 640) and single_params == wide_params


def test_letterbox_by_pixel_scale_gives_every_frame_the_same_factor():
    sizes = [(256, 320), (512, 640), (1024, 1280), (37, 91)]
    images = [torch.full((3, height, width), 90, dtype=torch.uint8) for height, width in sizes]
    batch, params = letterbox(images, pixel_scale=1.5)
    assert [item.scale for item in params] == [1.5] * 4
    assert [(item.resized_width, item.resized_height) for item in params] == [
        (480, 384),
        (960, 768),
        (1920, 1536),
        (136, 56),
    ]
    assert batch.shape == (4, 3, 1536, 1920)  # padded bottom/right to the largest frame
    alone, (small,) = letterbox(images[:1], pixel_scale=1.5)
    assert alone.shape == (1, 3, 384, 480) and small == params[0]
    assert torch.equal(batch[0, :, :384, :480], alone[0])  # batching with larger frames leaves a frame as it was
    with pytest.raises(ValueError, match="either imgsz or pixel_scale"):
        letterbox(images, 640, pixel_scale=1.5)
    with pytest.raises(ValueError, match="either imgsz or pixel_scale"):
        letterbox(images)


def test_letterbox_accepts_16bit_frames_through_to_rgb8():
    ramp = (np.arange(48 * 80, dtype=np.uint16).reshape(48, 80) * 13).astype(np.uint16)
    image = torch.from_numpy(to_rgb8(ramp)).permute(2, 0, 1)
    batch, (params,) = letterbox([image], 96)
    assert batch.shape == (1, 3, 64, 96) and (params.pad_x, params.pad_y) == (0, 3)
    assert batch.min().item() >= 0.0 and batch.max().item() <= 1.0
    assert batch[0, 0, 3:61].std() > 0.2  # the ramp survives, not a flat grey


def test_scale_boxes_clips_to_frame():
    params = LetterboxParams(scale=2.0, pad_x=4, pad_y=8, width=50, height=20)
    boxes = torch.tensor([[0.0, 0.0, 24.0, 28.0], [90.0, 40.0, 200.0, 100.0]])
    assert scale_boxes(boxes, params).tolist() == [[0.0, 0.0, 10.0, 10.0], [43.0, 16.0, 50.0, 20.0]]
