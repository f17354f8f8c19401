"""Subcommands contributed to `masenet` by the model package (see service/cli.py).

Each feature registers its own parser from a torch-free module; handlers import torch when they run.
"""

from __future__ import annotations

import argparse

from model.checkpoint import TTA_MODES

RUNTIMES = ("auto", "torch", "openvino", "onnxruntime")  # model.runtimes.RUNTIMES, named here without torch


def add_tta_argument(parser: argparse.ArgumentParser, what: str = "", default: str | None = None) -> None:
    """`--tta [MODE]`: off, mirror (also bare) or flips; a None default defers to the checkpoint (model/detector.py)."""
    parser.add_argument(
        "--tta",
        nargs="?",
        const="mirror",
        default=default,
        choices=TTA_MODES,
        help=f"{what}test-time augmentation: 'off', bare or 'mirror' (each frame averaged with its left-right mirror, "
        "twice the compute), 'flips' (with all three flipped copies, four times); default "
        + (default or "the checkpoint's (the shipped weights: off)")
        + " (see MODEL_CARD.md)",
    )


def add_runtime_argument(parser: argparse.ArgumentParser) -> None:
    """`--runtime`: where the forward pass runs (model/runtimes.py)."""
    parser.add_argument(
        "--runtime",
        default="auto",
        choices=RUNTIMES,
        help="forward-pass runtime: auto (OpenVINO on the CPU when installed, else torch), torch, openvino or "
        "onnxruntime (CPU only); decoding, NMS and Grad-CAM stay in torch (default auto)",
    )


def register(subparsers: argparse._SubParsersAction, bench_subparsers: argparse._SubParsersAction) -> None:
    """Add info, synth, train, val, predict, export and `bench model`."""
    from model import cli_info, export_cli
    from model.synth import cli as synth_cli
    from model.train import cli as train_cli

    cli_info.register(subparsers, bench_subparsers)
    synth_cli.register(subparsers, bench_subparsers)
    train_cli.register(subparsers, bench_subparsers)
    export_cli.register(subparsers)
