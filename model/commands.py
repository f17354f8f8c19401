"""Subcommands contributed to `masenet` by the model package (see service/cli.py).

Each feature registers its own parser from a torch-free module; handlers import torch when they run. The
arguments several subcommands share are in model/cli_args.py.
"""

from __future__ import annotations

import argparse

from model import cli_info, export_cli
from model.synth import cli as synth_cli
from model.train import cli as train_cli


def register(subparsers: argparse._SubParsersAction, bench_subparsers: argparse._SubParsersAction) -> None:
    """Add info, synth, train, val, predict, export and `bench model`."""
    cli_info.register(subparsers, bench_subparsers)
    synth_cli.register(subparsers, bench_subparsers)
    train_cli.register(subparsers, bench_subparsers)
    export_cli.register(subparsers)
