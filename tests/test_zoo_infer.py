"""The zoo's other head types through every inference path: ``[yolo] new_coords=1`` (yolov7-tiny,
scaled-YOLOv4) and YOLOv2's ``[region]`` (yolov2-tiny, softmax classes) decode in the fast PyTorch
model, the ONNX export (onnxruntime, OpenCV DNN), TorchScript and the OpenVINO IR exactly as the
eval-mode model does; yolov4-tiny ([yolo], scale_x_y 1.05) is the control."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import detkit
from detkit.infer.export import DecodedExport, export_model
from detkit.infer.fast import optimize_for_inference
from zoo_reference import calibrate, randomise

TOL = 1e-4  # on the decoded output: absolute for probabilities, relative for pixel values above 1
W, H = 96, 64
CFGS = ["yolov7-tiny", "yolov2-tiny", "yolov4-tiny"]


def _model(cfg: str, classes: int = 3) -> detkit.DarknetModel:
    torch.manual_seed(0)
    model = detkit.build_model(cfg, num_classes=classes)
    randomise(model, seed=5)
    calibrate(model, _x(1, seed=9).numpy())  # head outputs of realistic size (no exp overflow)
    return model.eval()


def _err(out: np.ndarray, ref: np.ndarray) -> float:
    """Largest difference, relative where |ref| > 1 (box sizes reach hundreds of pixels, where float32
    batch-norm folding alone moves the last bits)."""
    assert out.shape == ref.shape
    return float((np.abs(out - ref) / np.maximum(1.0, np.abs(ref))).max())


def _x(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, H, W, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=CFGS)
def zoo_model(request):
    torch.set_num_threads(1)
    model = _model(request.param)
    with torch.no_grad():
        ref = model(_x(2)).numpy()
    return request.param, model, ref


def _head_kinds(model) -> set[str]:
    return {("new_coords" if h.new_coords else h.kind) for h in model.yolo_layers}


def test_the_cfgs_cover_each_head_kind():
    kinds = {cfg: _head_kinds(detkit.build_model(cfg, num_classes=3)) for cfg in CFGS}
    assert kinds == {"yolov7-tiny": {"new_coords"}, "yolov2-tiny": {"region"}, "yolov4-tiny": {"yolo"}}


def test_reference_output_is_non_trivial(zoo_model):
    """Boxes spread over the image and probabilities neither all 0 nor all 1: a wrong decode
    (sigmoid of a probability, exp instead of 4 t^2, sigmoid instead of softmax) would show."""
    cfg, model, ref = zoo_model
    assert np.isfinite(ref).all()
    assert ref[..., 2:4].std() > 1.0 and 0.05 < ref[..., 4].mean() < 0.95
    if cfg == "yolov2-tiny":  # softmax classes sum to 1 for every row
        np.testing.assert_allclose(ref[..., 5:].sum(-1), 1.0, atol=1e-5)


def test_fast_model_fp32_equals_eval(zoo_model):
    cfg, model, ref = zoo_model
    fast = optimize_for_inference(model, dtype="fp32")
    with torch.no_grad():
        out = fast(_x(2)).numpy()
    assert out.shape == ref.shape
    assert _err(out, ref) <= TOL, cfg


def test_fast_model_bf16_stays_close(zoo_model):
    """bf16 convs, float32 decode: boxes within a few pixels, probabilities within 0.05."""
    cfg, model, ref = zoo_model
    fast = optimize_for_inference(model, dtype="bf16")
    with torch.no_grad():
        out = fast(_x(2)).numpy()
    assert np.median(np.abs(out[..., :4] - ref[..., :4])) < 1.0, cfg
    assert np.median(np.abs(out[..., 4:] - ref[..., 4:])) < 0.05, cfg


def test_decoded_export_wrapper_equals_eval(zoo_model):
    cfg, model, ref = zoo_model
    with torch.no_grad():
        out = DecodedExport(model, (W, H))(_x(2)).numpy()
    assert _err(out, ref) <= TOL, cfg


def test_onnx_in_onnxruntime_and_opencv_equals_eval(zoo_model, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    import cv2

    cfg, model, ref = zoo_model
    res = export_model(model, tmp_path / "m.onnx", "onnx", img_size=(W, H), dynamic_batch=True)
    sess = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"images": _x(2).numpy()})[0]
    assert _err(out, ref) <= TOL, cfg
    net = cv2.dnn.readNetFromONNX(str(res.path))
    net.setInput(_x(2).numpy()[:1])
    assert _err(net.forward(), ref[:1]) <= TOL, cfg


def test_torchscript_equals_eval(zoo_model, tmp_path):
    cfg, model, ref = zoo_model
    res = export_model(model, tmp_path / "m.pt", "torchscript", img_size=(W, H))
    with torch.no_grad():
        out = torch.jit.load(str(res.path))(_x(2)).numpy()
    assert _err(out, ref) <= TOL, cfg


def test_openvino_fp32_ir_equals_eval(zoo_model, tmp_path):
    pytest.importorskip("openvino")
    from detkit.infer.openvino_export import export_openvino
    from detkit.infer.openvino_model import OpenVinoModel

    cfg, model, ref = zoo_model
    xml, _ = export_openvino(model, tmp_path / "m.xml", img_size=(W, H))
    ov = OpenVinoModel(xml, precision="fp32")
    out = np.concatenate([ov(_x(2)[i:i + 1]).numpy() for i in range(2)])
    assert _err(out, ref) <= TOL, cfg


@pytest.mark.parametrize("cfg", ["yolov7-tiny", "yolov2-tiny"])
def test_int8_onnx_keeps_the_head_decode_float_and_close(cfg, tmp_path):
    """``onnx-int8`` of the new head kinds: the decode stays float (no QLinear node in it) and the
    output meets the tolerance policy of yolov3-tiny's in tests/test_int8.py (box errors relative to
    the box size here: these random heads predict boxes of hundreds of pixels)."""
    pytest.importorskip("onnxruntime")
    import onnx

    from detkit.data.images import letterbox, read_image
    from detkit.infer.onnxrt import OnnxModel
    from detkit.infer.quantize import quantize_int8
    from helpers import disc_images

    torch.set_num_threads(1)
    model = _model(cfg)
    calib = disc_images(tmp_path / "calib", 8, size=(80, 64))
    res = quantize_int8(model, tmp_path / "m.onnx", calib, img_size=(W, H))
    g = onnx.load(str(res.path)).graph
    assert not any(n.op_type.startswith("QLinear") and "decoders" in n.name for n in g.node)
    assert sum(n.op_type == "QLinearConv" for n in g.node) == res.quantized_convs > 0
    x = torch.stack([torch.from_numpy(letterbox(read_image(p), (W, H))[0].transpose(2, 0, 1).copy())
                     for p in calib[:4]]).float() / 255
    with torch.no_grad():
        ref = model(x)
    out = OnnxModel(res.path, threads=1)(x)
    box_err = (out[..., :4] - ref[..., :4]).abs()
    rel = box_err / ref[..., :4].abs().clamp(min=16.0)  # random boxes reach hundreds of pixels
    assert float(box_err.median()) < 1.0 and float(rel.max()) < 0.1, (cfg, float(rel.max()))
    prob_err = (out[..., 4:] - ref[..., 4:]).abs()
    assert float(prob_err.mean()) < 0.02 and float(prob_err.max()) < 0.25, cfg
    corr = np.corrcoef(out[..., 4:].numpy().ravel(), ref[..., 4:].numpy().ravel())[0, 1]
    assert corr > 0.98, cfg
