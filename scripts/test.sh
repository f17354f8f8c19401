#!/usr/bin/env bash
# Set up and run the test suite: system tools, the project's virtualenv from the locks (scripts/setup.sh),
# lint, tests. Arguments go to one pytest run (for example `bash scripts/test.sh tests/model -k nms`).
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian packages: promtool and a Prometheus (deploy tests), redis-server (restart tests), headless Chromium with
# its driver (the web console's browser test) and kubectl, whose kustomize renders deploy/k8s (any kubectl will do:
# Debian's kubernetes-client is installed only when none is on PATH).
packages=()
command -v promtool >/dev/null || packages+=(prometheus)
command -v redis-server >/dev/null || packages+=(redis-server)
command -v chromium >/dev/null || packages+=(chromium)
command -v chromedriver >/dev/null || packages+=(chromium-driver)
command -v kubectl >/dev/null || packages+=(kubernetes-client)
if [ ${#packages[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
  fi
fi
bash scripts/setup.sh
source .venv/bin/activate
python -m ruff check .
python -m ruff format --check .
if [ $# -gt 0 ]; then
  python -m pytest -q "$@"
  exit
fi
# Without arguments: one pytest process per test package. The whole suite in one process (torch, OpenVINO,
# ONNX Runtime, PyAV and their threads loaded side by side, hundreds of child processes) once died of a
# SIGSEGV that no single package reproduces; separate processes keep one suite's native state out of the next.
status=0
for suite in "tests/test_layout.py tests/test_locks.py" tests/*/__init__.py; do
  # shellcheck disable=SC2086
  python -m pytest -q ${suite%/__init__.py} || status=$?
done
exit "$status"
