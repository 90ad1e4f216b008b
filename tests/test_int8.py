"""int8: edge-padded maxpool export (exact), quantize_int8 (graph, metadata, closeness to float32),
OnnxModel (contract, batches, bad files), the onnx-int8 export CLI, detect and eval on .onnx files,
and the real COCO weights quantised and run on dog.jpg."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import detkit
from detkit.cli import main
from detkit.infer.export import DecodedExport, export_onnx
from helpers import disc_images, make_dataset, write_tiny_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from detkit.infer.onnxrt import OnnxModel  # noqa: E402
from detkit.infer.quantize import fp32_layer_indices, nodes_to_keep_float, quantize_int8  # noqa: E402
from detkit.errors import WeightsError  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """detect converts cfg + weights to a cached OpenVINO IR: keep it out of the user's cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))

POOL_CFG = """[net]
width=96
height=64
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size={size}
stride={stride}
{padding}

[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=leaky

[maxpool]
size=2
stride=1

[convolutional]
size=1
stride=1
pad=1
filters=21
activation=linear

[yolo]
mask = 0,1,2
anchors = 10,14,  23,27,  37,58
classes=2
num=3
"""


def _random_model(cfg_text: str, tmp_path: Path, seed: int = 0) -> detkit.DarknetModel:
    path = tmp_path / f"m{seed}.cfg"
    path.write_text(cfg_text)
    torch.manual_seed(seed)
    m = detkit.build_model(path)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.3, 0.1)  # negative pre-activations: the pad value matters
    return m.eval()


@pytest.mark.parametrize("size,stride,padding", [(2, 1, ""), (3, 2, ""), (5, 1, ""), (3, 1, "padding=4"),
                                                  (2, 2, "padding=1")])
def test_edge_padded_maxpool_is_exact(tmp_path, size, stride, padding):
    model = _random_model(POOL_CFG.format(size=size, stride=stride, padding=padding), tmp_path)
    x = torch.rand(2, 3, 64, 96) - 0.6  # negative inputs too: -inf vs edge vs 0 padding would differ
    with torch.no_grad():
        ref = model(x)
        edge = DecodedExport(model, (96, 64), maxpool_pad="edge")(x)
        inf = DecodedExport(model, (96, 64))(x)
    assert torch.equal(edge, inf)
    assert torch.allclose(edge, ref, atol=1e-4, rtol=0)


def test_edge_padding_refuses_windows_wholly_in_the_padding(tmp_path):
    model = _random_model(POOL_CFG.format(size=2, stride=2, padding="padding=6"), tmp_path)
    with pytest.raises(ValueError, match=r"layer 1 \[maxpool\].*wholly in the padding"):
        DecodedExport(model, (96, 64), maxpool_pad="edge")



@pytest.fixture(scope="module")
def quantised(tmp_path_factory):
    """A random-weight yolov3-tiny (2 classes) at 96x64, quantised on 12 noise-and-disc images."""
    tmp = tmp_path_factory.mktemp("int8")
    torch.manual_seed(0)
    model = detkit.build_model("yolov3-tiny", num_classes=2).eval()
    calib = disc_images(tmp / "calib", 12, size=(80, 64))
    res = quantize_int8(model, tmp / "m.onnx", calib, img_size=(96, 64))
    return model, res, calib


def test_quantised_graph_keeps_decode_and_heads_float(quantised):
    model, res, _ = quantised
    g = onnx.load(str(res.path)).graph
    ops = [n.op_type for n in g.node]
    heads = fp32_layer_indices(model, 0, True)
    assert heads == (15, 22) and res.fp32_layers == heads
    assert ops.count("QLinearConv") == 11 == res.quantized_convs and ops.count("Conv") == 2
    producer = {o: n for n in g.node for o in n.output}
    assert producer["output"].op_type == "Concat"  # the decoded output is float, not dequantised
    for n in g.node:  # every float conv is a head conv
        if n.op_type == "Conv":
            assert any(f"layers.{i}/" in n.name for i in heads), n.name
    assert not any(n.op_type.startswith("QLinear") and "decoders" in n.name for n in g.node)
    meta = {p.key: p.value for p in onnx.load(str(res.path)).metadata_props}
    assert meta["detkit.precision"] == "int8" and meta["detkit.fp32_layers"] == "15,22"
    assert meta["detkit.calibration"].startswith("12 images (minmax")
    assert res.calibration_images == 12 and res.dynamic_batch and res.img_size == (96, 64)


