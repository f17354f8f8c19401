#!/usr/bin/env bash
# Set up and run the test suite: system tools, torch first (pinned CPU wheel), the project, lint, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v promtool >/dev/null || ! command -v redis-server >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus redis-server >/dev/null
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq --no-install-recommends prometheus redis-server >/dev/null
  fi
fi
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e '.[dev]'
python3 -m ruff check .
python3 -m ruff format --check .
python3 -m pytest -q "$@"
