"""Checkpoint faults: a full disk in the middle of a save (ENOSPC after a random number of bytes),
corrupt and truncated files (random cut points and byte flips). The previous checkpoint always
survives and every failure is a one-line TrainError naming the file."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fuzzlib
from detkit import checkpoint as ckpt
from detkit.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from detkit.errors import TrainError


def _payload(epoch: int) -> dict:
    g = torch.Generator().manual_seed(epoch)
    return {"format": CHECKPOINT_FORMAT, "version": 1, "epoch": epoch,
            "model": {"conv.weight": torch.randn(64, 32, 3, 3, generator=g), "bn.bias": torch.randn(64, generator=g)},
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.01}]}, "history": [{"epoch": epoch, "map": 0.5}]}


class _DiskFullAfter:
    """A file wrapper whose writes fail with ENOSPC once ``limit`` bytes have been written."""

    def __init__(self, fh, limit: int):
        self.fh, self.limit, self.written = fh, limit, 0

    def write(self, data) -> int:
        n = len(memoryview(data).cast("B"))
        if self.written + n > self.limit:
            room = max(0, self.limit - self.written)
            if room:
                self.fh.write(bytes(memoryview(data).cast("B")[:room]))
                self.written += room
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += n
        return self.fh.write(data)

    def __getattr__(self, name):
        return getattr(self.fh, name)


def check_disk_full(tmp: Path, limit: int, monkeypatch) -> None:
    path = tmp / "last.pt"
    for p in tmp.iterdir():
        p.unlink()
    save_checkpoint(_payload(1), path)
    before = path.read_bytes()
    real_save = torch.save

    def failing_save(obj, f, *a, **kw):
        return real_save(obj, _DiskFullAfter(f, limit), *a, **kw)
    monkeypatch.setattr(ckpt.torch, "save", failing_save)
    try:
        with pytest.raises(TrainError, match=r"last\.pt: could not write checkpoint \(No space left on device\); "
                                             r"the previous last\.pt is intact") as exc:
            save_checkpoint(_payload(2), path)
    finally:
        monkeypatch.setattr(ckpt.torch, "save", real_save)
    fuzzlib.check_one_line(exc.value)
    fuzzlib.record("faults.checkpoint_enospc", "previous_intact")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp.iterdir()) == ["last.pt"], "temporary file left behind"
    assert load_checkpoint(path)["epoch"] == 1


CKPT_BYTES = 75_000  # _payload() serialises to about 76 kB: every limit below cuts the save short


@fuzzlib.fast(10)
@given(limit=st.integers(0, CKPT_BYTES - 1))
def test_disk_full_mid_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, limit):
    check_disk_full(tmp_path, limit, monkeypatch)


@fuzzlib.long(300)
@given(limit=st.integers(0, CKPT_BYTES - 1))
def test_disk_full_mid_save_keeps_the_previous_checkpoint_long(tmp_path, monkeypatch, limit):
    check_disk_full(tmp_path, limit, monkeypatch)


def test_payload_size_is_what_the_limits_assume(tmp_path):
    assert save_checkpoint(_payload(1), tmp_path / "x.pt").stat().st_size > CKPT_BYTES


def test_disk_full_on_first_save_says_there_is_nothing_to_fall_back_on(tmp_path, monkeypatch):
    def failing_save(obj, f, *a, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(ckpt.torch, "save", failing_save)
    with pytest.raises(TrainError, match="no previous checkpoint"):
        save_checkpoint(_payload(1), tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def good_bytes(tmp_path_factory) -> bytes:
    p = tmp_path_factory.mktemp("ck") / "last.pt"
    save_checkpoint(_payload(3), p)
    return p.read_bytes()


def check_corrupt(tmp: Path, data: bytes) -> None:
    (tmp / "best.pt").write_bytes(b"")  # unusable fallback: must not be named
    path = tmp / "last.pt"
    path.write_bytes(data)
    payload, err = fuzzlib.outcome("checkpoint.load", load_checkpoint, path)
    if err is not None:
        assert isinstance(err, TrainError) and "last.pt" in str(err) and "best.pt" not in str(err)
    else:
        assert payload["format"] == CHECKPOINT_FORMAT


@st.composite
def corrupted(draw, good: bytes) -> bytes:
    data = bytearray(good)
    if draw(st.booleans()):
        del data[draw(st.integers(0, len(data) - 1)):]
    else:
        for _ in range(draw(st.integers(1, 16))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@fuzzlib.fast(30)
@given(data=st.data())
def test_corrupt_or_truncated_checkpoint(tmp_path, good_bytes, data):
    check_corrupt(tmp_path, data.draw(corrupted(good_bytes)))


@fuzzlib.long()
@given(data=st.data())
def test_corrupt_or_truncated_checkpoint_long(tmp_path, good_bytes, data):
    check_corrupt(tmp_path, data.draw(st.one_of(corrupted(good_bytes), st.binary(max_size=4096))))


def test_truncated_checkpoint_names_a_good_fallback(tmp_path, good_bytes):
    (tmp_path / "best.pt").write_bytes(good_bytes)
    (tmp_path / "last.pt").write_bytes(good_bytes[:1000])
    with pytest.raises(TrainError, match=r"last\.pt: corrupt or truncated checkpoint .*previous checkpoint: .*best\.pt"):
        load_checkpoint(tmp_path / "last.pt")
