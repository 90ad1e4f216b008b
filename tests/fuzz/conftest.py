"""Fuzz / fault-injection suites (issue 7). ``DETKIT_FUZZ_STATS=FILE`` writes the outcome counts
and figures of the run to FILE (used by tools/fuzz_report.py)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import fuzzlib` under any --import-mode

import fuzzlib  # noqa: E402


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("DETKIT_FUZZ_STATS")
    if path:
        fuzzlib.dump_stats(path)