def test_quantised_model_is_close_to_float32(quantised):
    model, res, calib = quantised
    om = OnnxModel(res.path, threads=1)
    assert om.num_classes == 2 and om.fixed_input_size == (96, 64) and om.fixed_batch is None
    assert om.fast_info.precision == "int8"
    from detkit.data.images import letterbox, read_image

    x = torch.stack([torch.from_numpy(letterbox(read_image(p), (96, 64))[0].transpose(2, 0, 1).copy())
                     for p in calib[:4]]).float() / 255
    with torch.no_grad():
        ref = model(x)
    out = om(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    # boxes in pixels and probabilities: quantisation moves them a little, never wholesale
    box_err = (out[..., :4] - ref[..., :4]).abs()
    assert float(box_err.median()) < 1.0 and float(box_err.max()) < 12.0
    prob_err = (out[..., 4:] - ref[..., 4:]).abs()
    assert float(prob_err.mean()) < 0.02 and float(prob_err.max()) < 0.25
    corr = np.corrcoef(out[..., 4:].numpy().ravel(), ref[..., 4:].numpy().ravel())[0, 1]
    assert corr > 0.98
    # a float32 ONNX export of the same model is exact: the error above is the quantisation's
    fp32 = OnnxModel(export_onnx(model, res.path.with_name("fp32.onnx"), (96, 64), dynamic_batch=True).path)
    assert fp32.fast_info.precision == "fp32"
    assert float((fp32(x) - ref).abs().max()) < 1e-3


def test_int8_heads_and_first_layers_options(quantised, tmp_path):
    model, _, calib = quantised
    res = quantize_int8(model, tmp_path / "all.onnx", calib[:3], img_size=(96, 64), fp32_heads=False,
                        dynamic_batch=False)
    ops = [n.op_type for n in onnx.load(str(res.path)).graph.node]
    assert ops.count("QLinearConv") == 13 and "Conv" not in ops and res.fp32_layers == ()
    res2 = quantize_int8(model, tmp_path / "first.onnx", calib[:3], img_size=(96, 64), fp32_first=2)
    assert res2.fp32_layers == (0, 1, 2, 3, 15, 22) and res2.quantized_convs == 9  # convs 0, 2 + their maxpools
    assert nodes_to_keep_float(["/layers.3/conv/Conv", "/decoders.0/Exp", "/Concat", "/model/layers.15/Conv"],
                               [15]) == ["/decoders.0/Exp", "/Concat", "/model/layers.15/Conv"]
    with pytest.raises(ValueError, match="fp32_first"):
        fp32_layer_indices(model, -1)


def test_average_ranges_lie_within_the_global_minmax(quantised, tmp_path):
    """``average`` (mean of each image's min/max) never widens an activation range beyond the global
    min/max (the default), and narrows some: per-tensor uint8 scales compared one by one."""
    model, mm, calib = quantised
    res = quantize_int8(model, tmp_path / "average.onnx", calib, img_size=(96, 64), method="average")

    def act_scales(path):
        from onnx import numpy_helper

        inits = onnx.load(str(path)).graph.initializer
        return {i.name: float(numpy_helper.to_array(i)) for i in inits
                if i.name.endswith("_scale") and numpy_helper.to_array(i).size == 1}

    avg, glob = act_scales(res.path), act_scales(mm.path)
    common = sorted(set(avg) & set(glob))
    assert len(common) >= 10
    assert all(avg[k] <= glob[k] * (1 + 1e-6) for k in common)
    assert sum(avg[k] < glob[k] * 0.99 for k in common) >= 3
    with pytest.raises(ValueError, match="calibration method must be one of average, minmax"):
        quantize_int8(model, tmp_path / "x.onnx", calib, img_size=(96, 64), method="kl")


def test_fixed_batch_file_runs_any_batch_one_image_at_a_time(quantised, tmp_path):
    model, _, calib = quantised
    res = quantize_int8(model, tmp_path / "b1.onnx", calib[:3], img_size=(96, 64), dynamic_batch=False)
    om = OnnxModel(res.path)
    assert om.fixed_batch == 1
    x = torch.rand(3, 3, 64, 96)
    out = om(x)
    assert out.shape[0] == 3
    assert torch.equal(out[1:2], om(x[1:2]))
    with pytest.raises(ValueError, match=r"takes \(N, 3, 64, 96\)"):
        om(torch.rand(1, 3, 64, 64))


def test_unreadable_calibration_images_are_skipped_or_refused(quantised, tmp_path):
    model, _, calib = quantised
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    res = quantize_int8(model, tmp_path / "m.onnx", [bad, *calib[:2]], img_size=(96, 64))
    assert res.calibration_images == 2 and len(res.skipped_images) == 1 and str(bad) in res.skipped_images[0]
    with pytest.raises(ValueError, match="none of the 1 calibration images could be read"):
        quantize_int8(model, tmp_path / "none.onnx", [bad], img_size=(96, 64))
    assert not (tmp_path / "none.onnx").exists()
    with pytest.raises(ValueError, match="at least one image"):
        quantize_int8(model, tmp_path / "none.onnx", [], img_size=(96, 64))


def test_onnx_model_refuses_bad_files(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(WeightsError, match=r"junk\.onnx: not a loadable ONNX model") as e:
        OnnxModel(junk)
    assert "\n" not in str(e.value)
    with pytest.raises(WeightsError, match="ONNX model not found"):
        OnnxModel(tmp_path / "missing.onnx")
    # a valid ONNX file that is not a detector: two inputs
    from onnx import TensorProto, helper

    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 3, 8, 8])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "g", [a, b], [y])
    other = tmp_path / "add.onnx"
    other.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())
    with pytest.raises(WeightsError, match="expected one input and one output"):
        OnnxModel(other)


