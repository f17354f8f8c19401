"""The batch collector and its helpers, on a plain queue.Queue (no Redis, no torch)."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from worker.batching import AdaptiveBatcher, collect_batch, group_positions, pair_outputs, split_by_cost


def filled(*items: object) -> queue.Queue:
    source: queue.Queue = queue.Queue()
    for item in items:
        source.put(item)
    return source


def test_stops_at_max_size_and_leaves_the_rest() -> None:
    source = filled(*range(10))
    started = time.monotonic()
    batch = collect_batch(source, max_size=4, max_delay_s=1.0)
    assert time.monotonic() - started < 0.5  # a full batch does not wait for the delay
    assert batch.items == [0, 1, 2, 3]
    assert batch.size == 4
    assert batch.carry is None
    assert source.qsize() == 6


def test_waits_at_most_max_delay_after_the_first_item() -> None:
    source = filled("a")
    start = time.monotonic()
    batch = collect_batch(source, max_size=8, max_delay_s=0.05)
    elapsed = time.monotonic() - start
    assert batch.items == ["a"]
    assert 0.04 <= elapsed < 0.5


def test_items_arriving_within_the_delay_join_the_batch() -> None:
    source = filled(0)

    def produce() -> None:
        for item in (1, 2):
            time.sleep(0.01)
            source.put(item)

    producer = threading.Thread(target=produce)
    producer.start()
    batch = collect_batch(source, max_size=8, max_delay_s=0.3)
    producer.join()
    assert batch.items == [0, 1, 2]


def test_late_items_wait_for_the_next_batch() -> None:
    source = filled(0)
    timer = threading.Timer(0.2, lambda: source.put(1))
    timer.start()
    batch = collect_batch(source, max_size=8, max_delay_s=0.02)
    timer.join()
    assert batch.items == [0]
    assert collect_batch(source, max_size=8, max_delay_s=0.0, first_timeout_s=1.0).items == [1]


def test_multi_image_items_count_by_image_and_overflow_is_carried() -> None:
    # items are (name, image count): a request with 3 images weighs 3
    source = filled(("a", 3), ("b", 2), ("c", 4), ("d", 1))
    weight = lambda item: item[1]  # noqa: E731
    first = collect_batch(source, max_size=6, max_delay_s=0.01, weight=weight)
    assert [name for name, _ in first.items] == ["a", "b"]
    assert first.size == 5
    assert first.carry == ("c", 4)  # would make 9 > 6: opens the next batch
    second = collect_batch(source, max_size=6, max_delay_s=0.01, weight=weight, carry=first.carry)
    assert [name for name, _ in second.items] == ["c", "d"]
    assert second.size == 5


def test_an_item_heavier_than_the_batch_forms_a_batch_alone() -> None:
    source = filled(("big", 10), ("small", 1))
    batch = collect_batch(source, max_size=4, max_delay_s=0.01, weight=lambda item: item[1])
    assert batch.items == [("big", 10)]
    assert batch.size == 10
    assert source.qsize() == 1


def test_empty_queue_gives_an_empty_batch_after_the_first_timeout() -> None:
    source: queue.Queue = queue.Queue()
    start = time.monotonic()
    assert collect_batch(source, max_size=4, max_delay_s=0.01, first_timeout_s=0.05).items == []
    assert time.monotonic() - start >= 0.04
    assert collect_batch(source, max_size=4, max_delay_s=0.01, first_timeout_s=0).items == []


def test_rejects_a_zero_batch_size() -> None:
    with pytest.raises(ValueError, match="max_size"):
        collect_batch(filled(1), max_size=0, max_delay_s=0.0)


def test_group_and_pair() -> None:
    groups = group_positions([("a", 64), ("b", 128), ("c", 64)], key=lambda item: item[1])
    assert groups == {64: [0, 2], 128: [1]}
    assert pair_outputs(["x", "y"], [1, 2], "step") == [("x", 1), ("y", 2)]
    with pytest.raises(RuntimeError, match="1 outputs for 2 inputs"):
        pair_outputs(["x", "y"], [1], "step")


def test_adaptive_batches_stay_near_the_time_target() -> None:
    batcher = AdaptiveBatcher(max_size=8, target_s=0.25)
    assert batcher.size == 1  # the first batch measures
    batcher.observe(images=1, seconds=0.001)  # a fast device: full batches
    assert batcher.size == 8
    slow = AdaptiveBatcher(max_size=8, target_s=0.25)
    slow.observe(images=1, seconds=0.1)  # 0.1 s per image: two fit the target
    assert slow.size == 2
    slow.observe(images=2, seconds=1.0)  # it got slower: single images
    assert slow.size == 1


def test_passes_are_cut_to_fit_the_memory_budget() -> None:
    costs = {"a": 4, "b": 4, "c": 3, "d": 9, "e": 1}
    assert split_by_cost(list("abcde"), costs.__getitem__, 8) == [["a", "b"], ["c"], ["d"], ["e"]]
    assert split_by_cost(list("abcde"), costs.__getitem__, 100) == [list("abcde")]
    assert split_by_cost([], costs.__getitem__, 8) == []
