"""Synthetic data generator: determinism, labels, dataset layout, bit depth, video and the holdout recipe."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest
import yaml
from PIL import Image

from model.imaging import tone_map
from model.synth import SynthConfig, frame_rng, generate_frame, holdout_config, write_dataset, write_video
from model.synth import cli as synth_cli
from model.synth.backgrounds import FAMILIES, HOLDOUT_FAMILIES, cold_pits, long_crests, render_background
from model.synth.clutter import CLUTTER_KINDS, HOLDOUT_CLUTTER_KINDS
from model.synth.sensor import grow_clusters
from model.synth.shapes import lattice, speck_crowd
from model.synth.targets import DEFAULT_KINDS, HOLDOUT_KINDS, MIN_BOX_SIDE, insert_target, ring_std, sample_spec

SMALL = SynthConfig(width=96, height=80)


def _read_labels(path: Path) -> list[list[float]]:
    return [[float(value) for value in line.split()] for line in path.read_text().splitlines() if line.strip()]


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != "data.yaml"
    }


def test_same_seed_same_frame_and_different_seed_differs() -> None:
    first = generate_frame(frame_rng(3, "train", 5), SMALL)
    again = generate_frame(frame_rng(3, "train", 5), SMALL)
    other = generate_frame(frame_rng(4, "train", 5), SMALL)
    assert np.array_equal(first.raw16, again.raw16)
    assert np.array_equal(first.image8, again.image8)
    assert first.targets == again.targets
    assert not np.array_equal(first.raw16, other.raw16)


def test_frame_types_and_tone_mapping() -> None:
    frame = generate_frame(frame_rng(0, "train", 0), SMALL)
    assert frame.raw16.dtype == np.uint16 and frame.raw16.shape == (80, 96)
    assert frame.image8.dtype == np.uint8 and frame.image8.shape == (80, 96)
    assert np.array_equal(frame.image8, tone_map(frame.raw16))


@pytest.mark.parametrize("config", [SynthConfig(width=64, height=48, max_targets=8), holdout_config(64, 48)])
def test_boxes_hold_the_peak_pixel_and_lie_inside_the_frame(config: SynthConfig) -> None:
    seen = 0
    for index in range(40):
        frame = generate_frame(frame_rng(1, "train", index, config.recipe), config)
        for target in frame.targets:
            x1, y1, x2, y2 = target.xyxy()
            assert 0.0 <= x1 < x2 <= config.width and 0.0 <= y1 < y2 <= config.height
            assert x1 <= target.peak_x and target.peak_x + 1 <= x2 + 1e-9
            assert y1 <= target.peak_y and target.peak_y + 1 <= y2 + 1e-9
            touches_edge = x1 == 0 or y1 == 0 or x2 == config.width or y2 == config.height
            assert touches_edge or (target.w >= MIN_BOX_SIDE - 1e-9 and target.h >= MIN_BOX_SIDE - 1e-9)
            assert abs(target.peak) > 0 and target.snr > 0
            seen += 1
    assert seen > 40


def test_snr_is_peak_over_ring_std() -> None:
    rng = np.random.default_rng(0)
    clutter = rng.normal(100.0, 7.0, (64, 64)).astype(np.float32)
    signal = np.zeros((64, 64), dtype=np.float32)
    spec = sample_spec(rng, (("gaussian", 1.0),), (3.0, 3.0), (5.0, 5.0), cold_fraction=0.0)
    target = insert_target(signal, clutter, spec, 31.3, 30.8)
    assert target is not None
    assert signal[target.peak_y, target.peak_x] == pytest.approx(target.peak, rel=1e-5)
    assert signal.max() == pytest.approx(target.peak, rel=1e-5)
    inner = max(3.0, target.extent / 2 + 2.0)
    assert target.peak / ring_std(clutter, 31.3, 30.8, inner, inner + 5.0) == pytest.approx(5.0, rel=1e-4)
    assert target.snr == pytest.approx(5.0, rel=1e-4)


def test_cold_targets_are_darker() -> None:
    rng = np.random.default_rng(1)
    clutter = rng.normal(0.0, 3.0, (48, 48)).astype(np.float32)
    signal = np.zeros((48, 48), dtype=np.float32)
    spec = sample_spec(rng, (("blob", 1.0),), (6.0, 6.0), (8.0, 8.0), cold_fraction=1.0)
    target = insert_target(signal, clutter, spec, 24.0, 24.0)
    assert target is not None and target.peak < 0
    assert signal[target.peak_y, target.peak_x] == signal.min()


def test_dataset_layout_labels_and_yaml(tmp_path: Path) -> None:
    data_yaml = write_dataset(tmp_path / "ds", train=4, val=2, config=SMALL, seed=7, depth="8", jobs=1)
    content = yaml.safe_load(data_yaml.read_text())
    root = Path(content["path"])
    assert root.is_absolute() and root == (tmp_path / "ds").resolve()
    assert content["names"] == {0: "target"}
    for split, count in (("train", 4), ("val", 2)):
        images = sorted((root / content[split]).glob("*.png"))
        assert len(images) == count
        records = [json.loads(line) for line in (root / "meta" / f"{split}.jsonl").read_text().splitlines()]
        assert [record["image"] for record in records] == [f"images/{split}/{image.name}" for image in images]
        for image, record in zip(images, records, strict=True):
            assert Image.open(image).mode == "L"
            rows = _read_labels(root / "labels" / split / f"{image.stem}.txt")
            assert len(rows) == len(record["targets"])
            for row in rows:
                assert len(row) == 5 and row[0] == 0
                assert all(0.0 <= value <= 1.0 for value in row[1:])
    preview = Image.open(root / "preview.png")
    assert preview.mode == "RGB" and preview.width > SMALL.width


def test_dataset_is_byte_identical_for_a_seed_with_any_job_count(tmp_path: Path) -> None:
    write_dataset(tmp_path / "a", train=3, val=2, config=SMALL, seed=11, jobs=1)
    write_dataset(tmp_path / "b", train=3, val=2, config=SMALL, seed=11, jobs=2)
    write_dataset(tmp_path / "c", train=3, val=2, config=SMALL, seed=12, jobs=1)
    first, second, third = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert first == second
    assert first.keys() == third.keys() and first != third


def test_rerun_with_fewer_frames_drops_stale_files(tmp_path: Path) -> None:
    write_dataset(tmp_path, train=4, val=1, config=SMALL, seed=0, jobs=1)
    write_dataset(tmp_path, train=2, val=1, config=SMALL, seed=0, jobs=1)
    assert len(list((tmp_path / "images" / "train").iterdir())) == 2
    assert len(list((tmp_path / "labels" / "train").iterdir())) == 2


def test_sixteen_bit_output_uses_more_than_eight_bits(tmp_path: Path) -> None:
    write_dataset(tmp_path / "d16", train=3, val=0, config=SMALL, seed=2, depth="16", jobs=1)
    for path in sorted((tmp_path / "d16" / "images" / "train").glob("*.png")):
        with Image.open(path) as image:
            assert image.mode.startswith("I;16")
            raw = np.asarray(image, dtype=np.uint16)
        assert raw.max() > 255 and int(raw.max()) - int(raw.min()) > 255


def test_depth_both_writes_an_eight_bit_tree_and_a_raw_mirror(tmp_path: Path) -> None:
    write_dataset(tmp_path, train=2, val=1, config=SMALL, seed=5, depth="both", jobs=1)
    eight = sorted(path.relative_to(tmp_path / "images") for path in (tmp_path / "images").rglob("*.png"))
    mirror = sorted(path.relative_to(tmp_path / "images16") for path in (tmp_path / "images16").rglob("*.png"))
    assert eight == mirror and len(eight) == 3
    for name in eight:
        image8 = np.asarray(Image.open(tmp_path / "images" / name))
        raw = np.asarray(Image.open(tmp_path / "images16" / name), dtype=np.uint16)
        assert image8.dtype == np.uint8 and np.array_equal(tone_map(raw), image8)


def test_distractor_frames_label_only_targets(tmp_path: Path) -> None:
    cluttered = replace(SMALL, clutter_rate=80.0, hot_pixel_rate=2e-3)
    for index in range(6):
        frame = generate_frame(frame_rng(9, "train", index), cluttered)
        assert len(frame.clutter) > 0
    write_dataset(tmp_path / "c", train=6, val=0, config=cluttered, seed=9, jobs=1)
    records = [json.loads(line) for line in (tmp_path / "c" / "meta" / "train.jsonl").read_text().splitlines()]
    for record in records:
        assert record["clutter"]
        rows = _read_labels(tmp_path / "c" / "labels" / "train" / (Path(record["image"]).stem + ".txt"))
        assert len(rows) == len(record["targets"])
    empty = replace(cluttered, min_targets=0, max_targets=0)
    write_dataset(tmp_path / "e", train=2, val=0, config=empty, seed=9, jobs=1)
    for label in (tmp_path / "e" / "labels" / "train").glob("*.txt"):
        assert label.read_text() == ""


def test_speck_crowds_fall_where_the_score_is_highest() -> None:
    rng = np.random.default_rng(0)
    score = np.zeros((64, 64), dtype=np.float32)
    score[40:, :] = rng.random((24, 64))  # only the lower part can hold specks
    specks = speck_crowd(rng, score, fraction=0.2, level=3.0)
    assert not specks[:38].any(), "no speck above the high-score region (stamps reach at most 2 px down)"
    assert np.count_nonzero(specks) >= 20 and specks.max() > 1.0


@pytest.mark.parametrize("seed", range(4))
def test_long_crests_run_along_rows_and_crowd_towards_the_top(seed: int) -> None:
    field = long_crests(np.random.default_rng(seed), 128, 160)
    across = np.abs(np.diff(field, axis=0))  # from row to row, across the crests
    along = np.abs(np.diff(field, axis=1))
    assert across.mean() > 1.3 * along.mean(), "crests are longer than they are wide"
    assert across[:32].mean() > across[-32:].mean(), "crests are closer together near the horizon"


@pytest.mark.parametrize("seed", range(4))
def test_cold_pits_are_small_separate_spots(seed: int) -> None:
    depth = cold_pits(np.random.default_rng(seed), 256, 256)
    assert depth.min() == 0.0 and depth.max() > 0.5, "a depth map to subtract: never warm"
    pitted = depth > 0.05
    assert 0 < pitted.mean() < 0.05, "pits cover a little of the frame"
    assert pitted.mean(axis=0).max() < 0.25 and pitted.mean(axis=1).max() < 0.25, "small spots, no large patch"


def test_lattice_is_a_regular_grid_inside_its_box() -> None:
    canvas = np.zeros((80, 80), dtype=np.float32)
    lattice(np.random.default_rng(1), canvas, (40.0, 40.0, 20.0, 12.0), 0.0, 2.0)
    rows, cols = np.nonzero(canvas)
    assert len(rows) >= 8
    assert rows.min() >= 27 and rows.max() <= 52 and cols.min() >= 19 and cols.max() <= 60
    assert set(np.unique(canvas)) == {0.0, 2.0}


def test_defect_clusters_are_connected_groups_of_two_to_four_pixels() -> None:
    width, seed_pixel = 100, 50 * 100 + 50
    rng, sizes = np.random.default_rng(0), set()
    for _ in range(300):
        cluster = {divmod(int(i), width) for i in grow_clusters(rng, np.array([seed_pixel]), width)}
        sizes.add(len(cluster))
        reached, frontier = {(50, 50)}, [(50, 50)]
        while frontier:  # 8-connected flood fill from the seed pixel
            y, x = frontier.pop()
            for near in cluster - reached:
                if max(abs(near[0] - y), abs(near[1] - x)) == 1:
                    reached.add(near)
                    frontier.append(near)
        assert reached == cluster
    assert sizes == {2, 3, 4}


def test_holdout_clutter_kinds_stay_the_original_four() -> None:
    assert HOLDOUT_CLUTTER_KINDS == ("warm_blob", "edge", "corner", "building")
    assert set(HOLDOUT_CLUTTER_KINDS) < set(CLUTTER_KINDS)
    seen = set()
    for index in range(12):
        seen.update(generate_frame(frame_rng(4, "val", index, "holdout"), holdout_config(160, 128)).clutter)
    assert seen <= set(HOLDOUT_CLUTTER_KINDS)


def test_video_decodes_with_labels_and_tracks(tmp_path: Path) -> None:
    config = SynthConfig(width=128, height=96, min_targets=2, max_targets=3)
    video = write_video(tmp_path, frames=10, config=config, seed=4, fps=25.0)
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    assert len(decoded) == 10
    assert all(frame.shape == (96, 128, 3) for frame in decoded)
    tracks = json.loads((tmp_path / "tracks.json").read_text())
    assert len(tracks["frames"]) == 10
    for index, objects in enumerate(tracks["frames"]):
        rows = _read_labels(tmp_path / "labels" / f"{index:06d}.txt")
        assert len(rows) == len(objects)
        for row, item in zip(rows, objects, strict=True):
            assert row[1] == pytest.approx(item["cx"] / 128, abs=1e-5)
            assert {"track_id", "cx", "cy", "w", "h"} <= item.keys()
    first = {item["track_id"]: item for item in tracks["frames"][0]}
    moved = [item for item in tracks["frames"][-1] if item["track_id"] in first]
    assert moved and any(abs(item["cx"] - first[item["track_id"]]["cx"]) > 0.5 for item in moved)


def test_video_rejects_odd_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path, frames=2, config=SynthConfig(width=97, height=80), seed=0)


def test_holdout_is_a_different_recipe() -> None:
    default, holdout = SynthConfig(), holdout_config()
    assert (holdout.width, holdout.height, holdout.recipe) == (640, 512, "holdout")
    assert {name for name, _ in holdout.background_weights}.isdisjoint(name for name, _ in default.background_weights)
    assert {name for name, _ in holdout.target_weights}.isdisjoint(name for name, _ in default.target_weights)
    small = replace(holdout, width=96, height=80)
    counts, kinds = [], set()
    for index in range(12):
        frame = generate_frame(frame_rng(0, "val", index, "holdout"), small)
        counts.append(len(frame.targets))
        kinds |= {target.kind for target in frame.targets}
        assert frame.background in HOLDOUT_FAMILIES
        assert all(4.0 - 1e-6 <= target.snr <= 12.0 + 1e-6 for target in frame.targets)
    assert min(counts) >= 1 and max(counts) <= 4
    assert kinds <= set(HOLDOUT_KINDS) and kinds.isdisjoint(DEFAULT_KINDS)
    plain = generate_frame(frame_rng(0, "val", 0), replace(default, width=96, height=80))
    assert plain.background in FAMILIES
    held = generate_frame(frame_rng(0, "val", 0, "holdout"), small)
    assert not np.array_equal(plain.raw16, held.raw16)


@pytest.mark.parametrize("family", [*FAMILIES, *HOLDOUT_FAMILIES])
def test_every_background_family_is_finite_and_textured(family: str) -> None:
    scene = render_background(np.random.default_rng(0), family, 48, 64)
    assert scene.shape == (48, 64) and scene.dtype == np.float32
    assert np.isfinite(scene).all() and scene.std() > 0


def test_invalid_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="recipe"):
        SynthConfig(recipe="other")
    with pytest.raises(ValueError, match="min_targets"):
        SynthConfig(min_targets=3, max_targets=1)
    with pytest.raises(ValueError, match="family"):
        SynthConfig(background_weights=(("moon", 1.0),))


def test_cli_writes_a_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers(dest="command")
    bench = subparsers.add_parser("bench").add_subparsers(dest="bench")
    synth_cli.register(subparsers, bench)
    out = tmp_path / "cli"
    args = parser.parse_args(
        ["synth", "--out", str(out), "--train", "2", "--val", "1", "--size", "64x48", "--jobs", "1"]
    )
    assert args.func(args) == 0
    assert "wrote 2 train + 1 val 64x48 frames" in capsys.readouterr().out
    assert (out / "data.yaml").is_file() and len(list((out / "images" / "train").glob("*.png"))) == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["synth", "--out", str(out), "--size", "64by48"])


def _synth_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers(dest="command")
    synth_cli.register(subparsers, subparsers.add_parser("bench").add_subparsers(dest="bench"))
    return parser


def test_cli_backgrounds_choose_the_families(tmp_path: Path) -> None:
    parser = _synth_parser()
    out = tmp_path / "sea"
    common = ["synth", "--out", str(out), "--train", "4", "--val", "0", "--size", "64x48", "--jobs", "1"]
    args = parser.parse_args([*common, "--backgrounds", "sea=3,horizon=1"])
    assert args.backgrounds == (("sea", 3.0), ("horizon", 1.0))
    assert args.func(args) == 0
    meta = [json.loads(line) for line in (out / "meta" / "train.jsonl").read_text().splitlines()]
    assert len(meta) == 4 and {frame["background"] for frame in meta} <= {"sea", "horizon"}
    assert yaml.safe_load((out / "data.yaml").read_text())["synth"]["backgrounds"] == {"sea": 3.0, "horizon": 1.0}
    with pytest.raises(ValueError, match="unknown background swell for the default recipe; choose from sky"):
        args = parser.parse_args([*common, "--backgrounds", "sea,swell"])
        args.func(args)
    for bad in ("sea=x", "sea=0", "=2", "sea=inf", "sea=1,sea=2"):
        with pytest.raises(SystemExit):
            parser.parse_args([*common, "--backgrounds", bad])


def test_cli_shapes_the_targets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = _synth_parser()
    out = tmp_path / "shaped"
    common = ["synth", "--out", str(out), "--train", "6", "--val", "0", "--size", "96x80", "--jobs", "1"]
    args = parser.parse_args([*common, "--targets", "2,3", "--target-size", "2,4", "--snr", "5,6"])
    assert args.func(args) == 0
    meta = [json.loads(line) for line in (out / "meta" / "train.jsonl").read_text().splitlines()]
    assert len(meta) == 6 and all(2 <= len(frame["targets"]) <= 3 for frame in meta)
    extents = [target["extent"] for frame in meta for target in frame["targets"]]
    assert min(extents) > 1.5 and max(extents) < 4.5  # drawn in 2..4 px; elongated shapes stretch a little
    synth = yaml.safe_load((out / "data.yaml").read_text())["synth"]
    assert (synth["targets"], synth["target_size"], synth["snr"]) == ([2, 3], [2.0, 4.0], [5.0, 6.0])
    for flag, bad, message in (
        ("--targets", "1.5,3", "needs whole numbers from 0"),
        ("--targets", "-1,2", "needs whole numbers from 0"),
        ("--snr", "0,3", "needs values above 0"),
        ("--target-size", "4,3", "needs low <= high"),
        ("--snr", "4", "looks like 4,12"),
        ("--snr", "a,b", "looks like 4,12"),
        ("--snr", "4,inf", "needs finite values"),
        ("--snr", "nan,4", "needs finite values"),
    ):
        with pytest.raises(SystemExit):
            parser.parse_args([*common, f"{flag}={bad}"])  # "=" lets "-1,2" through as a value
        assert f"argument {flag}: " in (err := capsys.readouterr().err) and message in err
