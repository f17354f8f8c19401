"""YOLO-format datasets: data.yaml, image and label discovery, label validation, caching, training samples.

Layout (the ultralytics convention): data.yaml holds `path` (the dataset root; relative paths are taken
from the yaml's folder, and a missing `path` means that folder), `train` and `val` (each a folder of
images, a text file listing image paths, or a list of either), and `names` (a list, or a dict from class
id to name). Each image `.../images/.../NAME.ext` has its labels in `.../labels/.../NAME.txt`, one line
per target: `class x_centre y_centre width height`, coordinates normalised to 0..1. A missing or empty
label file means an image without targets.

Images may be 8- or 16-bit, grey or RGB: they are read with model.imaging (16-bit frames through its AGC)
and become 8-bit RGB. Every problem is a DatasetError naming the file (and line) and what is wrong.
A dataset may also say how large its targets really are (label boxes have a floor of a few pixels, so a 1-px
target and a 4-px one can share a box size): `meta/<split>.jsonl` under the root, one JSON object per image
with `image` (path relative to the root) and `targets` (in label order), each with `extent` in pixels, as
`masenet synth` writes. Evaluation then splits Pd by true size.

Training samples are square `imgsz` canvases: the image is resized so its longer side is `imgsz` and
letterboxed (or tiled into a mosaic), then augmented (model.train.augment).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from model.errors import DatasetError
from model.imaging import ImageDecodeError, load_image, to_rgb8
from model.train.augment import (
    AugmentConfig,
    augment_canvas,
    fit_long_side,
    letterbox_square,
    mosaic,
    visible_boxes,
)

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_CACHE_BYTES = 1 << 30
COORDINATE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class DataConfig:
    """A parsed data.yaml."""

    yaml_path: Path
    root: Path
    names: list[str]
    splits: dict[str, list[str]]

    @property
    def num_classes(self) -> int:
        return len(self.names)


def _parse_names(raw: Any, source: Path) -> list[str]:
    if isinstance(raw, dict):
        try:
            ids = sorted(int(key) for key in raw)
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"{source}: 'names' keys must be class ids 0..nc-1") from exc
        if ids != list(range(len(ids))):
            raise DatasetError(f"{source}: 'names' keys must be consecutive class ids 0..{len(ids) - 1}, got {ids}")
        by_id = {int(key): value for key, value in raw.items()}
        return [str(by_id[index]) for index in ids]
    if isinstance(raw, list):
        return [str(name) for name in raw]
    raise DatasetError(f"{source}: 'names' must be a list of class names or a dict {{id: name}}")


def load_data_config(path: str | Path) -> DataConfig:
    """Read and check a data.yaml (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"data file not found: {path}")
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DatasetError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(content, dict):
        raise DatasetError(f"{path}: expected a mapping with path, train, val and names")
    if "names" not in content:
        raise DatasetError(f"{path}: no 'names' entry (the class names)")
    names = _parse_names(content["names"], path)
    if not names:
        raise DatasetError(f"{path}: 'names' is empty; a dataset needs at least one class")
    if "nc" in content and int(content["nc"]) != len(names):
        raise DatasetError(f"{path}: nc is {content['nc']} but 'names' lists {len(names)} classes")
    root = Path(content.get("path") or path.parent)
    if not root.is_absolute():
        root = (path.parent / root).resolve()
    splits = {}
    for split in ("train", "val", "test"):
        entry = content.get(split)
        if entry:
            splits[split] = [str(item) for item in (entry if isinstance(entry, list) else [entry])]
    return DataConfig(yaml_path=path, root=root, names=names, splits=splits)


