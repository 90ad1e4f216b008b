"""Helpers of the fuzz / fault-injection suites: hypothesis settings per tier, the outcome check,
outcome counters (for tools/fuzz_report.py) and memory measurement.

The contract every parser is held to: an input either works, or raises detkit's own
:class:`~detkit.errors.DetkitError` with a one-line message. Any other exception propagates and
fails the test (hypothesis then shrinks and prints the smallest input).
"""
from __future__ import annotations

import json
import os
import resource
import threading
import time
import tracemalloc
from collections import Counter, defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, settings

from detkit.errors import DetkitError

#: Examples per parser in the default (fast) tier and in the fuzz_long tier.
FAST_EXAMPLES = int(os.environ.get("DETKIT_FUZZ_FAST", "40"))
LONG_EXAMPLES = int(os.environ.get("DETKIT_FUZZ_EXAMPLES", "2000"))
#: Per-example time limit (hypothesis deadline). Generous: cold imports on a busy 2-core CI machine take
#: 10+ s; a hang (entity expansion, alias bomb) is still caught. Each test also has a pytest-timeout.
DEADLINE_MS = int(os.environ.get("DETKIT_FUZZ_DEADLINE_MS", "30000"))

_COMMON = dict(deadline=DEADLINE_MS, database=None, derandomize=False, print_blob=True,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                      HealthCheck.data_too_large, HealthCheck.filter_too_much,
                                      HealthCheck.large_base_example])


def fast(n: int | None = None):
    """Settings plus a 300 s pytest timeout for the default tier (``n`` examples, default
    :data:`FAST_EXAMPLES`)."""
    s = settings(max_examples=n or FAST_EXAMPLES, **_COMMON)

    def wrap(fn):
        return pytest.mark.timeout(300)(s(fn))
    return wrap


def long(n: int | None = None):
    """Settings plus marker of the long tier (``n`` examples, default :data:`LONG_EXAMPLES`)."""
    s = settings(max_examples=n or LONG_EXAMPLES, **_COMMON)

    def wrap(fn):
        return pytest.mark.fuzz_long(pytest.mark.timeout(3600)(s(fn)))
    return wrap


# --------------------------------------------------------------------------- outcome counters

#: parser name -> outcome ("ok" or the DetkitError subclass name) -> count
OUTCOMES: dict[str, Counter] = defaultdict(Counter)
#: free-form figures recorded by tests (peak memory, kill moments, ...)
FIGURES: dict[str, Any] = {}
_lock = threading.Lock()


def record(parser: str, outcome: str) -> None:
    with _lock:
        OUTCOMES[parser][outcome] += 1


def figure(name: str, value: Any) -> None:
    with _lock:
        if isinstance(value, (int, float)) and isinstance(FIGURES.get(name), (int, float)):
            FIGURES[name] = max(FIGURES[name], value)  # keep the worst case
        elif isinstance(value, list) and isinstance(FIGURES.get(name), list):
            FIGURES[name] = FIGURES[name] + value
        else:
            FIGURES[name] = value


def dump_stats(path: str | os.PathLike) -> None:
    doc = {"outcomes": {k: dict(v) for k, v in sorted(OUTCOMES.items())}, "figures": FIGURES}
    Path(path).write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")


def check_one_line(exc: DetkitError) -> str:
    msg = str(exc)
    assert msg.strip(), f"{type(exc).__name__} with an empty message"
    assert "\n" not in msg and "\r" not in msg, f"multi-line error message: {msg!r}"
    assert "Traceback" not in msg, msg
    return msg


def outcome(parser: str, fn: Callable, *args, **kwargs):
    """Run ``fn``; returns ``(result, None)`` when it works, ``(None, error)`` on a DetkitError
    (checked to be one line). Anything else propagates."""
    try:
        result = fn(*args, **kwargs)
    except DetkitError as exc:
        check_one_line(exc)
        record(parser, type(exc).__name__)
        return None, exc
    record(parser, "ok")
    return result, None


@contextmanager
def time_limit(seconds: float, what: str = ""):
    """Raise TimeoutError in the main thread after ``seconds`` (SIGALRM): a hang becomes a failing,
    shrinkable example instead of a pytest-timeout of the whole test."""
    import signal

    def on_alarm(signum, frame):
        raise TimeoutError(f"example took more than {seconds} s: {what}")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# --------------------------------------------------------------------------- memory

def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; falls back to ru_maxrss)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@contextmanager
def measure_memory():
    """Yields a dict filled on exit with ``traced_peak`` (bytes, Python + numpy allocations seen by
    tracemalloc), ``rss_delta`` (bytes, RSS after - before; sampled peak every 5 ms) and ``seconds``."""
    out: dict[str, float] = {}
    stop = threading.Event()
    base = rss_bytes()
    peak = [base]

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.005)

    t = threading.Thread(target=sample, daemon=True)
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    t.start()
    t0 = time.perf_counter()
    try:
        yield out
    finally:
        out["seconds"] = time.perf_counter() - t0
        out["traced_peak"] = tracemalloc.get_traced_memory()[1]
        if not was_tracing:
            tracemalloc.stop()
        stop.set()
        t.join()
        out["rss_delta"] = max(peak[0], rss_bytes()) - base
