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
# tidecv (test-only: the TIDE differential tests). Its metadata asks for opencv-python, which would
# pull OpenCV 5.x over detkit's opencv-python-headless 4.x, so it goes in without dependencies and
# with only the modules it imports; the tests skip when it is missing.
if ! .venv/bin/python -m pip install -q --no-deps "tidecv==1.0.1" appdirs \
     || ! .venv/bin/python -m pip install -q pandas seaborn; then
  echo "tidecv not installed: the TIDE differential tests will be skipped" >&2
fi
.venv/bin/python -c "import cv2, sys; sys.exit(0 if cv2.__version__.startswith('4.') else 'cv2 is not 4.x')"
touch .venv/.detkit-installed
echo "detkit installed in .venv (activate with: source .venv/bin/activate)"
