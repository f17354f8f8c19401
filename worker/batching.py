"""Dynamic batching as plain functions, independent of Redis and torch.

`collect_batch` takes items from a `queue.Queue`: it waits for a first item, then keeps taking until the
batch holds `max_size` images or `max_delay_s` has passed since the first one. Items are weighed by the
number of images they carry, so a request with several images counts for each of them; an item that
would overflow the batch is held back as `carry` and opens the next batch.

`AdaptiveBatcher` sizes the batches of a video chunk by the time one pass takes. `group_positions` splits a
batch into the groups that must run as separate forward passes (e.g. by input size), `split_by_cost` cuts a
group into passes that fit a memory budget, and `pair_outputs` checks that a step returned exactly one output
per input.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")
Output = TypeVar("Output")
Key = TypeVar("Key", bound=Hashable)


def _one(_: object) -> int:
    return 1


@dataclass
class CollectedBatch(Generic[Item]):
    """The items of one batch, their total weight, and an item held back for the next batch."""

    items: list[Item] = field(default_factory=list)
    size: int = 0
    carry: Item | None = None


def collect_batch(
    source: queue.Queue[Item],
    max_size: int,
    max_delay_s: float,
    *,
    weight: Callable[[Item], int] = _one,
    first_timeout_s: float | None = None,
    carry: Item | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> CollectedBatch[Item]:
    """Collect up to `max_size` images from `source`, waiting at most `max_delay_s` after the first item.

    `first_timeout_s` bounds the wait for the first item (None waits forever, 0 does not wait); an empty
    batch means nothing arrived. `carry`, an item held back by the previous call, opens the batch. An item
    heavier than `max_size` on its own forms a batch alone.
    """
    if max_size < 1:
        raise ValueError(f"max_size must be at least 1, got {max_size}")
    batch: CollectedBatch[Item] = CollectedBatch()
    first = carry
    if first is None:
        try:
            if first_timeout_s is None:
                first = source.get()
            elif first_timeout_s <= 0:
                first = source.get_nowait()
            else:
                first = source.get(timeout=first_timeout_s)
        except queue.Empty:
            return batch
    batch.items.append(first)
    batch.size = weight(first)
    deadline = clock() + max_delay_s
    while batch.size < max_size:
        remaining = deadline - clock()
        try:
            item = source.get(timeout=remaining) if remaining > 0 else source.get_nowait()
        except queue.Empty:
            break
        item_weight = weight(item)
        if batch.size + item_weight > max_size:
            batch.carry = item
            break
        batch.items.append(item)
        batch.size += item_weight
    return batch


def group_positions(items: Sequence[Item], key: Callable[[Item], Key]) -> dict[Key, list[int]]:
    """Positions of the items per key, keys and positions in first-seen order."""
    groups: dict[Key, list[int]] = {}
    for position, item in enumerate(items):
        groups.setdefault(key(item), []).append(position)
    return groups


def split_by_cost(items: Sequence[Item], cost: Callable[[Item], int], budget: int) -> list[list[Item]]:
    """Consecutive runs of `items` whose costs add up to at most `budget` (an item over it alone forms a run)."""
    runs: list[list[Item]] = []
    total = 0
    for item in items:
        weight = cost(item)
        if runs and total + weight <= budget:
            runs[-1].append(item)
            total += weight
        else:
            runs.append([item])
            total = weight
    return runs


def pair_outputs(inputs: Sequence[Item], outputs: Sequence[Output], step: str) -> list[tuple[Item, Output]]:
    """Zip inputs with a step's outputs, refusing a step that did not return one output per input."""
    if len(outputs) != len(inputs):
        raise RuntimeError(f"{step} returned {len(outputs)} outputs for {len(inputs)} inputs")
    return list(zip(inputs, outputs, strict=True))


class AdaptiveBatcher:
    """Sizes batches so that one forward pass takes about `target_s` (in images, views counted).

    Interactive image jobs are served between the batches of a video chunk, so a long batch delays them. On a
    fast device the size reaches `max_size` at once; on a slow one (a CPU) batches shrink until one takes about
    `target_s`, which bounds the wait of an image request. The first batch holds a single frame to measure.
    """

    def __init__(self, max_size: int, target_s: float) -> None:
        self.max_size = max(1, max_size)
        self.target_s = target_s
        self.size = 1
        self.seconds_per_image: float | None = None

    def observe(self, images: int, seconds: float) -> None:
        """Record how long a batch of `images` took and size the next one."""
        per_image = seconds / max(images, 1)
        previous = self.seconds_per_image
        self.seconds_per_image = per_image if previous is None else 0.5 * previous + 0.5 * per_image
        fitting = int(self.target_s / self.seconds_per_image) if self.seconds_per_image > 0 else self.max_size
        self.size = min(self.max_size, max(1, fitting))
