"""Subcommands contributed to `masenet` by the model package (see service/cli.py).

Each feature registers its own parser from a torch-free module; handlers import torch when they run.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction, bench_subparsers: argparse._SubParsersAction) -> None:
    """Add info, synth, train, val, predict and `bench model`."""
    from model import cli_info
    from model.synth import cli as synth_cli
    from model.train import cli as train_cli

    cli_info.register(subparsers, bench_subparsers)
    synth_cli.register(subparsers, bench_subparsers)
    train_cli.register(subparsers, bench_subparsers)
