"""Checkpoints: atomic save, RNG round trip, corrupt files, weights_only refusal, device remapping."""
from __future__ import annotations

import io
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from detkit.checkpoint import (CHECKPOINT_FORMAT, capture_rng_state, is_checkpoint_file, load_checkpoint,
                                      restore_rng_state, save_checkpoint)
from detkit.errors import TrainError


def _payload(**extra):
    return {"format": CHECKPOINT_FORMAT, "version": 1, "model": {"w": torch.arange(6.0).view(2, 3)},
            "rng": capture_rng_state(), "settings": {"lr": 0.001, "img_size": [416, 416]}, **extra}


def test_round_trip_with_weights_only(tmp_path):
    path = save_checkpoint(_payload(epoch=3), tmp_path / "last.pt")
    assert is_checkpoint_file(path)
    got = load_checkpoint(path)
    assert got["epoch"] == 3 and torch.equal(got["model"]["w"], torch.arange(6.0).view(2, 3))
    assert got["settings"] == {"lr": 0.001, "img_size": [416, 416]}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp files left behind
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # ordinary permissions, not mkstemp's 0600


def test_rng_states_round_trip():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = capture_rng_state()
    want = (random.random(), np.random.rand(), torch.rand(1).item())
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)  # the state holds only tensors and primitives
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == want


def test_failed_save_keeps_the_previous_file(tmp_path):
    path = save_checkpoint(_payload(epoch=1), tmp_path / "last.pt")
    before = path.read_bytes()
    with pytest.raises(Exception):
        save_checkpoint({"format": CHECKPOINT_FORMAT, "bad": lambda: None}, path)  # cannot be pickled
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_truncated_checkpoint_names_the_file_and_the_fallback(tmp_path):
    save_checkpoint(_payload(epoch=1), tmp_path / "best.pt")
    path = save_checkpoint(_payload(epoch=2), tmp_path / "last.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TrainError, match=r"last\.pt: corrupt or truncated checkpoint.*previous checkpoint: .*best\.pt"):
        load_checkpoint(path)
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 1
    (tmp_path / "garbage.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(TrainError, match="garbage.pt: corrupt or truncated"):
        load_checkpoint(tmp_path / "garbage.pt")
    with pytest.raises(TrainError, match="missing.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


class _Payload:
    """A pickle that runs code when unpickled: it would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_carrying_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "model": _Payload(marker)}, path)
    with pytest.raises(TrainError, match=r"evil\.pt: refused to load"):
        load_checkpoint(path)
    assert not marker.exists()


def test_not_a_detkit_checkpoint(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(TrainError, match="not a detkit checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_checkpoint_saved_on_another_device_loads_on_cpu(tmp_path):
    """Simulate a checkpoint written on a CUDA machine: its storages are tagged 'cuda:0'.

    Written in torch's legacy (non-zip) format, where each storage's location string sits in the
    pickle stream, then the 'cpu' tags are rewritten to 'cuda:0' — byte for byte what a GPU run
    writes. Without map_location this file cannot load on a machine without CUDA.
    """
    payload = _payload(epoch=7)
    buf = io.BytesIO()
    torch.save(payload, buf, _use_new_zipfile_serialization=False)
    raw = buf.getvalue()
    cpu_tag = b"X\x03\x00\x00\x00cpu"  # pickle protocol 2 BINUNICODE 'cpu'
    assert cpu_tag in raw
    path = tmp_path / "gpu.pt"
    path.write_bytes(raw.replace(cpu_tag, b"X\x06\x00\x00\x00cuda:0"))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError):
            torch.load(path, weights_only=True)  # what a plain load does on this machine
    got = load_checkpoint(path, map_location="cpu")
    assert got["epoch"] == 7
    assert got["model"]["w"].device.type == "cpu"
    assert torch.equal(got["model"]["w"], torch.arange(6.0).view(2, 3))
    assert got["rng"]["torch"].device.type == "cpu"
