"""Batching helpers as plain functions, independent of Redis and torch (what forms a pass: worker/schedule.py).

`AdaptiveBatcher` sizes the passes of a video chunk run alone by the time one pass takes. `group_positions`
splits a batch into the groups that must run as separate forward passes (by bucket), `split_by_cost` cuts a
group into passes that fit a memory budget, and `pair_outputs` checks that a step returned exactly one output
per input.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

Item = TypeVar("Item")
Output = TypeVar("Output")
Key = TypeVar("Key", bound=Hashable)


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
