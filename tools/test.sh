#!/usr/bin/env bash
# The test command: make sure .venv is complete, then run pytest (fast + real tiers by default).
# Extra arguments go to pytest, e.g. `bash tools/test.sh -m slow` for the slow learning checks.
set -uo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh || exit 1
.venv/bin/python -m pytest "$@"
rc=$?
# exit 5 = "no tests collected" (e.g. an optional tier selected by -m that is empty here)
if [ "$rc" -eq 5 ]; then rc=0; fi
exit "$rc"
