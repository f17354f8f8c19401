"""The `masenet bench service` table: each level is compared with the bare runs around it."""

from __future__ import annotations

from service.bench import LevelResult, format_table


def test_each_level_is_compared_with_its_own_bare_reference() -> None:
    fast = LevelResult(16, 100, 0, 10.0, [100.0, 200.0, 300.0], 7.5, bare=12.5)  # 10 img/s against 12.5
    slow = LevelResult(64, 100, 4, 12.0, [900.0], 8.0, bare=8.0)  # 96 answered in 12 s: 8 img/s against 8
    lines = format_table([fast, slow], max_batch=8).splitlines()
    assert lines[2].split()[-2:] == ["12.5", "0.80x"]
    assert lines[3].split()[-2:] == ["8.0", "1.00x"]
    assert "8 images per pass" in lines[-1]


def test_without_a_bare_reference_the_ratio_is_left_out() -> None:
    level = LevelResult(1, 10, 0, 2.0, [50.0], None)
    row = format_table([level], max_batch=8).splitlines()[2].split()
    assert row[-3:] == ["-", "-", "-"] and len(format_table([level], max_batch=8).splitlines()) == 3
