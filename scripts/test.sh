#!/usr/bin/env bash
# Set up and run the test suite: system tools, the project's virtualenv from the locks (scripts/setup.sh),
# lint, tests. Arguments go to pytest (for example `bash scripts/test.sh tests/model -k nms`).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v promtool >/dev/null || ! command -v redis-server >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus redis-server >/dev/null
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq --no-install-recommends prometheus redis-server >/dev/null
  fi
fi
bash scripts/setup.sh
source .venv/bin/activate
python -m ruff check .
python -m ruff format --check .
python -m pytest -q "$@"
