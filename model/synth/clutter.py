"""Clutter objects added to a frame's counts that must never be labelled: warm blobs, bright edges, corners,
small buildings, rows of lights and lit facades."""

from __future__ import annotations

import numpy as np

from model.synth.shapes import SPECK_STAMPS, add_specks, lattice, paint_segment, paint_shape

CLUTTER_KINDS = ("warm_blob", "edge", "corner", "building", "lights", "lit_facade")
HOLDOUT_CLUTTER_KINDS = ("warm_blob", "edge", "corner", "building")  # the holdout recipe keeps its own


def add_clutter(
    rng: np.random.Generator,
    counts: np.ndarray,
    reference: float,
    expected: float,
    kinds_allowed: tuple[str, ...] = CLUTTER_KINDS,
) -> list[str]:
    """Add distractors that must never be labelled: large warm blobs, bright edges, corners, small buildings,
    rows of lights and lit facades (grids of warm windows).

    `reference` is the contrast scale in counts; the number of objects is Poisson(expected). Returns their kinds.
    """
    height, width = counts.shape
    kinds: list[str] = []
    for _ in range(int(rng.poisson(expected))):
        kind = str(rng.choice(kinds_allowed))
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        level = reference * rng.uniform(0.5, 4.0) * (1.0 if rng.random() < 0.85 else -1.0)
        angle = rng.uniform(0, np.pi)
        if kind == "warm_blob":
            radius = rng.uniform(8, 40)
            paint_shape(counts, cx, cy, radius, radius * rng.uniform(0.4, 1.0), angle, level, edge=radius * 0.6)
        elif kind == "edge":
            reach = rng.uniform(10, 80)
            end = (cx + reach * np.cos(angle), cy + reach * np.sin(angle))
            paint_segment(
                counts, (cx - reach * np.cos(angle), cy - reach * np.sin(angle)), end, rng.uniform(1, 2.5), level
            )
        elif kind == "corner":
            arm_a, arm_b, thickness = rng.uniform(8, 30), rng.uniform(8, 30), rng.uniform(1.0, 2.5)
            paint_segment(counts, (cx, cy), (cx + arm_a * np.cos(angle), cy + arm_a * np.sin(angle)), thickness, level)
            perpendicular = angle + np.pi / 2
            end = (cx + arm_b * np.cos(perpendicular), cy + arm_b * np.sin(perpendicular))
            paint_segment(counts, (cx, cy), end, thickness, level)
        elif kind == "lights":
            count, spacing = int(rng.integers(4, 16)), rng.uniform(3.0, 12.0)
            steps = np.arange(count, dtype=np.float32) * spacing
            rows = np.rint(cy + steps * np.sin(angle)).astype(np.intp)
            cols = np.rint(cx + steps * np.cos(angle)).astype(np.intp)
            inside = (rows >= 0) & (cols >= 0)
            levels = np.full(int(inside.sum()), abs(level), dtype=np.float32)
            stamp = SPECK_STAMPS[str(rng.choice(["dot", "plus", "spot"]))]
            add_specks(counts, rows[inside], cols[inside], levels, stamp)
        elif kind == "lit_facade":
            half_x, half_y = rng.uniform(8, 30), rng.uniform(8, 30)
            lattice(rng, counts, (cx, cy, half_x, half_y), angle if rng.random() < 0.3 else 0.0, abs(level))
        else:
            paint_shape(counts, cx, cy, rng.uniform(6, 18), rng.uniform(6, 18), angle, level, kind="rect")
        kinds.append(kind)
    return kinds
