"""YOLO label text for many boxes at once (the COCO reader's fast path, see
:class:`detkit.convert.records.BoxTable`): the bytes of
``f"{c} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\\n"`` for every row, without a Python string per value.

Values are computed with the same float64 operations as the per-box writer
(``cx = (x1 + x2) / 2 / W``, ``w = (x2 - x1) / W``), so they are the same numbers. The digits:
``q = round(v * 1e6)`` is exact except when ``v * 1e6`` lies within 1e-6 of a half (``fl(v * 1e6)``
is off by at most 1.2e-9 for ``v < 10``): those values, the exact ties included (``0.0078125``,
where ``%.6f`` rounds half to even), are formatted by Python. Values outside ``[0, 9.5)`` or
negative zero (never produced for checked, clipped boxes) make the whole call fall back to Python
formatting. A test compares the bytes with Python's formatting on random and adversarial values.
"""
from __future__ import annotations

import numpy as np

_SCALE = 1_000_000.0
_TIE = 1e-6


def _python_lines(cls: np.ndarray, vals: np.ndarray) -> list[str]:
    return [f"{c} {a:.6f} {b:.6f} {d:.6f} {e:.6f}\n" for c, (a, b, d, e) in zip(cls.tolist(), vals.tolist())]


def label_lines(cls: np.ndarray, x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray,
                w: np.ndarray, h: np.ndarray) -> tuple[bytes, np.ndarray]:
    """All rows' label lines as one UTF-8 (ASCII) blob, and the (n + 1,) byte offsets of the lines.

    ``cls``: non-negative class ids; ``w``/``h``: each row's image size.
    """
    n = len(cls)
    vals = np.empty((n, 4), np.float64)
    vals[:, 0] = (x1 + x2) / 2 / w
    vals[:, 1] = (y1 + y2) / 2 / h
    vals[:, 2] = (x2 - x1) / w
    vals[:, 3] = (y2 - y1) / h
    cls = np.asarray(cls, np.int64)
    if n == 0 or not (np.all(vals >= 0.0) and np.all(vals < 9.5) and not np.signbit(vals).any()
                      and cls.min() >= 0):
        lines = _python_lines(cls, vals)
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum([len(s) for s in lines], out=offsets[1:])
        return "".join(lines).encode("ascii"), offsets
    s = vals * _SCALE
    fl = np.floor(s)
    frac = s - fl
    q = (fl + (frac >= 0.5)).astype(np.int64)  # 0 .. 9_500_000
    # digits: the integer part and 6 decimals of each value, as ASCII
    digits = np.empty((n, 4, 8), np.uint8)
    digits[:, :, 1] = ord(".")
    rest = q.copy()
    for j in range(7, 1, -1):
        digits[:, :, j] = rest % 10 + 48
        rest //= 10
    digits[:, :, 0] = rest + 48
    ties = np.argwhere(np.abs(frac - 0.5) < _TIE)
    for r, c in ties.tolist():  # near a half: Python's correctly rounded digits
        digits[r, c] = np.frombuffer(f"{vals[r, c]:.6f}".encode("ascii"), np.uint8)
    width = len(str(int(cls.max())))
    row = np.zeros((n, width + 37), np.uint8)  # class id right-aligned in `width` (0 = padding), then 4 x " d.dddddd", "\n"
    rest = cls.copy()
    ndig = np.ones(n, np.int64)
    for j in range(width - 1, -1, -1):
        row[:, j] = np.where((rest > 0) | (j == width - 1), rest % 10 + 48, 0)
        rest //= 10
    for j in range(width - 1):
        ndig += cls >= 10 ** (j + 1)
    body = row[:, width:width + 36].reshape(n, 4, 9)
    body[:, :, 0] = ord(" ")
    body[:, :, 1:] = digits
    row[:, -1] = ord("\n")
    lengths = ndig + 37
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = row.ravel()
    if width > 1:
        flat = flat[flat != 0]
    return flat.tobytes(), offsets
