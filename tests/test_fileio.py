"""detkit.fileio: atomic writes (temp file in the same folder, then os.replace)."""
from __future__ import annotations

import os

import pytest

from detkit.fileio import write_atomic, write_bytes_atomic


def test_write_atomic_replaces_and_sets_mode(tmp_path):
    p = tmp_path / "a.bin"
    p.write_bytes(b"old")
    seen = []

    def write(tmp: str) -> None:
        seen.append(tmp)
        assert os.path.dirname(tmp) == str(tmp_path) and tmp != str(p)
        with open(tmp, "wb") as fh:
            fh.write(b"new")

    assert write_atomic(p, write, fsync=True) == p
    assert p.read_bytes() == b"new" and os.stat(p).st_mode & 0o777 == 0o644
    assert sorted(os.listdir(tmp_path)) == ["a.bin"] and len(seen) == 1


def test_failing_writer_keeps_the_old_file_and_no_temp(tmp_path):
    p = tmp_path / "a.bin"
    p.write_bytes(b"old")

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(p, write)
    assert p.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["a.bin"]


def test_make_parents(tmp_path):
    p = tmp_path / "x" / "y" / "f.json"
    with pytest.raises(FileNotFoundError):
        write_bytes_atomic(p, b"{}")
    write_bytes_atomic(p, b"{}", make_parents=True)
    assert p.read_bytes() == b"{}" and os.listdir(p.parent) == ["f.json"]
