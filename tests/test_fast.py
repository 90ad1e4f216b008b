"""The fast inference path (detkit.infer.fast): BN folding is exact, layouts and precisions agree
with the plain model, the source model is left untouched, and the Predictor's fast option and
data pipeline work."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

import detkit
from detkit.boxes import iou_matrix
from detkit.infer.fast import (
    FastDarknet, cpu_has_native_bf16, fold_batchnorm, optimize_for_inference, resolve_dtype,
)
from detkit.infer.predict import Predictor
from detkit.data.images import read_image

# every layer type the fast path handles: conv (+BN, leaky / mish / linear), maxpool, shortcut,
# grouped route, upsample, two-source route, two yolo heads (one with scale_x_y)
CFG = """[net]
width=64
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
size=2
stride=2

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=16
size=1
stride=1
pad=1
activation=mish

[shortcut]
from=-2
activation=linear

[route]
layers=-1
groups=2
group_id=1

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=32
size=3
stride=2
pad=1
activation=leaky

[convolutional]
size=1
stride=1
pad=1
filters=21
activation=linear

[yolo]
mask=3,4,5
anchors=6,8, 12,14, 20,18, 24,30, 40,36, 55,60
classes=2
num=6
scale_x_y=1.05

[route]
layers=-4

[convolutional]
batch_normalize=1
filters=8
size=1
stride=1
pad=1
activation=leaky

[upsample]
stride=2

[route]
layers=-1,2

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[convolutional]
size=1
stride=1
pad=1
filters=21
activation=linear

[yolo]
mask=0,1,2
anchors=6,8, 12,14, 20,18, 24,30, 40,36, 55,60
classes=2
num=6
"""


def _randomise_bn(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine parameters (a fresh BN is the identity map)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in model.conv_layers:
            layer.conv.weight.mul_(0.7)
            if layer.bn is not None:
                n = layer.bn.num_features
                layer.bn.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                layer.bn.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.3)
                layer.bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
                layer.bn.bias.copy_(torch.randn(n, generator=g) * 0.2)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = detkit.build_model(CFG)
    _randomise_bn(m)
    return m.eval()


@pytest.fixture(scope="module")
def images():
    return torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The plain model in NCHW float32, on a deep copy (the fixture model stays as it is)."""
    import copy

    ref = copy.deepcopy(model).to(memory_format=torch.contiguous_format).eval()
    with torch.inference_mode():
        return ref(x.contiguous())


