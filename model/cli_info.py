"""Command-line registration (torch-free at import)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction, bench_subparsers: argparse._SubParsersAction) -> None:
    """Add this feature's subcommands."""
