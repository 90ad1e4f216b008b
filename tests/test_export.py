"""detkit export: ONNX vs the PyTorch model (onnxruntime and OpenCV DNN), dynamic batch, TorchScript,
darknet bytes identical to save_darknet_weights, and the CLI."""
from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import detkit
from detkit.cli import main
from detkit.infer.export import export_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

TOL = 1e-4  # max abs difference on the decoded output (pixels and probabilities)


def _model(cfg: str, classes: int = 2, seed: int = 0) -> detkit.DarknetModel:
    torch.manual_seed(seed)
    m = detkit.build_model(cfg, num_classes=classes)
    with torch.no_grad():  # non-trivial BN statistics so folding/eps mistakes would show
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.3, 0.1)  # many negative pre-activations: -inf vs 0 padding matters
    return m.eval()


def _ref(model, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).numpy()


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"images": x})[0]


def _cv2(path: Path, x: np.ndarray) -> np.ndarray:
    net = cv2.dnn.readNetFromONNX(str(path))
    net.setInput(x)
    return net.forward()


@pytest.fixture(scope="module", params=["yolov3-tiny", "yolov4-tiny"])
def onnx_export(request, tmp_path_factory):
    """A random-weight model exported at 96x64 (W x H) with a dynamic batch."""
    torch.set_num_threads(1)
    model = _model(request.param)
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    res = export_model(model, path, "onnx", img_size=(96, 64), dynamic_batch=True)
    return model, res