def _resolve(root: Path, entry: str) -> Path:
    candidate = Path(entry)
    return candidate if candidate.is_absolute() else root / candidate


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def split_image_paths(config: DataConfig, split: str) -> list[Path]:
    """All images of a split, from its folders and list files, sorted within each entry."""
    if split not in config.splits:
        raise DatasetError(f"{config.yaml_path}: no '{split}' entry (a folder or list file of images)")
    paths: list[Path] = []
    for entry in config.splits[split]:
        location = _resolve(config.root, entry)
        if location.is_dir():
            found = _images_in(location)
            if not found:
                raise DatasetError(f"{config.yaml_path}: {split} folder {location} holds no images")
            paths.extend(found)
        elif location.is_file():
            for line_number, line in enumerate(location.read_text().splitlines(), start=1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                image = _resolve(config.root, line[2:] if line.startswith("./") else line)
                if not image.is_file():
                    raise DatasetError(f"{location}:{line_number}: image not found: {image}")
                paths.append(image)
        else:
            raise DatasetError(f"{config.yaml_path}: {split} entry {entry!r} not found (looked at {location})")
    if not paths:
        raise DatasetError(f"{config.yaml_path}: the {split} split has no images")
    return paths


def label_path_for(image_path: Path) -> Path:
    """`.../images/a/b.png` -> `.../labels/a/b.txt` (the last `images` folder in the path becomes `labels`)."""
    parts = list(image_path.parts)
    for index in range(len(parts) - 2, -1, -1):
        if parts[index] == "images":
            parts[index] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image_path.with_suffix(".txt")


def parse_label_file(path: Path, num_classes: int) -> np.ndarray:
    """Rows (N, 5) class, x_centre, y_centre, width, height (normalised); empty for a missing or blank file."""
    if not path.is_file():
        return np.zeros((0, 5), dtype=np.float32)
    rows = []
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{line_number}"
        if len(fields) != 5:
            raise DatasetError(f"{where}: expected 5 values 'class x_centre y_centre width height', got {len(fields)}")
        try:
            values = [float(field) for field in fields]
        except ValueError as exc:
            raise DatasetError(f"{where}: not a number in {line.strip()!r}") from exc
        class_value, x, y, width, height = values
        if not all(np.isfinite(values)):
            raise DatasetError(f"{where}: values must be finite, got {line.strip()!r}")
        if class_value != int(class_value) or not 0 <= class_value < num_classes:
            raise DatasetError(
                f"{where}: class id {fields[0]} out of range; data.yaml names {num_classes} classes "
                f"(0..{num_classes - 1})"
            )
        if width <= 0 or height <= 0:
            raise DatasetError(f"{where}: width and height must be positive, got {width:g} x {height:g}")
        low, high = -COORDINATE_TOLERANCE, 1 + COORDINATE_TOLERANCE
        if not all(low <= value <= high for value in (x, y, width, height)):
            raise DatasetError(
                f"{where}: coordinates must be normalised to 0..1 (divide pixels by the image size), "
                f"got {line.strip()!r}"
            )
        rows.append(values)
    return np.array(rows, dtype=np.float32).reshape(-1, 5)


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError as exc:
        raise DatasetError(f"image not found: {path}") from exc
    except Exception as exc:  # Pillow raises several types for unreadable files
        raise DatasetError(f"{path}: not a readable image: {exc}") from exc


@dataclass
class Record:
    """One image of a split: its path, size and labels (class + normalised centre/size rows)."""

    image_path: Path
    width: int
    height: int
    labels: np.ndarray

    def boxes_xyxy(self) -> np.ndarray:
        """Label boxes in the image's pixels, (N, 4) x1 y1 x2 y2."""
        centre = self.labels[:, 1:3] * (self.width, self.height)
        size = self.labels[:, 3:5] * (self.width, self.height)
        return np.concatenate([centre - size / 2, centre + size / 2], axis=1).astype(np.float32)

    def classes(self) -> np.ndarray:
        return self.labels[:, 0].astype(np.int64)


class YoloDataset:
    """A split of a YOLO dataset; items are training samples (see __getitem__), usable by a torch DataLoader.

    `augment=None` gives plain letterboxed samples (validation). `cache=None` caches the resized images in
    RAM when they fit in `cache_bytes`; True forces it, False never caches. Set `epoch` before each epoch:
    the random augmentation of an item depends only on (seed, epoch, index), whatever the worker count.
    """

    def __init__(
        self,
        data: str | Path | DataConfig,
        split: str = "train",
        imgsz: int = 320,
        augment: AugmentConfig | None = None,
        cache: bool | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        seed: int = 0,
    ) -> None:
        self.config = data if isinstance(data, DataConfig) else load_data_config(data)
        self.split = split
        self.imgsz = int(imgsz)
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.records = [self._record(path) for path in split_image_paths(self.config, split)]
        self._true_sizes = self._load_true_sizes()
        self._cache: dict[int, tuple[np.ndarray, float]] = {}
        if cache is None:
            cache = len(self.records) * self.imgsz * self.imgsz * 3 <= cache_bytes
        if cache:
            for index in range(len(self.records)):
                self._cache[index] = self._load_resized_image(index)
        logger.info(
            "%s split: %d images, %d targets%s",
            split,
            len(self.records),
            sum(len(r.labels) for r in self.records),
            " (cached in RAM)" if cache else "",
        )

    def _record(self, image_path: Path) -> Record:
        if not image_path.is_file():
            raise DatasetError(f"image not found: {image_path}")
        width, height = _image_size(image_path)
        labels = parse_label_file(label_path_for(image_path), self.config.num_classes)
        return Record(image_path=image_path, width=width, height=height, labels=labels)

    def _meta_files(self) -> list[Path]:
        """Where true target sizes may be: `meta/<split>.jsonl` under the data root, and under the dataset tree of
        each image folder (`<tree>/images/<folder>/...` -> `<tree>/meta/<folder>.jsonl`), so a data.yaml that
        lists folders of several generated datasets still finds each one's sizes."""
        candidates = {self.config.root / "meta" / f"{self.split}.jsonl": None}
        for record in self.records:
            folders = record.image_path.parent.parts
            if "images" in folders[:-1]:
                at = len(folders) - 1 - folders[::-1].index("images")
                candidates[Path(*folders[:at]) / "meta" / f"{folders[at + 1]}.jsonl"] = None
        return [path for path in candidates if path.is_file()]

    def _load_true_sizes(self) -> dict[int, np.ndarray]:
        """Per image index, true target sizes from meta/*.jsonl files where present and consistent."""
        by_image: dict[Path, list] = {}
        for path in self._meta_files():
            tree, found = path.parent.parent, {}
            try:
                for line in path.read_text().splitlines():
                    if line.strip():
                        entry = json.loads(line)
                        found[(tree / entry["image"]).resolve()] = entry.get("targets", [])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                logger.warning("%s: ignoring target sizes (%s)", path, exc)
                continue
            by_image.update(found)
        sizes = {}
        for index, record in enumerate(self.records):
            targets = by_image.get(record.image_path.resolve())
            if targets is not None and len(targets) == len(record.labels):
                try:
                    sizes[index] = np.array([float(t["extent"]) for t in targets], dtype=np.float64)
                except (KeyError, TypeError, ValueError):
                    continue
        logger.debug("true target sizes for %d of %d %s images", len(sizes), len(self.records), self.split)
        return sizes

    def target_sizes(self, index: int) -> np.ndarray | None:
        """True target sizes in original pixels (label order) when the dataset provides them, else None."""
        return self._true_sizes.get(index)

    @property
    def names(self) -> list[str]:
        return self.config.names

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def __len__(self) -> int:
        return len(self.records)

    def load_frame(self, index: int) -> np.ndarray:
        """The original image as (H, W, 3) uint8 (16-bit frames tone-mapped, grey replicated)."""
        path = self.records[index].image_path
        try:
            return to_rgb8(load_image(str(path)))
        except (ImageDecodeError, OSError) as exc:
            raise DatasetError(f"{path}: {exc}") from exc

    def ground_truth(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (N, 4) xyxy in original pixels and class ids (N,)."""
        record = self.records[index]
        return record.boxes_xyxy(), record.classes()

    def _load_resized_image(self, index: int) -> tuple[np.ndarray, float]:
        frame = self.load_frame(index)
        resized, _, scale = fit_long_side(frame, np.zeros((0, 4), dtype=np.float32), self.imgsz)
        return resized, scale

    def load_resized(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image with its longer side at imgsz, its boxes in those pixels, and class ids."""
        image, scale = self._cache.get(index) or self._load_resized_image(index)
        boxes, classes = self.ground_truth(index)
        return image, boxes * scale, classes

    def __getitem__(self, index: int) -> dict[str, Any]:
        """A square training sample: image (3, imgsz, imgsz) uint8, boxes (N, 4) xyxy pixels, classes (N,)."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self.augment is not None and rng.random() < self.augment.mosaic:
            others = rng.integers(0, len(self), size=3)
            sample = mosaic([self.load_resized(i) for i in (index, *others.tolist())], self.imgsz, rng)
        else:
            sample = letterbox_square(*self.load_resized(index), self.imgsz)
        if self.augment is not None:
            image, boxes, classes = augment_canvas(sample, self.augment, rng)
        else:
            image, boxes, classes = sample[0], visible_boxes(sample[1]), sample[2]
        return {
            "image": np.ascontiguousarray(image.transpose(2, 0, 1)),
            "boxes": boxes.astype(np.float32).reshape(-1, 4),
            "classes": classes.astype(np.int64).reshape(-1),
            "index": index,
        }


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples: images (B, 3, S, S) uint8 tensor and targets (M, 6) rows batch index, class, x1, y1, x2, y2."""
    import torch

    images = torch.from_numpy(np.stack([sample["image"] for sample in samples]))
    rows = [
        np.concatenate(
            [np.full((len(s["classes"]), 1), b, np.float32), s["classes"][:, None].astype(np.float32), s["boxes"]],
            axis=1,
        )
        for b, s in enumerate(samples)
    ]
    targets = torch.from_numpy(np.concatenate(rows) if rows else np.zeros((0, 6), np.float32))
    return {"images": images, "targets": targets, "indices": [s["index"] for s in samples]}


def describe(dataset: YoloDataset) -> str:
    """One line about a split, for logs and provenance."""
    targets = sum(len(record.labels) for record in dataset.records)
    return f"{dataset.split}: {len(dataset)} images, {targets} targets, {dataset.num_classes} classes"


def worker_count(requested: int) -> int:
    """Data-loading workers: at most the requested number and the CPUs there are."""
    return max(0, min(requested, os.cpu_count() or 1))
