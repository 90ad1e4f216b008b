"""Fuzz the darknet ``.weights`` reader: random truncation, random bytes, byte flips, wrong and
hostile headers, appended junk, sparse files claiming tens of gigabytes.

Each load either works or raises WeightsError (one line); memory stays bounded by the model
(sizes come from the cfg, never from the file).
"""
from __future__ import annotations

import struct

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fuzzlib
from detkit.darknet.model import build_model
from detkit.darknet.weights import load_darknet_weights, save_darknet_weights
from detkit.errors import WeightsError

CFG = """[net]
width=64
height=64
channels=3
[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=leaky
[convolutional]
filters=21
size=1
stride=1
activation=linear
[yolo]
mask=0,1,2
anchors=10,14, 23,27, 37,58
classes=2
num=3
"""


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(CFG)
    path = tmp_path_factory.mktemp("w") / "good.weights"
    save_darknet_weights(model, path)
    return path.read_bytes()


def _load(path):
    model = build_model(CFG)
    return load_darknet_weights(model, path)


def check_weights(data: bytes, path) -> None:
    path.write_bytes(data)
    report, err = fuzzlib.outcome("weights.load", _load, path)
    if report is not None:  # what loads must be finite-sized and consistent
        assert report.header.major == struct.unpack("<i", data[:4])[0]


HEADER = st.tuples(st.integers(-2**31, 2**31 - 1), st.integers(-2**31, 2**31 - 1), st.integers(-2**31, 2**31 - 1),
                   st.integers(0, 2**64 - 1))


@st.composite
def mutated_weights(draw, good: bytes) -> bytes:
    data = bytearray(good)
    op = draw(st.sampled_from(["truncate", "flip", "header", "append", "random", "header_truncate"]))
    if op == "truncate":
        del data[draw(st.integers(0, len(data))):]
    elif op == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
    elif op == "header" or op == "header_truncate":
        major, minor, rev, seen = draw(HEADER)
        wide = (major * 10 + minor) >= 2 and major < 1000 and minor < 1000
        head = struct.pack("<iii", major, minor, rev) + (struct.pack("<Q", seen) if wide
                                                         else struct.pack("<I", seen & 0xFFFFFFFF))
        data = bytearray(head) + data[20:]
        if op == "header_truncate":
            del data[draw(st.integers(0, 24)):]
    elif op == "append":
        data += draw(st.binary(min_size=1, max_size=64))
    else:
        data = bytearray(draw(st.binary(max_size=4096)))
    return bytes(data)


@fuzzlib.fast(40)
@given(data=st.data())
def test_mutated_weights(tmp_path, good, data):
    check_weights(data.draw(mutated_weights(good)), tmp_path / "f.weights")


@fuzzlib.long()
@given(data=st.data())
def test_mutated_weights_long(tmp_path, good, data):
    check_weights(data.draw(mutated_weights(good)), tmp_path / "f.weights")


def test_good_file_loads(tmp_path, good):
    (tmp_path / "g.weights").write_bytes(good)
    assert _load(tmp_path / "g.weights").loaded == (0, 1)


@pytest.mark.parametrize("claim_gib", [64, 1024])
def test_sparse_file_claiming_gigabytes_is_refused_with_bounded_memory(tmp_path, good, claim_gib):
    """A file whose size claims tens of GiB (sparse: costs no disk) is refused without reading it."""
    path = tmp_path / "huge.weights"
    with open(path, "wb") as fh:
        fh.write(good)
        try:
            fh.truncate(claim_gib << 30)
        except OSError as exc:  # file system without sparse files / size limit
            pytest.skip(f"cannot create a sparse {claim_gib} GiB file: {exc}")
    model = build_model(CFG)
    with fuzzlib.measure_memory() as mem:
        with pytest.raises(WeightsError, match="left over|does not fit|ends inside") as exc:
            load_darknet_weights(model, path)
    fuzzlib.check_one_line(exc.value)
    assert mem["rss_delta"] < 32 << 20 and mem["seconds"] < 10, mem
    fuzzlib.figure("weights_sparse_claim_rss_delta_bytes", mem["rss_delta"])
    fuzzlib.figure("weights_sparse_claim_gib", claim_gib)


def test_header_with_maximal_seen_and_versions_is_just_a_header(tmp_path, good):
    """No header field is a size: extreme values change nothing but the stored header."""
    for major, minor in [(0, 2), (2**31 - 1, 2**31 - 1), (-2**31, -1), (999, 999), (1000, 0)]:
        wide = (major * 10 + minor) >= 2 and major < 1000 and minor < 1000
        head = struct.pack("<iii", major, minor, 7) + (struct.pack("<Q", 2**64 - 1) if wide else
                                                       struct.pack("<I", 2**32 - 1))
        path = tmp_path / f"h{major}_{minor}.weights"
        path.write_bytes(head + good[20:])
        with fuzzlib.measure_memory() as mem:
            rep = _load(path)
        assert rep.header.seen == (2**64 - 1 if wide else 2**32 - 1)
        assert (rep.header.major, rep.header.minor, rep.header.revision) == (major, minor, 7)
        assert mem["rss_delta"] < 32 << 20


def test_weights_path_is_a_folder_or_missing(tmp_path):
    for p in (tmp_path, tmp_path / "missing.weights"):
        with pytest.raises(WeightsError) as exc:
            _load(p)
        fuzzlib.check_one_line(exc.value)
