"""The `masenet` command line.

Each package contributes its subcommands through a `register(subparsers, bench_subparsers)` function in
its `commands` module (`serve`, `up` and the service benchmarks come from `tools.commands`). Those modules
import nothing heavy at module level (torch is imported inside the handlers), so `masenet --help` and the API
process stay light. This is the only module of `service/` that imports `model`, `worker` or `tools`.

Before any handler imports torch, `main` asks torch's CPU allocator for transparent huge pages
(`THP_MEM_ALLOC_ENABLE=1`, unless the environment already says otherwise; torch reads it once, at its first
allocation). Without them every large activation of a batched CPU forward is faulted in 4 KiB page by page
(measured with `masenet bench model` in the README, "Benchmarks"). Workers started by `masenet up` run this
`main` too, and inherit the variable besides.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    from model import commands as model_commands
    from service import client_commands
    from tools import commands as tools_commands
    from worker import commands as worker_commands

    parser = argparse.ArgumentParser(prog="masenet", description="MASENet infrared small-target detection")
    parser.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING, ...)")
    subparsers = parser.add_subparsers(dest="command", required=True)
    bench = subparsers.add_parser("bench", help="benchmarks that print a table")
    bench_subparsers = bench.add_subparsers(dest="bench", required=True)
    for module in (model_commands, worker_commands, tools_commands, client_commands):
        module.register(subparsers, bench_subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request drowns the benchmarks
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a clean one-line error for users; the traceback with --log-level DEBUG
        logging.getLogger("masenet").debug("command failed", exc_info=True)
        print(f"masenet {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
