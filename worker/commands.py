"""Subcommands contributed to `masenet` (see service/cli.py). No heavy imports at module level."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction, bench_subparsers: argparse._SubParsersAction) -> None:
    """Add this package's subcommands and benchmarks."""
