#!/usr/bin/env bash
# Refresh the dependency locks from pyproject.toml: requirements/dev.txt (the `dev` extra: tests, CI, the
# Quick start) and requirements/runtime.txt (the `model`, `serve` and `runtimes` extras: the container image). Run it after
# any change to pyproject.toml's dependencies, then commit pyproject.toml and both locks together; the tests
# fail while a lock's recorded digest differs from pyproject.toml's.
#
# The locks pin every package with its hashes, torch's own requirements included, but never torch: that is
# installed first from requirements/torch.txt. They are resolved against the CPU build (torch==X+cpu) so that no
# CUDA package enters them; where the package index has no CPU build, point pip at one first, for example
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/lock.sh
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q pip-tools==7.7.0 2>&1 | { grep -v "is ignored: it is neither" || true; } >&2
sed -E 's/^(torch==[0-9.]+)$/\1+cpu/' requirements/torch.txt > "$work/torch-cpu.in"

lock() {  # lock OUTPUT EXTRA...
  local output=$1 extras=()
  shift
  for extra in "$@"; do extras+=(--extra "$extra"); done
  # Seeded with the current lock, pip-compile keeps every pin that still satisfies pyproject.toml.
  if [ -f "$output" ]; then cp "$output" "$work/out.txt"; else rm -f "$work/out.txt"; fi
  CUSTOM_COMPILE_COMMAND="bash scripts/lock.sh" "$work/venv/bin/pip-compile" --quiet --resolver=backtracking --generate-hashes --strip-extras \
    --unsafe-package torch --no-emit-index-url --no-emit-find-links \
    "${extras[@]}" --output-file "$work/out.txt" pyproject.toml "$work/torch-cpu.in" 2>"$work/log" \
    || { cat "$work/log" >&2; exit 1; }
  # The project itself (its `dev` extra names `masenet[model,serve]`) is installed from the checkout, not the lock.
  { python3 scripts/lock_digest.py pyproject.toml
    grep -v -e '^masenet @ ' -e "$work" "$work/out.txt"; } > "$output"
  if grep -qiE '^(nvidia-|triton|cuda-)' "$output"; then
    echo "$output pins CUDA packages: torch was resolved to a CUDA build, not the CPU one" >&2
    exit 1
  fi
  echo "wrote $output ($(grep -cE '^[a-z0-9]' "$output") packages)"
}

lock requirements/dev.txt dev
lock requirements/runtime.txt model serve runtimes