def _inputs(batch: int, h: int = 64, w: int = 96, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_onnx_matches_pytorch_in_onnxruntime(onnx_export):
    model, res = onnx_export
    onnx.checker.check_model(str(res.path))
    for batch in (1, 2):
        x = _inputs(batch, seed=batch)
        ref = _ref(model, x)
        out = _ort(res.path, x.numpy())
        assert out.shape == ref.shape == (batch, 3 * (2 * 3 + 4 * 6), 7)
        assert np.abs(out - ref).max() <= TOL
    assert res.output_shape == (1, 90, 7) and res.img_size == (96, 64)


def test_onnx_loads_in_opencv_dnn_and_agrees(onnx_export):
    model, res = onnx_export
    for batch in (1, 2):
        x = _inputs(batch, seed=10 + batch)
        assert np.abs(_cv2(res.path, x.numpy()) - _ref(model, x)).max() <= TOL


def test_onnx_graph_uses_opencv_supported_ops_and_minus_inf_pool_padding(onnx_export):
    model, res = onnx_export
    g = onnx.load(str(res.path)).graph
    ops = {n.op_type for n in g.node}
    assert {"Conv", "MaxPool", "Resize", "Sigmoid", "Exp"} <= ops
    assert not ops & {"Range", "Loop", "If", "ScatterND", "NonZero"}
    assert g.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    # darknet's size=2 stride=1 maxpool: padded right/bottom with -inf (never zero)
    pads = [n for n in g.node if n.op_type == "Pad"]
    padded_pools = [ly for ly in model.spec.layers if ly.type == "maxpool" and ly.stride == 1 and ly.padding]
    assert len(pads) == len(padded_pools)  # yolov3-tiny: layer 11; yolov4-tiny: none
    consts = {init.name: init for init in g.initializer}
    for n in g.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = n.attribute[0].t
    for p in pads:
        value = onnx.numpy_helper.to_array(consts[p.input[2]]) if len(p.input) > 2 and p.input[2] in consts else None
        assert value is not None and np.isneginf(value).all()


def test_onnx_static_batch_and_non_square_size(tmp_path):
    model = _model("yolov3-tiny", classes=1, seed=3)
    path = tmp_path / "s.onnx"
    res = export_model(model, path, "onnx", img_size=(64, 128))
    g = onnx.load(str(path)).graph
    assert [d.dim_value for d in g.input[0].type.tensor_type.shape.dim] == [1, 3, 128, 64]
    x = _inputs(1, h=128, w=64, seed=4)
    ref = _ref(model, x)
    assert np.abs(_ort(path, x.numpy()) - ref).max() <= TOL
    assert np.abs(_cv2(path, x.numpy()) - ref).max() <= TOL
    assert res.output_shape == ref.shape and not list(tmp_path.glob(".*.tmp"))


def test_torchscript_equals_pytorch(tmp_path):
    model = _model("yolov3-tiny", seed=5)
    path = tmp_path / "m.torchscript"
    export_model(model, path, "torchscript", img_size=(64, 64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.load(str(path))
    for batch in (1, 2):
        x = _inputs(batch, h=64, w=64, seed=20 + batch)
        with torch.no_grad():
            assert torch.equal(ts(x), model(x))


def test_darknet_export_is_byte_identical_to_save_darknet_weights(tmp_path):
    model = _model("yolov3-tiny", seed=6)
    detkit.save_darknet_weights(model, tmp_path / "ref.weights")
    res = export_model(model, tmp_path / "out.weights", "darknet")
    assert (tmp_path / "out.weights").read_bytes() == (tmp_path / "ref.weights").read_bytes()
    assert res.nbytes == (tmp_path / "ref.weights").stat().st_size


def test_export_rejects_a_size_the_network_cannot_take(tmp_path):
    model = _model("yolov3-tiny")
    with pytest.raises(ValueError, match="multiples of 32"):
        export_model(model, tmp_path / "x.onnx", "onnx", img_size=(100, 64))
    with pytest.raises(ValueError, match="unknown export format"):
        export_model(model, tmp_path / "x.bin", "tflite")  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- CLI

@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("w") / "tiny2.weights"
    detkit.save_darknet_weights(_model("yolov3-tiny", seed=7), path)
    return path


def test_cli_export_onnx_with_names(weights_file, tmp_path, capsys):
    names = tmp_path / "obj.names"
    names.write_text("a\nb\n")
    out = tmp_path / "m.onnx"
    rc = main(["export", "--cfg", "yolov3-tiny", "--weights", str(weights_file), "--names", str(names),
               "--format", "onnx", "--img-size", "96x64", "--dynamic-batch", "-o", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert f"wrote {out} (onnx" in text and "output 1x90x7" in text and "verified with onnxruntime (batch 2)" in text
    model = detkit.build_model("yolov3-tiny", num_classes=2)
    detkit.load_darknet_weights(model, weights_file)
    x = _inputs(2, seed=30)
    assert np.abs(_ort(out, x.numpy()) - _ref(model.eval(), x)).max() <= TOL


def test_cli_export_darknet_round_trips_the_file(weights_file, tmp_path, capsys):
    out = tmp_path / "copy.weights"
    assert main(["export", "--cfg", "yolov3-tiny", "--weights", str(weights_file), "--classes", "2",
                 "--format", "darknet", "-o", str(out)]) == 0
    assert out.read_bytes() == weights_file.read_bytes()
    assert "13 conv layers" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--classes", "3"], "holds 2 classes but the model has 3"),
    (["--classes", "2", "--img-size", "100"], "--img-size"),
    (["--classes", "2", "--opset", "7"], "--opset must be in 11..20"),
    (["--classes", "0"], "--classes must be >= 1"),
])
def test_cli_export_errors(weights_file, tmp_path, capsys, extra, message):
    out = tmp_path / "x.onnx"
    rc = main(["export", "--cfg", "yolov3-tiny", "--weights", str(weights_file), "--format", "onnx",
               "-o", str(out), *extra])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("detkit: error: ") and err.count("\n") == 1
    assert message in err
    assert not out.exists()


def test_cli_export_missing_and_partial_weights(weights_file, tmp_path, capsys):
    assert main(["export", "--cfg", "yolov3-tiny", "--weights", str(tmp_path / "none.weights"), "--classes", "2",
                 "--format", "onnx", "-o", str(tmp_path / "x.onnx")]) == 1
    assert "weights file not found" in capsys.readouterr().err
    partial = tmp_path / "partial.weights"
    model = detkit.build_model("yolov3-tiny", num_classes=2)
    detkit.save_darknet_weights(model, partial, cutoff=15)
    assert main(["export", "--cfg", "yolov3-tiny", "--weights", str(partial), "--classes", "2",
                 "--format", "darknet", "-o", str(tmp_path / "x.weights")]) == 1
    err = capsys.readouterr().err
    assert "partial file" in err and err.count("\n") == 1
    assert main(["export", "--cfg", "yolov3-tiny", "--weights", str(weights_file), "--classes", "2",
                 "--format", "onnx", "-o", str(tmp_path / "no" / "x.onnx")]) == 1
    assert "output folder does not exist" in capsys.readouterr().err


# --------------------------------------------------------------------------- real weights

@pytest.mark.real
def test_real_yolov3_tiny_onnx_at_416(shared, tmp_path):
    model = detkit.build_model("yolov3-tiny")
    detkit.load_darknet_weights(model, shared / "weights" / "yolov3-tiny.weights")
    model.eval()
    path = tmp_path / "yolov3-tiny.onnx"
    export_model(model, path, "onnx")
    img = cv2.imread(str(shared / "images" / "raccoon-1_416.png"))[:, :, ::-1]
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255
    ref = _ref(model, x)
    for out in (_ort(path, x.numpy()), _cv2(path, x.numpy())):
        assert out.shape == (1, 2535, 85)
        assert np.abs(out[..., 4:] - ref[..., 4:]).max() <= TOL  # probabilities
        # boxes are pixels up to ~400: float32 convolution order differences give ~1e-3 px at most
        np.testing.assert_allclose(out[..., :4], ref[..., :4], rtol=1e-5, atol=2e-3)


def test_cli_export_from_a_training_checkpoint_prefers_ema(tmp_path, capsys):
    from detkit.checkpoint import CHECKPOINT_FORMAT, save_checkpoint

    raw, ema = _model("yolov3-tiny", classes=3, seed=8), _model("yolov3-tiny", classes=3, seed=9)
    ckpt = save_checkpoint({"format": CHECKPOINT_FORMAT, "version": 1, "model": raw.state_dict(),
                            "ema": {"module": ema.state_dict(), "updates": 10, "decay": 0.9999, "tau": 2000},
                            "class_names": ["a", "b", "c"]}, tmp_path / "last.pt")
    detkit.save_darknet_weights(ema, tmp_path / "ema.weights")
    out = tmp_path / "from_ckpt.weights"
    assert main(["export", "--cfg", "yolov3-tiny", "--weights", str(ckpt), "--format", "darknet", "-o", str(out)]) == 0
    assert out.read_bytes() == (tmp_path / "ema.weights").read_bytes()  # 3 classes taken from class_names
    capsys.readouterr()
    assert main(["export", "--cfg", "yolov3-tiny", "--weights", str(ckpt), "--classes", "2", "--format", "darknet",
                 "-o", str(tmp_path / "bad.weights")]) == 1
    err = capsys.readouterr().err
    assert "does not fit" in err and err.count("\n") == 1
