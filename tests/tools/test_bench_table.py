"""The `masenet bench service` table: each level is compared with the bare runs around it."""

from __future__ import annotations

import math

from tools.bench import LevelResult, format_table, percentile


def test_each_level_is_compared_with_its_own_bare_reference() -> None:
    fast = LevelResult(16, 100, 0, 10.0, [100.0, 200.0, 300.0], 7.5, bare=12.5)  # 10 img/s against 12.5
    slow = LevelResult(64, 100, 4, 12.0, [900.0], 8.0, bare=8.0)  # 96 answered in 12 s: 8 img/s against 8
    lines = format_table([fast, slow], max_batch=8).splitlines()
    assert lines[2].split()[-2:] == ["12.5", "0.80x"]
    assert lines[3].split()[-2:] == ["8.0", "1.00x"]
    assert "8 frames a pass" in lines[-1]


def test_without_a_bare_reference_the_ratio_is_left_out() -> None:
    level = LevelResult(1, 10, 0, 2.0, [50.0], None)
    row = format_table([level], max_batch=8).splitlines()[2].split()
    assert row[-3:] == ["-", "-", "-"] and len(format_table([level], max_batch=8).splitlines()) == 3


def test_percentile_of_nothing_is_nan() -> None:
    assert percentile([10.0, 20.0, 30.0], 0.5) == 20.0
    assert math.isnan(percentile([], 0.95))


def test_bare_model_runs_the_eager_forward_at_the_service_scale(tmp_path) -> None:
    from tools.bench import BareModel
    from tools.traffic import random_checkpoint, synthetic_frames

    path = random_checkpoint(tmp_path / "scaled.safetensors", imgsz=64, pixel_scale=1.5)
    frames = synthetic_frames(80, 48, count=3)
    scaled = BareModel(frames, str(path), "cpu", batch=4, imgsz=None)
    assert tuple(scaled.batch.shape) == (4, 3, 96, 128)  # 80x48 resized by 1.5 to 120x72, padded to 128x96
    assert "4 frames a pass at 128x96 (pixel_scale 1.5)" in scaled.describe()
    assert scaled.throughput(seconds=0.0) > 0
    fixed = BareModel(frames, str(path), "cpu", batch=2, imgsz=64)
    assert tuple(fixed.batch.shape) == (2, 3, 64, 64) and "imgsz 64" in fixed.describe()