def test_fold_batchnorm_equals_conv_then_bn():
    torch.manual_seed(3)
    conv = nn.Conv2d(5, 7, 3, padding=1, bias=False).double()
    bn = nn.BatchNorm2d(7, eps=1e-6).double()
    with torch.no_grad():
        bn.running_mean.normal_(0, 0.5)
        bn.running_var.uniform_(0.2, 3.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_(0, 0.5)
    bn.eval()
    x = torch.randn(2, 5, 9, 9, dtype=torch.float64)
    fused = fold_batchnorm(conv, bn)
    assert fused.bias is not None and fused.weight.dtype == torch.float32
    expected = bn(conv(x)).float()
    np.testing.assert_allclose(fused(x.float()).detach().numpy(), expected.detach().numpy(), atol=2e-5)
    # a conv with its own bias and no BN is copied as it is
    plain = nn.Conv2d(5, 7, 1, bias=True)
    copy_ = fold_batchnorm(plain, None)
    assert torch.equal(copy_.weight, plain.weight) and torch.equal(copy_.bias, plain.bias)
    assert copy_.weight.data_ptr() != plain.weight.data_ptr()


@pytest.mark.parametrize("channels_last", [True, False])
def test_fp32_fast_model_equals_the_model(model, images, channels_last):
    ref = _reference(model, images)
    fast = optimize_for_inference(model, "cpu", dtype="fp32", channels_last=channels_last)
    assert isinstance(fast, FastDarknet) and fast.folded_bn == 6
    assert fast.fast_info.dtype == "fp32" and fast.fast_info.channels_last is channels_last
    with torch.inference_mode():
        out = fast(images)
    assert out.dtype == torch.float32 and out.shape == ref.shape == (3, 3 * (8 * 8 + 32 * 32), 7)
    assert (out - ref).abs().max().item() <= 1e-4
    # NCHW or NHWC input memory gives the same result
    with torch.inference_mode():
        out_cl = fast(images.contiguous(memory_format=torch.channels_last))
    assert (out_cl - out).abs().max().item() <= 1e-5


def test_source_model_is_left_unchanged(model, images):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ptrs = {k: v.data_ptr() for k, v in model.state_dict().items()}
    layout = [m.conv.weight.is_contiguous() for _, m in model.conv_layers]
    training = model.training
    fast = optimize_for_inference(model, "cpu", dtype="bf16" if cpu_has_native_bf16() else "fp32")
    with torch.inference_mode():
        fast(images)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {k: v.data_ptr() for k, v in after.items()} == ptrs
    assert [m.conv.weight.is_contiguous() for _, m in model.conv_layers] == layout
    assert model.training == training
    assert all(m.bn is not None for _, m in model.conv_layers if m.spec.batch_normalize)
    fast_ptrs = {p.data_ptr() for p in fast.parameters()}
    assert not fast_ptrs & set(ptrs.values())  # the fast model shares no storage with the source


def test_bf16_fast_model_is_close(model, images):
    ref = _reference(model, images)
    fast = optimize_for_inference(model, "cpu", dtype="bf16")
    assert fast.fast_info.dtype == "bf16"
    convs = [m for m in fast.layers if m.__class__.__name__ == "FusedConv"]
    # the first three convs and the two head convs stay float32
    assert [c.dtype == torch.float32 for c in convs] == [True, True, True, False, True, False, False, True]
    with torch.inference_mode():
        out = fast(images)
    assert out.dtype == torch.float32
    probs_diff = (out[..., 4:] - ref[..., 4:]).abs()
    assert probs_diff.max().item() < 0.05 and probs_diff.mean().item() < 0.005
    # boxes of the confident rows overlap their float32 counterparts almost perfectly
    def xyxy(t: torch.Tensor) -> np.ndarray:
        return torch.cat([t[:, :2] - t[:, 2:4] / 2, t[:, :2] + t[:, 2:4] / 2], dim=1).double().numpy()

    for b in range(len(images)):
        rows = torch.nonzero(ref[b, :, 4] > 0.3).flatten()
        assert len(rows) > 10
        ious = np.diag(iou_matrix(xyxy(ref[b, rows]), xyxy(out[b, rows])))
        assert ious.min() > 0.9 and ious.mean() > 0.97


def test_resolve_dtype():
    cpu = torch.device("cpu")
    assert resolve_dtype("fp32", cpu) == torch.float32
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_dtype("auto", cpu) == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    with pytest.raises(ValueError, match="fp16 is for CUDA"):
        resolve_dtype("fp16", cpu)
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_dtype("int8", cpu)


def test_fast_model_is_inference_only(model):
    fast = optimize_for_inference(model, "cpu", dtype="fp32")
    assert not fast.training and not any(p.requires_grad for p in fast.parameters())
    with pytest.raises(RuntimeError, match="inference-only"):
        fast.train()
    fast.eval()  # allowed
    with pytest.raises(ValueError, match="multiple of 8"):
        fast(torch.zeros(1, 3, 60, 64))
    with pytest.raises(TypeError, match="needs a DarknetModel"):
        optimize_for_inference(nn.Conv2d(3, 3, 1), "cpu")


def test_predictor_fast_fp32_gives_the_eager_detections(model):
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (48 + 8 * i, 70, 3), np.uint8) for i in range(3)]
    import copy

    eager = Predictor(copy.deepcopy(model), img_size=64, conf=0.3).predict(imgs)
    fast_pred = Predictor(model, img_size=64, conf=0.3, fast=True, precision="fp32")
    assert fast_pred.description.startswith("fast: fp32")
    fast = fast_pred.predict(imgs)
    assert sum(len(d) for d in eager) > 5
    for a, b in zip(eager, fast):
        assert a.class_ids.tolist() == b.class_ids.tolist()
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


class _SlowModel(nn.Module):
    """0.2 s per forward (sleep: no CPU), one fixed detection per image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.2)
        row = torch.tensor([10.0, 10.0, 8.0, 8.0, 1.0, 0.9])
        return row.expand(len(x), 1, 6).clone()


def test_predict_paths_loads_while_the_model_runs(tmp_path):
    """Serial work would take 8 x 0.1 s loading + 4 x 0.2 s model = 1.6 s; with loading overlapped
    the model waits only for the first batch (~0.1 s)."""
    from PIL import Image

    paths = []
    for i in range(8):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(p)
        paths.append(p)
    def slow_read(path):
        time.sleep(0.1)
        return read_image(path)

    pred = Predictor(_SlowModel(), img_size=32, reader=slow_read)
    results = list(pred.predict_paths(paths, batch_size=2, workers=2))
    assert [r.path for r in results] == paths and all(len(r.detections) == 1 for r in results)
    st = pred.last_stats
    assert st.images == 8 and st.batches == 4
    assert st.model_s >= 0.8 and st.wait_s + st.model_s <= st.wall_s + 1e-6
    assert st.wall_s < 1.35, st.describe()
    assert st.wait_share < 0.3, st.describe()
    assert results[0].image_size == (32, 32)


class _BrightBox(nn.Module):
    """Reports the extent of the bright (> 0.9) pixels of each input as one class-0 box."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = []
        for img in x:
            ys, xs = torch.nonzero(img.min(dim=0).values > 0.9, as_tuple=True)
            x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            rows.append(torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, torch.tensor(1.0),
                                     torch.tensor(0.9)]).float())
        return torch.stack(rows)[:, None, :]


