#!/usr/bin/env bash
# Create ./.venv (if missing) and install detkit with everything it needs, torch included.
# Idempotent: a second run only checks that the environment is complete.
# Usage: bash tools/install.sh [--fresh]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ "${1:-}" = "--fresh" ]; then rm -rf .venv; fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if [ -f .venv/.detkit-installed ] && [ .venv/.detkit-installed -nt pyproject.toml ]; then
  exit 0
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch/torchvision pinned to the releases that install offline on this machine kind.
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".[test]"
touch .venv/.detkit-installed
echo "detkit installed in .venv (activate with: source .venv/bin/activate)"
