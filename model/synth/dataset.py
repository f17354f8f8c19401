"""Frame composition and the dataset, preview and video writers.

A frame is built in this order (see config.py for the settings; backgrounds.py, clutter.py, sensor.py and
targets.py for each step):

    scene (background family) -> counts (gain, offset) -> clutter objects -> optics, vignetting, FPN
    -> temporal noise -> targets scaled to their SNR against the noisy target-free frame
    -> dead/hot pixels, rounding to the bit depth (raw16) -> the service's AGC (image8 = tone_map(raw16))

Every frame has its own generator seeded from (seed, split, index, recipe), so a dataset is byte-identical
for a given seed however many processes write it.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import re
import sys
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

from model.imaging import tone_map
from model.synth.backgrounds import render_background
from model.synth.clutter import CLUTTER_KINDS, HOLDOUT_CLUTTER_KINDS, add_clutter
from model.synth.config import RECIPE_CODES, SynthConfig
from model.synth.sensor import add_noise, digitise, draw_temporal, expose, sample_sensor, to_counts
from model.synth.targets import Target, insert_target, place_targets, sample_spec, spawn_track

logger = logging.getLogger(__name__)

DEPTHS = ("8", "16", "both")
_SPLIT_CODES = {"train": 0, "val": 1, "video": 2, "preview": 3}


@dataclass
class SynthFrame:
    """One generated frame: raw 16-bit counts, the 8-bit AGC image and its labelled targets."""

    raw16: np.ndarray  # (H, W) uint16
    image8: np.ndarray  # (H, W) uint8, tone_map(raw16)
    targets: list[Target]
    background: str = ""
    clutter: list[str] = field(default_factory=list)


def frame_rng(seed: int, split: str, index: int, recipe: str = "default") -> np.random.Generator:
    """The generator of one frame, from (seed, split, index, recipe)."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got {seed}, {index}")
    return np.random.default_rng([seed, _SPLIT_CODES[split], index, RECIPE_CODES[recipe]])


def _choose(rng: np.random.Generator, weights: tuple[tuple[str, float], ...]) -> str:
    values = np.array([weight for _, weight in weights], dtype=np.float64)
    return weights[int(rng.choice(len(weights), p=values / values.sum()))][0]


def _clutter(config: SynthConfig) -> tuple[str, ...]:
    return HOLDOUT_CLUTTER_KINDS if config.recipe == "holdout" else CLUTTER_KINDS


def _target_count(rng: np.random.Generator, config: SynthConfig) -> int:
    if config.max_targets == 0 or (config.min_targets == 0 and rng.random() < config.empty_fraction):
        return 0
    return int(rng.integers(max(config.min_targets, 1), config.max_targets + 1))


def _spec(rng: np.random.Generator, config: SynthConfig):
    return sample_spec(
        rng, config.target_weights, config.size_range, config.snr_range, config.cold_fraction, config.snr_log_uniform
    )


def generate_frame(rng: np.random.Generator, config: SynthConfig) -> SynthFrame:
    """Generate one frame with its targets (see the module docstring for the order of the steps)."""
    height, width = config.height, config.width
    family = _choose(rng, config.background_weights)
    scene = render_background(rng, family, height, width)
    sensor = sample_sensor(rng, height, width, config)
    counts = to_counts(sensor, scene)
    reference = max(sensor.contrast * float(scene.std()), 6.0 * sensor.reference_noise)
    clutter = add_clutter(rng, counts, reference, config.clutter_rate * width * height / (320 * 256), _clutter(config))
    signal = expose(sensor, counts)
    temporal = draw_temporal(rng, sensor, height, width)
    target_free = add_noise(sensor, signal, temporal)
    specs = [_spec(rng, config) for _ in range(_target_count(rng, config))]
    targets = place_targets(rng, signal, target_free, specs)
    raw = digitise(sensor, add_noise(sensor, signal, temporal))
    return SynthFrame(raw16=raw, image8=tone_map(raw), targets=targets, background=family, clutter=clutter)


# ------------------------------------------------------------------------------------------------- dataset
def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def _write_frame(task: tuple[Path, str, int, int, SynthConfig, str]) -> tuple[str, int, dict]:
    out, split, index, seed, config, depth = task
    frame = generate_frame(frame_rng(seed, split, index, config.recipe), config)
    name = f"{split}_{index:06d}"
    _save_png(frame.raw16 if depth == "16" else frame.image8, out / "images" / split / f"{name}.png")
    if depth == "both":
        _save_png(frame.raw16, out / "images16" / split / f"{name}.png")
    lines = [target.yolo_line(config.width, config.height) for target in frame.targets]
    (out / "labels" / split / f"{name}.txt").write_text("".join(line + "\n" for line in lines))
    record = {
        "image": f"images/{split}/{name}.png",
        "background": frame.background,
        "clutter": frame.clutter,
        "targets": [target.to_dict() for target in frame.targets],
    }
    return split, index, record


