#!/usr/bin/env bash
# Set up the project in its own virtualenv, .venv (created if missing), from the committed locks alone: torch
# first (requirements/torch.txt), then every other package at its locked version with its hashes
# (requirements/dev.txt, no resolution), then the project itself, editable and without dependencies, and a
# consistency check. Nothing installed outside .venv is used. Run it again after pulling: it is quick when
# nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check)
"${pip[@]}" install -q -r requirements/torch.txt
"${pip[@]}" install -q --require-hashes --no-deps -r requirements/dev.txt
"${pip[@]}" install -q --no-deps --no-build-isolation -e .
"${pip[@]}" check
