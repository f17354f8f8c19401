#!/usr/bin/env bash
# Set up and run the test suite: torch first (pinned CPU wheel), then the project, lint, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e '.[dev]'
python3 -m ruff check .
python3 -m ruff format --check .
python3 -m pytest -q "$@"
