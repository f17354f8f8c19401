"""The YOLO loader: data.yaml forms, 16-bit and grey images, and clear errors on malformed datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.errors import DatasetError
from model.train.augment import AugmentConfig
from model.train.data import YoloDataset, collate, label_path_for, load_data_config, parse_label_file


def _write_label(dataset: Path, name: str, text: str) -> Path:
    path = dataset.parent / "labels" / "train" / name
    path.write_text(text)
    return path


def test_loads_squares_dataset(squares_dataset: Path) -> None:
    dataset = YoloDataset(squares_dataset, "train", imgsz=64, augment=None)
    assert len(dataset) == 16 and dataset.names == ["target"]
    sample = dataset[0]
    assert sample["image"].shape == (3, 64, 64) and sample["image"].dtype == np.uint8
    assert sample["boxes"].shape[1] == 4 and len(sample["boxes"]) == len(sample["classes"]) >= 1
    batch = collate([dataset[0], dataset[1]])
    assert tuple(batch["images"].shape) == (2, 3, 64, 64)
    assert batch["targets"].shape[1] == 6 and set(batch["targets"][:, 0].tolist()) == {0.0, 1.0}


def test_letterbox_keeps_aspect_and_scales_boxes(tmp_path: Path) -> None:
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    Image.fromarray(np.zeros((50, 100), np.uint8)).save(tmp_path / "images" / "train" / "a.png")
    (tmp_path / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.1 0.2\n")
    (tmp_path / "d.yaml").write_text("train: images/train\nval: images/train\nnames: [target]\n")
    sample = YoloDataset(tmp_path / "d.yaml", "train", imgsz=200)[0]
    # 100x50 becomes 200x100, centred on a 200x200 canvas: rows 50..150.
    np.testing.assert_allclose(sample["boxes"][0], [90, 90, 110, 110], atol=1e-4)
    assert sample["image"][0, 10, 10] == 114 and sample["image"][0, 100, 100] == 0


def test_sixteen_bit_grey_images_become_rgb8(tmp_path: Path) -> None:
    (tmp_path / "images" / "val").mkdir(parents=True)
    frame = np.full((32, 32), 1000, np.uint16)
    frame[10:14, 10:14] = 4000
    Image.fromarray(frame).save(tmp_path / "images" / "val" / "a.png")
    (tmp_path / "d.yaml").write_text("val: images/val\nnames: {0: target}\n")
    dataset = YoloDataset(tmp_path / "d.yaml", "val", imgsz=32)
    rgb = dataset.load_frame(0)
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    assert rgb[12, 12, 0] == 255 and rgb[0, 0, 0] < 10 and (rgb[..., 0] == rgb[..., 2]).all()
    assert len(dataset.ground_truth(0)[0]) == 0  # no label file: an image without targets


def test_list_file_and_names_list(squares_dataset: Path) -> None:
    root = squares_dataset.parent
    (root / "train.txt").write_text("./images/train/train_000.png\nimages/train/train_001.png\n")
    (root / "list.yaml").write_text(f"path: {root}\ntrain: train.txt\nval: images/val\nnames: [target]\n")
    assert len(YoloDataset(root / "list.yaml", "train", imgsz=64)) == 2


def test_label_path_uses_last_images_folder() -> None:
    assert label_path_for(Path("/d/images/x/images/train/a.png")) == Path("/d/images/x/labels/train/a.txt")


def test_missing_yaml_and_split(tmp_path: Path, squares_dataset: Path) -> None:
    with pytest.raises(DatasetError, match="data file not found"):
        load_data_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text(f"path: {squares_dataset.parent}\ntrain: images/missing\nnames: [a]\n")
    with pytest.raises(DatasetError, match="images/missing"):
        YoloDataset(tmp_path / "bad.yaml", "train")
    with pytest.raises(DatasetError, match="no 'val' entry"):
        YoloDataset(tmp_path / "bad.yaml", "val")


def test_missing_image_in_list_file(squares_dataset: Path) -> None:
    root = squares_dataset.parent
    (root / "train.txt").write_text("images/train/train_000.png\nimages/train/gone.png\n")
    (root / "list.yaml").write_text(f"path: {root}\ntrain: train.txt\nnames: [target]\n")
    with pytest.raises(DatasetError, match=r"train.txt:2: image not found: .*gone.png"):
        YoloDataset(root / "list.yaml", "train")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0 0.5 0.5 0.1\n", r"train_000.txt:1: expected 5 values"),
        ("0 0.5 0.5 0.1 0.1\n0 0.5 zero 0.1 0.1\n", r"train_000.txt:2: not a number"),
        ("3 0.5 0.5 0.1 0.1\n", r"train_000.txt:1: class id 3 out of range; data.yaml names 1 classes"),
        ("0 32 20 4 4\n", r"train_000.txt:1: coordinates must be normalised to 0..1"),
        ("0 0.5 0.5 0 0.1\n", r"train_000.txt:1: width and height must be positive"),
    ],
)
def test_bad_labels_name_file_line_and_reason(squares_dataset: Path, text: str, message: str) -> None:
    _write_label(squares_dataset, "train_000.txt", text)
    with pytest.raises(DatasetError, match=message):
        YoloDataset(squares_dataset, "train", imgsz=64)


def test_parse_label_file_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("\n0 0.5 0.5 0.1 0.1\n\n")
    assert parse_label_file(path, 1).shape == (1, 5)
    assert parse_label_file(tmp_path / "missing.txt", 1).shape == (0, 5)


def test_true_sizes_from_meta(squares_dataset: Path) -> None:
    root = squares_dataset.parent
    lines = (root / "labels" / "val" / "val_000.txt").read_text().split("\n")
    count = len([line for line in lines if line.strip()])
    targets = ", ".join('{"extent": 1.5}' for _ in range(count))
    (root / "meta").mkdir()
    (root / "meta" / "val.jsonl").write_text(f'{{"image": "images/val/val_000.png", "targets": [{targets}]}}\n')
    dataset = YoloDataset(squares_dataset, "val", imgsz=64)
    np.testing.assert_allclose(dataset.target_sizes(0), [1.5] * count)
    assert dataset.target_sizes(1) is None


def test_true_sizes_from_meta_beside_each_listed_tree(squares_dataset: Path, tmp_path: Path) -> None:
    """A data.yaml elsewhere that lists a generated dataset's folder still reads that dataset's meta/val.jsonl."""
    root = squares_dataset.parent
    lines = (root / "labels" / "val" / "val_001.txt").read_text().split("\n")
    targets = ", ".join('{"extent": 2.5}' for line in lines if line.strip())
    (root / "meta").mkdir()
    (root / "meta" / "val.jsonl").write_text(f'{{"image": "images/val/val_001.png", "targets": [{targets}]}}\n')
    mix = tmp_path / "mix.yaml"
    mix.write_text(f"path: .\ntrain: {root.name}/images/train\nval: [{root.name}/images/val]\nnames: {{0: target}}\n")
    dataset = YoloDataset(mix, "val", imgsz=64)
    assert dataset.target_sizes(0) is None
    np.testing.assert_allclose(dataset.target_sizes(1), [2.5] * len(dataset.records[1].labels))
    (root / "meta" / "val.jsonl").write_text("not json\n")
    assert YoloDataset(mix, "val", imgsz=64).target_sizes(1) is None


def test_augmented_items_depend_on_epoch_and_index_only(squares_dataset: Path) -> None:
    dataset = YoloDataset(squares_dataset, "train", imgsz=64, augment=AugmentConfig(mosaic=1.0), seed=3)
    first = dataset[5]
    again = dataset[5]
    np.testing.assert_array_equal(first["image"], again["image"])
    dataset.epoch = 1
    assert not np.array_equal(first["image"], dataset[5]["image"])
