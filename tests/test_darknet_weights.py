"""darknet .weights I/O: round trips, header variants, partial/cutoff files, corruption, class change."""
from __future__ import annotations

import hashlib
import logging
import struct

import numpy as np
import pytest
import torch

import detkit
from detkit.darknet.model import DarknetModel
from detkit.darknet.weights import conv_layout, read_weights_header
from detkit.errors import WeightsError

HEADER64 = 20
HEADER32 = 16


def randomise(model: DarknetModel, seed: int) -> DarknetModel:
    """Distinct random values in every tensor the file holds (BN variance kept positive)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, conv in model.conv_layers:
            for p in conv.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            if conv.bn is not None:
                conv.bn.running_mean.copy_(torch.randn(conv.bn.running_mean.shape, generator=g) * 0.1)
                conv.bn.running_var.copy_(torch.rand(conv.bn.running_var.shape, generator=g) + 0.5)
    return model


def file_tensors(model: DarknetModel) -> list[torch.Tensor]:
    out = []
    for t in conv_layout(model):
        for name in t.names:
            out.append(t.module.state_dict()[name].clone())
    return out


def same(a: DarknetModel, b: DarknetModel, layers: set[int] | None = None) -> bool:
    for (i, ca), (_, cb) in zip(a.conv_layers, b.conv_layers):
        if layers is not None and i not in layers:
            continue
        for (ka, va), (_, vb) in zip(ca.state_dict().items(), cb.state_dict().items()):
            if "num_batches" not in ka and not torch.equal(va, vb):
                return False
    return True


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    """A random 80-class yolov3-tiny saved with our writer: (model, path)."""
    model = randomise(detkit.build_model("yolov3-tiny"), 1)
    path = tmp_path_factory.mktemp("w") / "tiny.weights"
    detkit.save_darknet_weights(model, path)
    return model, path


def test_file_size_and_header(tiny_file):
    model, path = tiny_file
    data = path.read_bytes()
    assert len(data) == 35_434_956  # the real yolov3-tiny.weights size: 20 + 4 * 8,858,734
    assert struct.unpack("<iiiQ", data[:20]) == (0, 2, 0, 0)
    # first tensor is layer 0's BN beta, last is layer 22's conv weight
    first = np.frombuffer(data, "<f4", count=16, offset=20)
    assert np.array_equal(first, model.layers[0].bn.bias.detach().numpy())
    last = np.frombuffer(data, "<f4", offset=len(data) - 4 * 255 * 256)
    assert np.array_equal(last, model.layers[22].conv.weight.detach().numpy().ravel())


def test_save_load_save_is_byte_identical(tiny_file, tmp_path):
    model, path = tiny_file
    fresh = detkit.build_model("yolov3-tiny")
    report = detkit.load_darknet_weights(fresh, path)
    assert same(model, fresh)
    assert report.loaded == tuple(i for i, _ in model.conv_layers) and not report.partial
    again = tmp_path / "again.weights"
    detkit.save_darknet_weights(fresh, again)
    assert again.read_bytes() == path.read_bytes()


def test_header_revision_and_seen_round_trip(tiny_file, tmp_path):
    _, path = tiny_file
    data = bytearray(path.read_bytes())
    data[:20] = struct.pack("<iiiQ", 0, 2, 5, 123_456_789_012)
    src = tmp_path / "seen.weights"
    src.write_bytes(bytes(data))
    model = detkit.build_model("yolov3-tiny")
    report = detkit.load_darknet_weights(model, src)
    assert (report.header.revision, report.header.seen) == (5, 123_456_789_012)
    assert model.weights_header == (0, 2, 5, 123_456_789_012)
    out = tmp_path / "out.weights"
    detkit.save_darknet_weights(model, out)
    assert out.read_bytes() == src.read_bytes()


def test_32bit_header_variant(tiny_file, tmp_path):
    model, path = tiny_file
    body = path.read_bytes()[HEADER64:]
    old = tmp_path / "old.weights"
    old.write_bytes(struct.pack("<iiiI", 0, 1, 0, 4242) + body)  # major*10+minor < 2 -> uint32 seen
    with open(old, "rb") as f:
        header = read_weights_header(f, old)
    assert (header.major, header.minor, header.seen, header.nbytes) == (0, 1, 4242, HEADER32)
    loaded = detkit.build_model("yolov3-tiny")
    detkit.load_darknet_weights(loaded, old)
    assert same(model, loaded)
    out = tmp_path / "new.weights"
    detkit.save_darknet_weights(loaded, out)  # written back as the 64-bit variant
    data = out.read_bytes()
    assert struct.unpack("<iiiQ", data[:20]) == (0, 2, 0, 4242) and data[20:] == body
    # major >= 1000 also means a 32-bit seen in darknet
    odd = tmp_path / "odd.weights"
    odd.write_bytes(struct.pack("<iiiI", 1000, 2, 0, 7) + body)
    detkit.load_darknet_weights(detkit.build_model("yolov3-tiny"), odd)


def test_partial_file_is_accepted_with_warning(tiny_file, tmp_path, caplog):
    model, _ = tiny_file
    part = tmp_path / "tiny.conv.15"
    detkit.save_darknet_weights(model, part, cutoff=15)  # like darknet's yolov3-tiny.conv.15
    layout = conv_layout(model, cutoff=15)
    assert part.stat().st_size == HEADER64 + 4 * sum(t.total for t in layout)
    assert [t.index for t in layout] == [0, 2, 4, 6, 8, 10, 12, 13, 14]
    fresh = randomise(detkit.build_model("yolov3-tiny"), 2)
    before = [t.clone() for t in file_tensors(fresh)]
    caplog.set_level(logging.WARNING)
    report = detkit.load_darknet_weights(fresh, part)
    assert report.partial and report.loaded == (0, 2, 4, 6, 8, 10, 12, 13, 14)
    assert any("file ends after 9 of 13 conv layers (before layer 15" in r.getMessage() for r in caplog.records)
    assert same(model, fresh, layers={0, 2, 4, 6, 8, 10, 12, 13, 14})
    after = file_tensors(fresh)
    n_loaded = sum(len(t.names) for t in layout)
    assert all(torch.equal(a, b) for a, b in zip(before[n_loaded:], after[n_loaded:]))  # rest untouched


def test_cutoff_load_ignores_the_rest(tiny_file):
    model, path = tiny_file
    fresh = randomise(detkit.build_model("yolov3-tiny"), 3)
    report = detkit.load_darknet_weights(fresh, path, cutoff=10)
    assert report.loaded == (0, 2, 4, 6, 8) and not report.partial
    assert same(model, fresh, layers={0, 2, 4, 6, 8})
    assert not same(model, fresh, layers={10})


def test_truncated_inside_a_tensor(tiny_file, tmp_path):
    _, path = tiny_file
    data = path.read_bytes()
    # layer 0 holds 4*16 BN floats + 16*3*3*3 weights; cut inside layer 2's conv weights
    layer0 = 4 * 16 + 432
    cut = tmp_path / "cut.weights"
    cut.write_bytes(data[: HEADER64 + 4 * (layer0 + 4 * 32 + 100)])
    with pytest.raises(WeightsError, match=r"cut.weights: file ends inside conv.weight of layer 2 "
                                           r"\(\[convolutional\] at cfg line 37\)"):
        detkit.load_darknet_weights(detkit.build_model("yolov3-tiny"), cut)
    cut.write_bytes(data[: HEADER64 + 4 * layer0 + 2])  # half a float into layer 2's BN beta
    with pytest.raises(WeightsError, match="file ends inside bn.bias of layer 2"):
        detkit.load_darknet_weights(detkit.build_model("yolov3-tiny"), cut)
    cut.write_bytes(data[:14])
    with pytest.raises(WeightsError, match="inside the header"):
        detkit.load_darknet_weights(detkit.build_model("yolov3-tiny"), cut)
    cut.write_bytes(data[:7])
    with pytest.raises(WeightsError, match="too short"):
        detkit.load_darknet_weights(detkit.build_model("yolov3-tiny"), cut)


def test_leftover_bytes_are_an_error(tiny_file, tmp_path):
    _, path = tiny_file
    extra = tmp_path / "extra.weights"
    extra.write_bytes(path.read_bytes() + b"\0" * 12)
    with pytest.raises(WeightsError, match=r"12 bytes left over after the last layer \(layer 22 "):
        detkit.load_darknet_weights(detkit.build_model("yolov3-tiny"), extra)


def test_wrong_cfg_is_reported(tiny_file):
    _, path = tiny_file
    with pytest.raises(WeightsError):
        detkit.load_darknet_weights(detkit.build_model("yolov4-tiny"), path)


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="cannot open weights file"):
        detkit.load_darknet_weights(detkit.build_model("yolov3-tiny"), tmp_path / "nope.weights")


def test_class_change_reinitialises_heads(tiny_file, caplog):
    model, path = tiny_file
    two = detkit.build_model("yolov3-tiny", num_classes=2)
    head_before = two.layers[15].conv.weight.clone()
    caplog.set_level(logging.WARNING)
    report = detkit.load_darknet_weights(two, path)
    assert report.reinitialised == (15, 22) and report.file_num_classes == 80
    assert report.loaded == (0, 2, 4, 6, 8, 10, 12, 13, 14, 18, 21)
    assert same(model, two, layers=set(report.loaded))
    assert two.layers[15].conv.weight.shape == (21, 512, 1, 1)
    assert not torch.equal(two.layers[15].conv.weight, head_before)  # reset, not left as it was
    msgs = [r.getMessage() for r in caplog.records]
    assert any("layer 15 ([convolutional] at cfg line 123) has 255 filters in the file but 21 in the model" in m
               and "re-initialised" in m for m in msgs)


def test_class_change_other_direction_and_explicit_count(tmp_path):
    three = randomise(detkit.build_model("yolov3-tiny", num_classes=3), 4)
    path = tmp_path / "three.weights"
    detkit.save_darknet_weights(three, path)
    big = detkit.build_model("yolov3-tiny")  # 80 classes: the file is smaller than the model expects
    report = detkit.load_darknet_weights(big, path)
    assert report.file_num_classes == 3 and report.reinitialised == (15, 22)
    assert same(three, big, layers=set(report.loaded)) and 21 in report.loaded
    # with cutoff the size cannot tell the count: it is given explicitly
    again = detkit.build_model("yolov3-tiny", num_classes=5)
    report = detkit.load_darknet_weights(again, path, cutoff=23, file_num_classes=3)
    assert report.reinitialised == (15, 22) and report.loaded[-1] == 21
    assert same(three, again, layers=set(report.loaded))
    # a wrong explicit count makes the offsets wrong: caught as a size mismatch
    with pytest.raises(WeightsError):
        detkit.load_darknet_weights(detkit.build_model("yolov3-tiny", num_classes=5), path, file_num_classes=4)


def test_save_is_atomic_and_leaves_no_temp(tiny_file, tmp_path):
    model, _ = tiny_file
    out = tmp_path / "a.weights"
    out.write_bytes(b"old")
    detkit.save_darknet_weights(model, out)
    assert out.stat().st_size == 35_434_956
    assert [p.name for p in tmp_path.iterdir()] == ["a.weights"]


@pytest.mark.real
def test_real_weights_round_trip_byte_identical(shared, tmp_path):
    src = shared / "weights" / "yolov3-tiny.weights"
    data = src.read_bytes()
    assert len(data) == 35_434_956 and hashlib.md5(data).hexdigest() == "3bcd6b390912c18924b46b26a9e7ff53"
    model = detkit.build_model("yolov3-tiny")
    report = detkit.load_darknet_weights(model, src)
    assert (report.header.major, report.header.minor) == (0, 2) and not report.partial
    out = tmp_path / "copy.weights"
    detkit.save_darknet_weights(model, out)
    assert out.read_bytes() == data


def test_bad_arguments(tiny_file):
    _, path = tiny_file
    model = detkit.build_model("yolov3-tiny")
    with pytest.raises(ValueError, match="cutoff must be an integer >= 0"):
        detkit.load_darknet_weights(model, path, cutoff=-1)
    with pytest.raises(ValueError, match="file_num_classes must be an integer >= 1"):
        detkit.load_darknet_weights(model, path, file_num_classes=0)
    with pytest.raises(TypeError):
        detkit.save_darknet_weights(torch.nn.Linear(2, 2), path)


def test_pytorch_port_header_with_64bit_seen_loads_with_a_warning(tiny_file, tmp_path, caplog):
    """pytorchyolo's save_darknet_weights writes five int32 (a 64-bit seen) under a version 0.0 header,
    which darknet reads with a 32-bit seen: 4 bytes left over (ultralytics/yolov3#30)."""
    model, path = tiny_file
    body = path.read_bytes()[HEADER64:]
    port = tmp_path / "port.weights"
    port.write_bytes(struct.pack("<iiiii", 0, 0, 0, 1234, 0) + body)
    loaded = detkit.build_model("yolov3-tiny")
    with caplog.at_level(logging.WARNING, logger="detkit.darknet.weights"):
        report = detkit.load_darknet_weights(loaded, port)
    assert same(model, loaded) and report.header.seen == 1234
    warned = [r.getMessage() for r in caplog.records if "64-bit 'seen'" in r.getMessage()]
    assert len(warned) == 1 and "version 0.0 header" in warned[0] and "PyTorch port" in warned[0]
    # the mirror mistake: a >= 0.2 header followed by a 32-bit seen (4 bytes missing)
    short = tmp_path / "short.weights"
    short.write_bytes(struct.pack("<iiiI", 0, 2, 0, 99) + body)
    again = detkit.build_model("yolov3-tiny")
    with caplog.at_level(logging.WARNING, logger="detkit.darknet.weights"):
        report = detkit.load_darknet_weights(again, short)
    assert same(model, again) and report.header.seen == 99 and "32-bit 'seen'" in caplog.text


@pytest.mark.parametrize("extra", [3, 5, 8])
def test_other_size_mismatches_with_an_old_header_are_still_refused(tiny_file, tmp_path, extra):
    _, path = tiny_file
    body = path.read_bytes()[HEADER64:]
    bad = tmp_path / "bad.weights"
    bad.write_bytes(struct.pack("<iiiI", 0, 0, 0, 1) + b"\0" * extra + body)
    with pytest.raises(WeightsError, match="left over|ends inside"):
        detkit.load_darknet_weights(detkit.build_model("yolov3-tiny"), bad)


def test_region_class_count_propagation_and_file_classes(tmp_path):
    from detkit.darknet.cfg_edit import set_num_classes
    from detkit.darknet.cfg import resolve_cfg

    text, _ = resolve_cfg("yolov2-tiny")
    patched, edits = set_num_classes(text, 3)
    assert [(e.key, e.old, e.new) for e in edits] == [("filters", "425", "40"), ("classes", "80", "3")]
    model = detkit.build_model("yolov2-tiny", num_classes=3)
    assert model.num_classes == 3 and model.yolo_layers[0].num_anchors == 5
    coco = randomise(detkit.build_model("yolov2-tiny"), 3)
    path = tmp_path / "v2.weights"
    detkit.save_darknet_weights(coco, path)
    report = detkit.load_darknet_weights(model, path)  # 80-class file into a 3-class model
    assert report.file_num_classes == 80 and report.reinitialised == (14,)
    gauss = ("[net]\nwidth=32\nheight=32\nchannels=3\n[convolutional]\nfilters=36\n[Gaussian_yolo]\n"
             "mask=0,1,2\nanchors=1,1,2,2,3,3\nclasses=3\nnum=3\n")
    _, edits = set_num_classes(gauss, 2)
    assert [(e.key, e.new) for e in edits] == [("filters", "33"), ("classes", "2")]  # (classes + 9) * 3
