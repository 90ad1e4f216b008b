"""detkit.infer.loading.load_model: the one cfg + weights loader behind detect/eval/export/train."""
from __future__ import annotations

import pytest
import torch

import detkit
from detkit.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from detkit.infer.loading import load_model
from detkit.errors import WeightsError


def _model(classes: int, seed: int):
    torch.manual_seed(seed)
    model = detkit.build_model("yolov3-tiny", num_classes=classes)
    with torch.no_grad():  # non-default BN statistics so that a skipped tensor is visible
        for name, buf in model.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                buf.uniform_(0.5, 1.5)
    return model


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a, b)


def _checkpoint(tmp_path, raw, ema, names):
    payload = {"format": CHECKPOINT_FORMAT, "version": 1, "model": raw.state_dict(), "class_names": names}
    if ema is not None:
        payload["ema"] = {"module": ema.state_dict(), "updates": 1, "decay": 0.9999, "tau": 2000}
    return save_checkpoint(payload, tmp_path / "last.pt")


def test_checkpoint_gives_ema_weights_and_its_class_count(tmp_path):
    raw, ema = _model(3, 1), _model(3, 2)
    path = _checkpoint(tmp_path, raw, ema, ["a", "b", "c"])
    model, info = load_model("yolov3-tiny", path)
    assert model.num_classes == 3 and info.source == "ema" and info.class_names == ("a", "b", "c")
    assert info.fresh_layers == () and info.report is None
    ref = ema.state_dict()
    assert all(_same(v, ref[k]) for k, v in model.state_dict().items())
    _, info = load_model("yolov3-tiny", _checkpoint(tmp_path, raw, None, ["a", "b", "c"]))
    assert info.source == "model"


def test_checkpoint_of_another_class_count(tmp_path):
    src = _model(3, 3)
    path = _checkpoint(tmp_path, src, None, ["a", "b", "c"])
    with pytest.raises(WeightsError, match=r"checkpoint does not fit yolov3-tiny with 2 classes \(trained with 3\): "
                                           r"size mismatch for layers\.\d+\.conv\.(weight|bias)"):
        load_model("yolov3-tiny", path, 2)
    model, info = load_model("yolov3-tiny", path, 2, strict=False)
    heads = [i for i, layer in enumerate(model.layers) if i + 1 < len(model.layers)
             and model.layers[i + 1] in model.yolo_layers]
    assert list(info.fresh_layers) == heads
    ref = src.state_dict()
    for k, v in model.state_dict().items():
        assert _same(v, ref[k]) == (int(k.split(".")[1]) not in heads), k


def test_checkpoint_without_model_state(tmp_path):
    path = save_checkpoint({"format": CHECKPOINT_FORMAT, "version": 1}, tmp_path / "x.pt")
    with pytest.raises(WeightsError, match="x.pt: checkpoint holds no model state"):
        load_model("yolov3-tiny", path)


def test_darknet_class_change_strict_and_not(tmp_path):
    src = _model(2, 4)
    path = tmp_path / "two.weights"
    detkit.save_darknet_weights(src, path)
    with pytest.raises(WeightsError, match=r"two\.weights: holds 2 classes but the dataset has 5; fix it$"):
        load_model("yolov3-tiny", path, 5, classes_from="the dataset", classes_hint="fix it")
    with pytest.raises(WeightsError, match=r"holds 2 classes but the names file n\.names has 5 names$"):
        load_model("yolov3-tiny", path, 5, names_file="n.names")
    model, info = load_model("yolov3-tiny", path, 5, strict=False)
    assert info.source == "darknet" and info.fresh_layers == info.report.reinitialised and len(info.fresh_layers) == 2
    ref = src.state_dict()
    for k, v in model.state_dict().items():
        if "num_batches_tracked" not in k:
            assert _same(v, ref[k]) == (int(k.split(".")[1]) not in info.fresh_layers), k


def test_darknet_partial_and_cutoff(tmp_path):
    src = _model(2, 5)
    part = tmp_path / "part.weights"
    detkit.save_darknet_weights(src, part, cutoff=15)
    with pytest.raises(WeightsError, match=r"is a partial file \(it ends before the last layer of yolov3-tiny\); "
                                           r"detection needs complete weights$"):
        load_model("yolov3-tiny", part, 2, purpose="detection")
    model, info = load_model("yolov3-tiny", part, 2, strict=False)
    assert info.partial and info.fresh_layers == tuple(i for i, _ in model.conv_layers if i >= 15)
    full = tmp_path / "full.weights"
    detkit.save_darknet_weights(src, full)
    with pytest.raises(ValueError, match="strict=False"):
        load_model("yolov3-tiny", full, 2, cutoff=10)
    model, info = load_model("yolov3-tiny", full, 2, strict=False, cutoff=10)
    assert not info.partial and info.fresh_layers == tuple(i for i, _ in model.conv_layers if i >= 10)
    with pytest.raises(WeightsError, match="none.weights: weights file not found"):
        load_model("yolov3-tiny", tmp_path / "none.weights", 2)