# ------------------------------------------------------------------------------------------ CLI


@pytest.fixture()
def tiny(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    model = write_tiny_model(folder, head_bias=[2.0, 1.0, -1.0])
    (folder / "two.names").write_text("a\nb\n")
    images = disc_images(tmp_path / "imgs", 6, size=(64, 64))
    return folder, model, images


def test_cli_export_int8_detect_and_eval(tiny, tmp_path, capsys):
    folder, model, images = tiny
    out = tmp_path / "tiny-int8.onnx"
    assert main(["export", "--cfg", str(folder / "tiny.cfg"), "--weights", str(folder / "tiny.weights"),
                 "--format", "onnx-int8", "--calib", str(images[0].parent), "--calib-images", "4",
                 "--dynamic-batch", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out} (onnx-int8" in text and "calibrated on 4 images" in text
    assert "float32 layers [3]" in text and "checked with onnxruntime on c00.png" in text
    # detect runs the file without a cfg, like the PyTorch model
    res = tmp_path / "det"
    assert main(["detect", "--weights", str(out), "--names", str(folder / "two.names"), "--source",
                 str(images[0].parent), "--out", str(res), "--no-images", "--conf", "0.3"]) == 0
    import json

    dets = json.loads((res / "detections.json").read_text())
    ref = tmp_path / "det_ref"
    assert main(["detect", "--cfg", str(folder / "tiny.cfg"), "--weights", str(folder / "tiny.weights"),
                 "--names", str(folder / "two.names"), "--source", str(images[0].parent), "--out", str(ref),
                 "--no-images", "--conf", "0.3", "--no-fast"]) == 0
    ref_dets = json.loads((ref / "detections.json").read_text())
    assert abs(len(dets) - len(ref_dets)) <= max(2, len(ref_dets) // 5)
    # eval on a dataset with the .onnx model (no --cfg)
    data = make_dataset(tmp_path / "ds", n_train=2, n_val=3, size=(64, 64))
    capsys.readouterr()
    assert main(["eval", "--weights", str(out), "--data", str(data), "--metric", "voc"]) == 0
    assert "mAP" in capsys.readouterr().out


def test_cli_int8_errors(tiny, tmp_path, capsys, caplog):
    folder, model, images = tiny
    base = ["export", "--cfg", str(folder / "tiny.cfg"), "--weights", str(folder / "tiny.weights"),
            "--format", "onnx-int8", "-o", str(tmp_path / "x.onnx")]
    assert main(base) == 1
    assert "needs --calib" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*base, "--calib", str(empty)]) == 1
    assert "no images" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_bytes(b"junk")
    assert main([*base, "--calib", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "none of the 1 calibration images could be read" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.onnx").exists()
    # a quantised file with the wrong names file / image size / no cfg for darknet weights
    onnx_path = tmp_path / "ok.onnx"
    assert main([*base[:-1], str(onnx_path), "--calib", str(images[0].parent), "--no-verify"]) == 0
    three = tmp_path / "three.names"
    three.write_text("a\nb\nc\n")
    capsys.readouterr()
    assert main(["detect", "--weights", str(onnx_path), "--names", str(three), "--source", str(images[0]),
                 "--out", str(tmp_path / "d1")]) == 1
    assert "the ONNX model gives 2 classes but the names file" in capsys.readouterr().err
    assert main(["detect", "--weights", str(onnx_path), "--names", str(folder / "two.names"), "--source",
                 str(images[0]), "--out", str(tmp_path / "d2"), "--img-size", "128"]) == 1
    assert "takes 64x64 inputs only" in capsys.readouterr().err
    assert main(["detect", "--weights", str(folder / "tiny.weights"), "--names", str(folder / "two.names"),
                 "--source", str(images[0]), "--out", str(tmp_path / "d3")]) == 1
    assert "--cfg is required" in capsys.readouterr().err
    # a letterbox-calibrated file run with --resize works, with a warning naming the mismatch
    assert main(["detect", "--weights", str(onnx_path), "--names", str(folder / "two.names"), "--source",
                 str(images[0]), "--out", str(tmp_path / "d4"), "--no-images", "--resize"]) == 0
    assert "was calibrated on letterbox inputs but detect runs resize" in caplog.text


# ------------------------------------------------------------------------------------ real data


@pytest.mark.real
def test_real_coco_int8_finds_the_dog_jpg_objects(tmp_path):
    weights = SHARED / "weights" / "yolov3-tiny.weights"
    images = SHARED / "images"
    if not weights.is_file() or not (images / "dog.jpg").is_file():
        pytest.skip("../shared/weights/yolov3-tiny.weights or ../shared/images/dog.jpg absent")
    model, _ = __import__("detkit.infer.loading", fromlist=["load_model"]).load_model(
        "yolov3-tiny", weights, 80, checkpoints=False)
    calib = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    res = quantize_int8(model, tmp_path / "coco-int8.onnx", calib)
    from detkit.data.images import read_image
    from detkit.infer.predict import Predictor

    img = read_image(images / "dog.jpg")
    ref = Predictor(model, conf=0.25, letterbox=False).predict([img])[0]
    got = Predictor(OnnxModel(res.path), conf=0.25, letterbox=False).predict([img])[0]
    from torchvision.ops import box_iou

    matched = 0
    for box, score, cid in zip(ref.boxes, ref.scores, ref.class_ids):
        same = got.class_ids == cid
        if not same.any():
            continue
        iou = box_iou(torch.as_tensor(np.asarray(box)[None], dtype=torch.float64),
                      torch.as_tensor(np.asarray(got.boxes[same]), dtype=torch.float64)).numpy()[0]
        k = int(iou.argmax())
        # the car/truck pair sharing one box trades a little score between its two classes
        if iou[k] >= 0.8 and abs(float(got.scores[same][k]) - float(score)) < 0.15:
            matched += 1
    names = (SHARED / "weights" / "coco.names").read_text().split("\n")
    found = {names[int(c)] for c in got.class_ids}
    assert {"dog", "car", "truck", "bicycle"} <= found
    assert len(ref.boxes) >= 6 and matched == len(ref.boxes)
    dog = int(np.flatnonzero(got.class_ids == 16)[0])
    assert abs(float(got.scores[dog]) - float(ref.scores[ref.class_ids == 16][0])) < 0.05


@pytest.mark.parametrize("letterbox", [True, False])
def test_predictor_runs_an_onnx_file_like_the_pytorch_model(quantised, tmp_path, letterbox):
    """The Predictor's numpy input path for onnxruntime (uint8 letterbox / float darknet resize ->
    NCHW float) gives the PyTorch path's detections: a float32 export must match them exactly."""
    from detkit.data.images import read_image
    from detkit.infer.predict import Predictor

    model, _, calib = quantised
    path = export_onnx(model, tmp_path / "fp32.onnx", (96, 64), dynamic_batch=True).path
    imgs = [read_image(p) for p in calib[:5]]
    ref = Predictor(model, img_size=(96, 64), conf=0.05, letterbox=letterbox).predict(imgs)
    got = Predictor(OnnxModel(path), conf=0.05, letterbox=letterbox).predict(imgs)
    assert sum(len(d) for d in ref) > 0
    for r, g in zip(ref, got):
        assert len(r) == len(g)
        np.testing.assert_allclose(g.boxes, r.boxes, atol=2e-3)
        np.testing.assert_allclose(g.scores, r.scores, atol=1e-5)
        np.testing.assert_array_equal(g.class_ids, r.class_ids)
