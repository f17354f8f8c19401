"""Shared by the training tests: a tiny YOLO dataset (numpy + Pillow) and one torch thread."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


def write_squares_dataset(root: Path, train: int = 16, val: int = 4, size: int = 64, seed: int = 0) -> Path:
    """Frames of `size` px, dark noisy background, 1..3 bright squares of 3..6 px; returns data.yaml."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            frame = rng.normal(40, 4, (size, size)).clip(0, 255)
            lines = []
            for _ in range(rng.integers(1, 4)):
                side = int(rng.integers(3, 7))
                x, y = (int(v) for v in rng.integers(2, size - side - 2, 2))
                frame[y : y + side, x : x + side] = 230
                box = max(side, 4)
                cx, cy = x + side / 2, y + side / 2
                lines.append(f"0 {cx / size:.6f} {cy / size:.6f} {box / size:.6f} {box / size:.6f}")
            Image.fromarray(frame.astype(np.uint8)).save(root / "images" / split / f"{split}_{index:03d}.png")
            (root / "labels" / split / f"{split}_{index:03d}.txt").write_text("\n".join(lines) + "\n")
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: target\n")
    return data


@pytest.fixture
def squares_dataset(tmp_path: Path) -> Path:
    return write_squares_dataset(tmp_path / "squares")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one torch thread is as fast, and far steadier when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
