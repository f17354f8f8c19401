"""The batching helpers (no Redis, no torch); what forms a pass is tested in test_schedule.py."""

from __future__ import annotations

import pytest

from worker.batching import group_positions, pair_outputs, split_by_cost


def test_group_and_pair() -> None:
    groups = group_positions([("a", 64), ("b", 128), ("c", 64)], key=lambda item: item[1])
    assert groups == {64: [0, 2], 128: [1]}
    assert pair_outputs(["x", "y"], [1, 2], "step") == [("x", 1), ("y", 2)]
    with pytest.raises(RuntimeError, match="1 outputs for 2 inputs"):
        pair_outputs(["x", "y"], [1], "step")


def test_passes_are_cut_to_fit_the_memory_budget() -> None:
    costs = {"a": 4, "b": 4, "c": 3, "d": 9, "e": 1}
    assert split_by_cost(list("abcde"), costs.__getitem__, 8) == [["a", "b"], ["c"], ["d"], ["e"]]
    assert split_by_cost(list("abcde"), costs.__getitem__, 100) == [list("abcde")]
    assert split_by_cost([], costs.__getitem__, 8) == []
