"""`masenet synth`: write a synthetic dataset, a holdout set or a labelled video (torch-free at import)."""

from __future__ import annotations

import argparse
import functools
import math
import time

from model.cli_args import parse_size

MIN_SIDE = 16  # the smallest frame side SynthConfig accepts


def _backgrounds(text: str) -> tuple[tuple[str, float], ...]:
    """Parse `sea=2,horizon=1` into background-family weights (names are checked against the recipe later)."""
    weights = []
    for item in text.split(","):
        name, _, value = item.partition("=")
        try:
            weight = float(value) if value else 1.0
        except ValueError:
            raise argparse.ArgumentTypeError(f"weight of {name.strip()!r} must be a number, got {value!r}") from None
        if not name.strip() or not 0 < weight < float("inf"):
            raise argparse.ArgumentTypeError(f"backgrounds look like sea=2,horizon=1 (positive weights), got {text!r}")
        if name.strip() in dict(weights):
            raise argparse.ArgumentTypeError(f"background {name.strip()!r} is listed twice in {text!r}")
        weights.append((name.strip(), weight))
    return tuple(weights)


def _pair(text: str) -> tuple[float, float]:
    """Parse `4,12` into a finite (low, high) pair with low <= high."""
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a range looks like 4,12 (low,high), got {text!r}") from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise argparse.ArgumentTypeError(f"a range needs finite values, got {text!r}")
    if low > high:
        raise argparse.ArgumentTypeError(f"a range needs low <= high, got {text!r}")
    return low, high


def _range(text: str) -> tuple[float, float]:
    """A range of sizes or SNRs: both ends above 0."""
    low, high = _pair(text)
    if low <= 0:
        raise argparse.ArgumentTypeError(f"needs values above 0, e.g. 4,12; got {text!r}")
    return low, high


def _counts(text: str) -> tuple[int, int]:
    """A range of counts: whole numbers from 0."""
    low, high = _pair(text)
    if low < 0 or low != int(low) or high != int(high):
        raise argparse.ArgumentTypeError(f"needs whole numbers from 0, e.g. 1,4; got {text!r}")
    return int(low), int(high)


def register(subparsers: argparse._SubParsersAction, bench_subparsers: argparse._SubParsersAction) -> None:
    """Add `masenet synth`."""
    parser = subparsers.add_parser(
        "synth",
        help="generate synthetic infrared small-target data (dataset, holdout set or video)",
        description="Write an ultralytics-layout dataset (images/, labels/, data.yaml, preview.png) or, with "
        "--video, video.mp4 with per-frame labels and tracks.json.",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--train", type=int, default=None, help="training frames (default 1000; 0 with --holdout)")
    parser.add_argument("--val", type=int, default=None, help="validation frames (default 200)")
    parser.add_argument(
        "--size",
        type=functools.partial(parse_size, minimum=MIN_SIDE),
        default=None,
        help="WxH (default 320x256; 640x512 with --holdout)",
    )
    parser.add_argument("--seed", type=int, default=0, help="base seed (non-negative); same seed, same bytes")
    parser.add_argument(
        "--depth", choices=("8", "16", "both"), default=None, help="PNG depth (default 8; both with --holdout)"
    )
    parser.add_argument(
        "--backgrounds",
        type=_backgrounds,
        default=None,
        help="background families and relative weights, e.g. sea=2,horizon=1 (default: the recipe's own mix; "
        "names: the recipe's families)",
    )
    parser.add_argument(
        "--targets",
        type=_counts,
        default=None,
        help="targets per frame, MIN,MAX (default 0,6 with a few empty frames; 1,4 holdout)",
    )
    parser.add_argument(
        "--target-size",
        type=_range,
        default=None,
        help="visible target extent in pixels, MIN,MAX (default: the recipe's, 1,12; 1.5,9 holdout)",
    )
    parser.add_argument(
        "--snr", type=_range, default=None, help="target SNR, MIN,MAX (default: the recipe's, 2,15; 4,12 holdout)"
    )
    parser.add_argument("--holdout", action="store_true", help="use the holdout recipe (different construction)")
    parser.add_argument("--video", action="store_true", help="write a labelled video instead of a dataset")
    parser.add_argument("--frames", type=int, default=250, help="video frames (with --video)")
    parser.add_argument("--fps", type=float, default=25.0, help="video frame rate (with --video)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes for datasets")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from model.synth.backgrounds import FAMILIES, HOLDOUT_FAMILIES
    from model.synth.config import SynthConfig, holdout_config
    from model.synth.dataset import write_dataset, write_video

    config = holdout_config() if args.holdout else SynthConfig()
    recipe = "holdout" if args.holdout else "default"
    if args.backgrounds is not None:
        known = HOLDOUT_FAMILIES if args.holdout else FAMILIES
        unknown = ", ".join(name for name, _ in args.backgrounds if name not in known)
        if unknown:
            raise ValueError(f"unknown background {unknown} for the {recipe} recipe; choose from {', '.join(known)}")
        config = replace(config, background_weights=args.backgrounds)
    if args.targets is not None:
        config = replace(config, min_targets=args.targets[0], max_targets=args.targets[1])
    if args.target_size is not None:
        config = replace(config, size_range=args.target_size)
    if args.snr is not None:
        config = replace(config, snr_range=args.snr)
    if args.size is not None:
        config = replace(config, width=args.size[0], height=args.size[1])
    size = f"{config.width}x{config.height}"
    started = time.perf_counter()
    if args.video:
        path = write_video(args.out, args.frames, config, args.seed, fps=args.fps, progress=True)
        seconds = time.perf_counter() - started
        print(
            f"masenet synth: wrote {args.frames} {size} frames ({recipe} recipe) to {path}, labels/ and tracks.json "
            f"in {seconds:.1f} s ({args.frames / seconds:.1f} frames/s)"
        )
        return 0
    train = args.train if args.train is not None else (0 if args.holdout else 1000)
    val = args.val if args.val is not None else 200
    depth = args.depth or ("both" if args.holdout else "8")
    data_yaml = write_dataset(args.out, train, val, config, args.seed, depth=depth, jobs=args.jobs, progress=True)
    seconds = time.perf_counter() - started
    total = train + val
    print(
        f"masenet synth: wrote {train} train + {val} val {size} frames ({recipe} recipe, depth {depth}) to "
        f"{data_yaml.parent} in {seconds:.1f} s ({total / seconds:.1f} frames/s with {args.jobs} jobs); "
        f"data: {data_yaml}, preview: {data_yaml.parent / 'preview.png'}"
    )
    return 0