def test_predict_frames_keeps_order_and_propagates_errors():
    frames = []
    for i in range(7):
        f = np.zeros((40, 60, 3), np.uint8)
        f[10:20, 3 * i:3 * i + 10] = 255
        frames.append(f)
    pred = Predictor(_BrightBox(), img_size=64)
    out = list(pred.predict_frames(iter(frames), batch_size=3))
    assert len(out) == 7 and pred.last_stats.images == 7 and pred.last_stats.batches == 3
    for i, (frame, det) in enumerate(out):
        assert frame is frames[i]
        np.testing.assert_allclose(det.boxes[0], [3 * i, 10, 3 * i + 10, 20], atol=1.5)

    def broken():
        yield frames[0]
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(pred.predict_frames(broken(), batch_size=2))
    # a consumer that stops early does not hang
    gen = pred.predict_frames(iter(frames * 10), batch_size=2, prefetch=2)
    next(gen)
    gen.close()


def test_benchmark_command_smoke(tmp_path, capsys):
    """``detkit benchmark --quick`` on a tiny random model: every table row is produced (no timing
    is checked: the benchmark is a measurement, not a test)."""
    from PIL import Image

    from detkit.cli import main

    cfg = tmp_path / "net.cfg"
    cfg.write_text(CFG)
    torch.manual_seed(0)
    m = detkit.build_model(cfg)
    _randomise_bn(m)
    detkit.save_darknet_weights(m, tmp_path / "net.weights")
    (tmp_path / "two.names").write_text("a\nb\n")
    (tmp_path / "imgs").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (50 + 10 * i, 70, 3), np.uint8)).save(tmp_path / "imgs" / f"{i}.jpg")
    code = main(["benchmark", "--quick", "--cfg", str(cfg), "--weights", str(tmp_path / "net.weights"),
                 "--names", str(tmp_path / "two.names"), "--images", str(tmp_path / "imgs"), "--size", "64",
                 "--threads", "1", "--json", str(tmp_path / "bench.json"), "--pytorchyolo-path", str(tmp_path),
                 "--skip", "process"])
    assert code == 0
    out = capsys.readouterr().out
    assert "| OpenCV DNN (darknet importer) |" in out and "| detkit fast fp32 (BN folded, channels_last) |" in out
    assert "OpenCV DNN loop" in out and "detkit detect (default: --backend auto)" in out
    assert "flags: " in out and "Compute floor" in out
    import json

    res = json.loads((tmp_path / "bench.json").read_text())
    names = [r["name"] for r in res["end_to_end"]]
    assert len(names) == 6 and all(r["images_per_s"] > 0 for r in res["end_to_end"])
    assert "int8.onnx (onnxruntime" in names[4] and "int8.xml (OpenVINO" in names[5]  # the int8 files, end to end
    timed = [r for r in res["latency"] if r["median_ms"] is not None]
    assert len(timed) >= 11 and all(r["median_ms"] > 0 for r in timed)
    assert any("onnx-int8" in r["name"] for r in timed)
    assert {"OpenVINO fp32 hint (raw, detkit's IR)", "OpenVINO bf16 hint (raw, detkit's IR)",
            "OpenVINO int8 (detkit export --format openvino-int8)"} <= {r["name"] for r in timed}
    floor = res["compute_floor"]
    assert floor["conv_gflop"] > 0 and floor["fp32_floor_ms"] > 0 and floor["bf16_gemm_gflops"] > 0


def test_conv_gflop_matches_darknet_count():
    """yolov3-tiny at 416: darknet prints 5.571 BFLOPs of which 0.006 are its maxpools."""
    from detkit.darknet.cfg import resolve_cfg
    from detkit.darknet.shapes import conv_gflop
    from detkit.darknet.specs import parse_network

    spec = parse_network(*resolve_cfg("yolov3-tiny"))
    assert conv_gflop(spec, (416, 416)) == pytest.approx(5.564961792, abs=1e-9)
    # the 1x1 head conv alone at 13x13: 2 * 255 * 512 * 169 flops
    assert conv_gflop(spec, (32, 32)) == pytest.approx(5.564961792 / 169, rel=1e-9)


@pytest.mark.slow
def test_compiled_predictor_pads_the_last_batch(model, tmp_path):
    """torch.compile path (slow: compiles once): 5 images in batches of 2 -> sizes 2, 2, 1; the
    last batch is padded to 2 (no second compilation) and results equal the uncompiled fast path."""
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (40 + 6 * i, 64, 3), np.uint8)).save(p)
        paths.append(p)
    plain = Predictor(model, img_size=64, conf=0.3, fast=True, precision="fp32")
    compiled = Predictor(model, img_size=64, conf=0.3, fast=True, precision="fp32", compile=True)
    a = list(plain.predict_paths(paths, batch_size=2))
    b = list(compiled.predict_paths(paths, batch_size=2))
    assert compiled._compiled_batch == 2
    assert sum(len(r.detections) for r in a) > 5
    for ra, rb in zip(a, b):
        assert ra.detections.class_ids.tolist() == rb.detections.class_ids.tolist()
        np.testing.assert_allclose(ra.detections.boxes, rb.detections.boxes, atol=1e-2)
        np.testing.assert_allclose(ra.detections.scores, rb.detections.scores, atol=1e-4)