def _remove_stale(folder: Path, split: str, count: int) -> None:
    """Drop files of an earlier, larger run (same naming scheme) so the split holds exactly `count` frames."""
    pattern = re.compile(rf"{split}_(\d{{6}})\.(png|txt)")
    for path in folder.glob(f"{split}_*"):
        match = pattern.fullmatch(path.name)
        if match and int(match.group(1)) >= count:
            path.unlink()


def _run_tasks(tasks: list, jobs: int, progress: bool, description: str) -> list:
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), desc=description, unit="frame", file=sys.stderr, disable=not progress)
    results = []
    if jobs <= 1 or len(tasks) < 2:
        for task in tasks:
            results.append(_write_frame(task))
            bar.update()
    else:
        with multiprocessing.get_context("spawn").Pool(min(jobs, len(tasks))) as pool:
            for result in pool.imap_unordered(_write_frame, tasks, chunksize=4):
                results.append(result)
                bar.update()
    bar.close()
    return results


def write_dataset(
    out_dir: str | Path,
    train: int,
    val: int,
    config: SynthConfig,
    seed: int,
    depth: str = "8",
    jobs: int = 2,
    progress: bool = False,
) -> Path:
    """Write an ultralytics-layout dataset (images/, labels/, data.yaml, meta/*.jsonl, preview.png).

    depth "8" writes the tone-mapped 8-bit PNGs, "16" the raw 16-bit PNGs, "both" 8-bit into images/ and
    the raw mirror into images16/ under the same names. Returns the path of data.yaml.
    """
    if depth not in DEPTHS:
        raise ValueError(f"depth must be one of {DEPTHS}, got {depth!r}")
    if train < 0 or val < 0:
        raise ValueError(f"frame counts must be non-negative, got train={train}, val={val}")
    out = Path(out_dir).expanduser().resolve()
    counts = {"train": train, "val": val}
    roots = ["images", "labels"] + (["images16"] if depth == "both" else [])
    for split, count in counts.items():
        for root in roots:
            (out / root / split).mkdir(parents=True, exist_ok=True)
            _remove_stale(out / root / split, split, count)
    tasks = [(out, split, index, seed, config, depth) for split, count in counts.items() for index in range(count)]
    results = _run_tasks(tasks, jobs, progress, f"synth {config.recipe}")
    (out / "meta").mkdir(exist_ok=True)
    for split in counts:
        records = sorted((index, record) for name, index, record in results if name == split)
        lines = [json.dumps(record, sort_keys=True) for _, record in records]
        (out / "meta" / f"{split}.jsonl").write_text("".join(line + "\n" for line in lines))
    data = {
        "path": str(out),
        "train": "images/train",
        "val": "images/val",
        "names": {0: "target"},
        "synth": {
            "recipe": config.recipe,
            "seed": seed,
            "width": config.width,
            "height": config.height,
            "depth": depth,
            "backgrounds": dict(config.background_weights),
            "targets": [config.min_targets, config.max_targets],
            "target_size": list(config.size_range),
            "snr": list(config.snr_range),
            "train": train,
            "val": val,
        },
    }
    yaml_path = out / "data.yaml"
    yaml_path.write_text(yaml.safe_dump(data, sort_keys=False))
    preview_split = "train" if train else "val"
    preview_count = min(8, counts[preview_split])
    if preview_count:
        frames = [
            generate_frame(frame_rng(seed, preview_split, i, config.recipe), config) for i in range(preview_count)
        ]
        write_preview(out / "preview.png", frames)
    logger.info("wrote %d train and %d val frames to %s", train, val, out)
    return yaml_path


