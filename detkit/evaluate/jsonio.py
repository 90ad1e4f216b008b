"""JSON reading for evaluation files: the bytes, the document (orjson fast path, garbage collector
paused), numbers and COCO ``bbox`` lists checked with one-line errors naming the file and entry.

Used by :mod:`detkit.evaluate.ground_truth` (COCO annotations) and :mod:`detkit.evaluate.predictions`
(COCO results).
"""
from __future__ import annotations

import gc
import json
import math
from itertools import chain
from pathlib import Path

import numpy as np

from detkit.errors import AnnotationError

try:  # optional accelerator for large results files
    import orjson as _orjson  # private: read_json(parser=) selects the parser
except ImportError:  # pragma: no cover
    _orjson = None


def read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise AnnotationError(f"cannot read JSON: {exc.strerror or exc}", path=path) from None


def read_json(path: Path, data: bytes | None = None, parser: str = "auto"):
    """Parse a JSON file (orjson when installed: same numbers as the json module, ~2x faster).

    ``parser``: ``"auto"`` (orjson when installed, else the standard library) or ``"json"`` (always
    the standard library; both give the same values and the same one-line errors).

    The cyclic garbage collector is paused while the document is built: the parsers allocate
    millions of containers (dicts, lists), each allocation batch would otherwise trigger a
    collection pass over all of them (2-3x the parse time on a 500k-detection results file).
    """
    if data is None:
        data = read_bytes(path)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        if _orjson is not None and parser != "json":
            return _orjson.loads(data)
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: absurd nesting
        line = getattr(exc, "lineno", None)
        raise AnnotationError(f"invalid JSON: {getattr(exc, 'msg', exc)}", path=path, line=line) from None
    finally:
        if was_enabled:
            gc.enable()


def json_number(v, what: str, path: Path, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise AnnotationError(f"{where}: {what} must be a number, got {v!r}", path=path)
    f = float(v)
    if not math.isfinite(f):
        raise AnnotationError(f"{where}: {what} is not finite: {v!r}", path=path)
    return f


def boxes_array(items: list, path: Path, where: str) -> np.ndarray:
    """List of 4-number lists -> (N, 4) float64; on any problem find and name the bad entry."""
    try:
        arr = np.array(items, dtype=np.float64)
        if arr.size == 0:
            return arr.reshape(0, 4)
        if arr.ndim == 2 and arr.shape[1] == 4 and np.isfinite(arr).all():
            if not any(isinstance(x, bool) for b in items[:1] for x in b):
                return arr
    except (TypeError, ValueError):
        pass
    for i, b in enumerate(items):
        if not isinstance(b, (list, tuple)) or len(b) != 4:
            raise AnnotationError(f"{where}[{i}]: bbox must be [x, y, w, h], got {b!r}", path=path)
        for v in b:
            json_number(v, "bbox value", path, f"{where}[{i}]")
    raise AnnotationError(f"{where}: bbox values must be numbers", path=path)  # pragma: no cover


def boxes_fast(items: list) -> np.ndarray | None:
    """Fast path of :func:`boxes_array` for a clean list of 4-number lists (None: take the slow,
    error-reporting path)."""
    try:
        if items and set(map(len, items)) != {4}:
            return None
        arr = np.fromiter(chain.from_iterable(items), np.float64, count=4 * len(items)).reshape(-1, 4)
    except (TypeError, ValueError, OverflowError):
        return None
    return arr if np.isfinite(arr).all() else None
