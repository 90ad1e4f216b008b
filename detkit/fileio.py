"""Atomic file writes: a temporary file in the destination folder, then ``os.replace``.

Readers see either the old file or the complete new one, never a partial file; on any failure
the temporary file is removed and the old file is left as it was.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def write_atomic(path: str | os.PathLike, write: Callable[[str], object], *, fsync: bool = False,
                 make_parents: bool = False) -> Path:
    """Call ``write(tmp_path)`` on a fresh temporary file next to ``path``, then move it onto ``path``.

    Args:
        path: the destination.
        write: writes the whole content to the temporary file's path (``str``).
        fsync: flush the file to disk before the rename (survives a power cut).
        make_parents: create the destination folder first.

    Returns:
        ``path`` as a :class:`Path`. The file gets mode 0644.
    """
    p = Path(path)
    if make_parents:
        p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return p


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, fsync: bool = True,
                       make_parents: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`write_atomic`; fsync'd by default)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    write_atomic(path, write, fsync=fsync, make_parents=make_parents)
