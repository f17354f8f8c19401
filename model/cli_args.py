"""Command-line pieces shared by the model package's subcommands, torch-free at import.

The runtime and test-time-augmentation choices with their arguments, and the WIDTHxHEIGHT size parser.
"""

from __future__ import annotations

import argparse

from model.checkpoint import TTA_MODES

RUNTIMES = ("auto", "torch", "openvino", "onnxruntime")  # model.runtimes validates against these, without torch


class SizeError(argparse.ArgumentTypeError, ValueError):
    """A frame size that is not WIDTHxHEIGHT or is too small: a ValueError, and argparse shows its message."""


def parse_size(text: str, minimum: int = 1) -> tuple[int, int]:
    """'640x512' (WIDTHxHEIGHT) to (640, 512); SizeError unless both sides are whole numbers >= `minimum`."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise SizeError(f"size {text!r} is not WIDTHxHEIGHT, e.g. 640x512") from None
    if width < minimum or height < minimum:
        raise SizeError(f"size {text!r} is too small; use at least {minimum}x{minimum}")
    return width, height


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
