"""Batching helpers as plain functions, independent of Redis and torch (what forms a pass: worker/schedule.py).

`group_positions` splits a batch into the groups that must run as separate forward passes (by bucket),
`split_by_cost` cuts a group into passes that fit a memory budget, and `pair_outputs` checks that a step returned
exactly one output per input.
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