def write_preview(path: str | Path, frames: list[SynthFrame], columns: int = 4) -> Path:
    """A grid of frames with their label boxes (drawn 2 px outside the box) and SNRs, as an RGB PNG."""
    if not frames:
        raise ValueError("write_preview needs at least one frame")
    height, width = frames[0].image8.shape
    gap = 4
    rows = (len(frames) + columns - 1) // columns
    canvas = Image.new("RGB", (columns * (width + gap) - gap, rows * (height + gap) - gap), (40, 40, 40))
    draw = ImageDraw.Draw(canvas)
    for slot, frame in enumerate(frames):
        left, top = (slot % columns) * (width + gap), (slot // columns) * (height + gap)
        canvas.paste(Image.fromarray(frame.image8).convert("RGB"), (left, top))
        draw.text((left + 3, top + 2), frame.background, fill=(255, 220, 0))
        for target in frame.targets:
            x1, y1, x2, y2 = target.xyxy()
            colour = (0, 255, 0) if target.peak >= 0 else (0, 200, 255)
            box = (left + x1 - 2, top + y1 - 2, left + x2 + 1, top + y2 + 1)
            draw.rectangle(box, outline=colour)
            draw.text((left + x2 + 3, top + y1 - 4), f"{target.snr:.1f}", fill=colour)
    canvas.save(path)
    return Path(path)


# --------------------------------------------------------------------------------------------------- video
def _crop(image: np.ndarray, x: float, y: float, height: int, width: int) -> np.ndarray:
    """Sub-pixel window of (height, width) at top-left (x, y), bilinear."""
    column, row = int(np.floor(x)), int(np.floor(y))
    frac_x, frac_y = np.float32(x - column), np.float32(y - row)
    window = image[row : row + height + 1, column : column + width + 1]
    rows = window[:-1] * (1 - frac_y) + window[1:] * frac_y
    return rows[:, :-1] * (1 - frac_x) + rows[:, 1:] * frac_x


def write_video(
    out_dir: str | Path, frames: int, config: SynthConfig, seed: int, fps: float = 25.0, progress: bool = False
) -> Path:
    """Write video.mp4 (H.264, yuv420p), labels/NNNNNN.txt per frame and tracks.json; returns the video path.

    Targets move at constant velocity with a small acceleration (some leave, new ones enter), the background
    pans slowly, fixed patterns stay put and temporal noise is new in every frame.
    """
    import av
    from tqdm import tqdm

    width, height = config.width, config.height
    if width % 2 or height % 2:
        raise ValueError(f"H.264 in yuv420p needs an even frame size, got {width}x{height}")
    if frames < 1 or fps <= 0:
        raise ValueError(f"need frames >= 1 and fps > 0, got {frames}, {fps}")
    out = Path(out_dir).expanduser().resolve()
    (out / "labels").mkdir(parents=True, exist_ok=True)
    rng = frame_rng(seed, "video", 0, config.recipe)
    pan = rng.normal(0, 1, 2)
    pan *= rng.uniform(0.03, 0.35) / np.hypot(*pan)
    margin_x, margin_y = int(np.ceil(abs(pan[0]) * frames)) + 2, int(np.ceil(abs(pan[1]) * frames)) + 2
    family = _choose(rng, config.background_weights)
    scene = render_background(rng, family, height + margin_y, width + margin_x)
    sensor = sample_sensor(rng, height, width, config)
    counts = to_counts(sensor, scene)
    reference = max(sensor.contrast * float(scene.std()), 6.0 * sensor.reference_noise)
    add_clutter(rng, counts, reference, config.clutter_rate * counts.size / (320 * 256), _clutter(config))
    origin = np.array([0.5 if pan[0] >= 0 else margin_x - 1.5, 0.5 if pan[1] >= 0 else margin_y - 1.5])

    initial = int(rng.integers(min(max(config.min_targets, 1), config.max_targets), config.max_targets + 1))
    tracks = [spawn_track(rng, i, _spec(rng, config), width, height, False) for i in range(initial)]
    next_id = len(tracks)
    per_frame: list[list[dict]] = []
    container = av.open(str(out / "video.mp4"), mode="w")
    stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.options = {"crf": "16", "preset": "medium"}
    try:
        for index in tqdm(range(frames), desc="synth video", unit="frame", file=sys.stderr, disable=not progress):
            signal = expose(sensor, _crop(counts, *(origin + pan * index), height, width))
            temporal = draw_temporal(rng, sensor, height, width)
            target_free = add_noise(sensor, signal, temporal)
            targets = []
            for track in tracks:
                spec = replace(track.spec, snr=track.spec.snr * float(np.exp(rng.normal(0, 0.08))))
                target = insert_target(signal, target_free, spec, track.x, track.y, track.track_id)
                if target is not None:
                    targets.append(target)
            image8 = tone_map(digitise(sensor, add_noise(sensor, signal, temporal)))
            rgb = np.repeat(image8[:, :, None], 3, axis=2)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
            lines = [target.yolo_line(width, height) + "\n" for target in targets]
            (out / "labels" / f"{index:06d}.txt").write_text("".join(lines))
            keys = ("track_id", "cx", "cy", "w", "h", "snr")
            per_frame.append([{key: getattr(target, key) for key in keys} for target in targets])
            for track in tracks:
                track.advance(rng)
            tracks = [track for track in tracks if not track.gone(width, height)]
            if len(tracks) < config.max_targets and rng.random() < 0.03:
                tracks.append(spawn_track(rng, next_id, _spec(rng, config), width, height, True))
                next_id += 1
        for packet in stream.encode(None):
            container.mux(packet)
    finally:
        container.close()
    meta = {"width": width, "height": height, "fps": fps, "background": family, "seed": seed, "frames": per_frame}
    (out / "tracks.json").write_text(json.dumps(meta))
    logger.info("wrote %d video frames (%d tracks) to %s", frames, next_id, out)
    return out / "video.mp4"
