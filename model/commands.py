"""Subcommands contributed to `masenet` by the model package (see service/cli.py).

Each feature registers its own parser from a torch-free module; handlers import torch when they run.
"""

from __future__ import annotations

import argparse

TTA_MODES = ("off", "mirror", "flips")  # the keys of model.ops.TTA_VIEWS, named here without importing torch


def add_tta_argument(parser: argparse.ArgumentParser, what: str = "") -> None:
    """`--tta [MODE]`: off (the default), mirror (also when given bare) or flips; see model/detector.py."""
    parser.add_argument(
        "--tta",
        nargs="?",
        const="mirror",
        default="off",
        choices=TTA_MODES,
        help=f"{what}test-time augmentation: bare or 'mirror' averages each frame with its left-right mirror (twice "
        "the compute), 'flips' with all three flipped copies (four times); default off (see MODEL_CARD.md)",
    )


def register(subparsers: argparse._SubParsersAction, bench_subparsers: argparse._SubParsersAction) -> None:
    """Add info, synth, train, val, predict and `bench model`."""
    from model import cli_info
    from model.synth import cli as synth_cli
    from model.train import cli as train_cli

    cli_info.register(subparsers, bench_subparsers)
    synth_cli.register(subparsers, bench_subparsers)
    train_cli.register(subparsers, bench_subparsers)
