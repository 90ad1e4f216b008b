"""DarknetModel: golden numbers, model contract, darknet layer semantics against plain references."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

import detkit
from detkit.darknet.layers import MaxPoolLayer, RouteLayer, YoloLayer
from detkit.darknet.model import DarknetModel
from detkit.darknet.spec_types import MaxPoolSpec, RouteSpec
from detkit.darknet.shapes import infer_shapes
from detkit.errors import CfgError
from detkit.yolo.decode import decode_head


@pytest.fixture(scope="module")
def tiny() -> DarknetModel:
    torch.manual_seed(0)
    return detkit.build_model("yolov3-tiny")


def test_yolov3_tiny_golden_numbers(tiny):
    assert len(tiny.layers) == 24
    assert sum(p.numel() for p in tiny.parameters() if p.requires_grad) == 8_852_366
    assert tiny.num_classes == 80 and tiny.max_stride == 32
    assert tiny.net.width == 416 and tiny.net.height == 416 and tiny.net.channels == 3
    convs = {}
    hooks = [tiny.layers[i].register_forward_hook(lambda m, a, out, i=i: convs.__setitem__(i, out.shape))
             for i in (15, 22)]
    tiny.train()
    with torch.no_grad():
        raw = tiny(torch.rand(1, 3, 416, 416))
    for h in hooks:
        h.remove()
    assert convs == {15: (1, 255, 13, 13), 22: (1, 255, 26, 26)}  # heads 255x13x13 and 255x26x26
    assert [tuple(r.shape) for r in raw] == [(1, 3, 13, 13, 85), (1, 3, 26, 26, 85)]


def test_stable_state_dict_keys(tiny):
    keys = set(tiny.state_dict())
    assert {"layers.0.conv.weight", "layers.0.bn.weight", "layers.0.bn.bias", "layers.0.bn.running_mean",
            "layers.0.bn.running_var", "layers.15.conv.weight", "layers.15.conv.bias"} <= keys
    assert not any("anchors" in k for k in keys)
    assert "layers.15.conv.bias" in keys and "layers.14.conv.bias" not in keys  # BN convs have no bias


def test_yolo_layer_attributes(tiny):
    heads = tiny.yolo_layers
    assert len(heads) == 2
    assert heads[0] is tiny.layers[16] and heads[1] is tiny.layers[23]
    assert heads[0].anchors.tolist() == [[81, 82], [135, 169], [344, 319]]
    assert heads[1].anchors.tolist() == [[10, 14], [23, 27], [37, 58]]
    assert heads[0].all_anchors.shape == (6, 2) and heads[0].anchors.dtype == torch.float32
    assert heads[0].mask == (3, 4, 5) and heads[1].mask == (0, 1, 2)
    assert heads[0].num_classes == 80 and heads[0].ignore_thresh == 0.7 and heads[0].truth_thresh == 1.0
    assert heads[0].scale_x_y == 1.0
    assert "[yolo]" in tiny.cfg_text and tiny.cfg_text.count("classes=80") == 2


def test_eval_output_is_decoded_train_output_head_major(tiny):
    x = torch.rand(2, 3, 320, 608)  # non-square
    tiny.train()
    with torch.no_grad():
        assert [tuple(r.shape) for r in tiny(x)] == [(2, 3, 10, 19, 85), (2, 3, 20, 38, 85)]
    # same BN statistics for both: eval mode, raw taken from what the heads receive
    tiny.eval()
    seen = []
    hooks = [h.register_forward_pre_hook(lambda m, args: seen.append(m.raw(args[0]))) for h in tiny.yolo_layers]
    with torch.no_grad():
        out = tiny(x)
    for h in hooks:
        h.remove()
    raw = seen
    assert [tuple(r.shape) for r in raw] == [(2, 3, 10, 19, 85), (2, 3, 20, 38, 85)]
    assert out.shape == (2, 3 * 10 * 19 + 3 * 20 * 38, 85)
    # row r of head 0 is anchor a, y, x in this order
    n0 = 3 * 10 * 19
    a, yy, xx = 2, 7, 11
    row = out[1, a * 190 + yy * 19 + xx]
    t = raw[0][1, a, yy, xx]
    anchor = tiny.yolo_layers[0].anchors[a]
    expect_cx = (1 / (1 + math.exp(-t[0].item())) + xx) * 608 / 19
    expect_cy = (1 / (1 + math.exp(-t[1].item())) + yy) * 320 / 10
    assert row[0].item() == pytest.approx(expect_cx, rel=1e-5)
    assert row[1].item() == pytest.approx(expect_cy, rel=1e-5)
    assert row[2].item() == pytest.approx(math.exp(t[2].item()) * anchor[0].item(), rel=1e-5)
    assert row[3].item() == pytest.approx(math.exp(t[3].item()) * anchor[1].item(), rel=1e-5)
    assert torch.allclose(row[4:], torch.sigmoid(t[4:]), atol=1e-6)
    second = out[0, n0 + 1 * 760 + 3 * 38 + 5]  # head 1, anchor 1, y 3, x 5
    t1 = raw[1][0, 1, 3, 5]
    assert second[0].item() == pytest.approx((torch.sigmoid(t1[0]).item() + 5) * 16, rel=1e-5)


def test_input_must_be_multiple_of_stride(tiny):
    tiny.eval()
    with pytest.raises(ValueError, match="multiple of 32"):
        tiny(torch.rand(1, 3, 100, 96))
    with pytest.raises(ValueError, match=r"expected input \(N, 3, H, W\)"):
        tiny(torch.rand(1, 1, 64, 64))


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = detkit.build_model("yolov4-tiny", num_classes=2)
    model.train()
    raw = model(torch.rand(2, 3, 64, 96))
    sum(r.float().square().mean() for r in raw).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []


def test_num_classes_builds_patched_model():
    model = detkit.build_model("yolov3-tiny", num_classes=3)
    assert model.num_classes == 3 and all(h.num_classes == 3 for h in model.yolo_layers)
    assert model.layers[15].conv.out_channels == 24 and model.layers[22].conv.out_channels == 24
    assert model.cfg_text.count("classes=3") == 2 and model.cfg_text.count("filters=24") == 2
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 3 * 4 + 3 * 16, 8)


def test_build_model_from_text_path_and_name(repo):
    text = (repo / "cfg" / "yolov3-tiny.cfg").read_text()
    for arg in (text, repo / "cfg" / "yolov3-tiny.cfg", str(repo / "cfg" / "yolov3-tiny.cfg"), "yolov3-tiny"):
        assert len(detkit.build_model(arg).layers) == 24
    with pytest.raises(CfgError):
        detkit.build_model(repo / "cfg" / "missing.cfg")


def test_yolov3_and_yolov4_tiny_build():
    v3 = detkit.build_model("yolov3")
    assert len(v3.layers) == 107 and len(v3.yolo_layers) == 3
    assert sum(p.numel() for p in v3.parameters()) == 61_949_149
    assert (v3.net.width, v3.net.height, v3.net.batch) == (608, 608, 64)  # training header as shipped
    shapes = infer_shapes(v3.spec, (3, 416, 416))
    assert [shapes[i] for i in (81, 93, 105)] == [(255, 13, 13), (255, 26, 26), (255, 52, 52)]
    v4 = detkit.build_model("yolov4-tiny")
    assert len(v4.layers) == 38 and v4.yolo_layers[0].scale_x_y == 1.05
    assert v4.yolo_layers[1].mask == (1, 2, 3)


def _maxpool_reference(x: torch.Tensor, size: int, stride: int, padding: int) -> torch.Tensor:
    """Plain loop of darknet's maxpool: window origin at -padding//2, cells outside are skipped."""
    n, c, h, w = x.shape
    oh = (h + padding - size) // stride + 1
    ow = (w + padding - size) // stride + 1
    off = -(padding // 2)
    out = torch.empty(n, c, oh, ow)
    for i in range(oh):
        for j in range(ow):
            best = torch.full((n, c), -math.inf)
            for di in range(size):
                for dj in range(size):
                    y, xx = off + i * stride + di, off + j * stride + dj
                    if 0 <= y < h and 0 <= xx < w:
                        best = torch.maximum(best, x[:, :, y, xx])
            out[:, :, i, j] = best
    return out


@pytest.mark.parametrize("size, stride, padding, hw", [
    (2, 1, 1, (5, 4)),  # yolov3-tiny layer 11: keeps the size, extra pixel right/bottom
    (2, 2, 1, (6, 6)),
    (3, 1, 2, (5, 5)),
    (3, 2, 2, (7, 6)),
    (5, 1, 4, (6, 5)),
])
def test_maxpool_matches_darknet_rule(size, stride, padding, hw):
    x = -torch.rand(2, 3, *hw) - 1.0  # all negative: zero padding would show up as 0
    spec = MaxPoolSpec(index=0, line=1, source="t", size=size, stride=stride, padding=padding)
    got = MaxPoolLayer(spec)(x)
    assert torch.equal(got, _maxpool_reference(x, size, stride, padding))
    assert got.max() < 0


def test_route_groups_take_group_slice():
    a = torch.arange(2 * 6 * 2 * 2, dtype=torch.float32).view(2, 6, 2, 2)
    b = torch.rand(2, 4, 2, 2)
    layer = RouteLayer(RouteSpec(index=5, line=1, source="t", layers=(0, 1), groups=2, group_id=1))
    assert torch.equal(layer([a, b]), torch.cat([a[:, 3:], b[:, 2:]], dim=1))
    plain = RouteLayer(RouteSpec(index=5, line=1, source="t", layers=(0, 1)))
    assert torch.equal(plain([a, b]), torch.cat([a, b], dim=1))


def _decode_reference(raw, anchors, stride_xy, s):
    n, a, h, w, d = raw.shape
    out = torch.empty(n, a * h * w, d)
    sig = lambda v: 1.0 / (1.0 + math.exp(-v))  # noqa: E731
    for b in range(n):
        r = 0
        for k in range(a):
            for y in range(h):
                for x in range(w):
                    t = raw[b, k, y, x].tolist()
                    out[b, r, 0] = (sig(t[0]) * s - (s - 1) / 2 + x) * stride_xy[0]
                    out[b, r, 1] = (sig(t[1]) * s - (s - 1) / 2 + y) * stride_xy[1]
                    out[b, r, 2] = math.exp(t[2]) * anchors[k][0]
                    out[b, r, 3] = math.exp(t[3]) * anchors[k][1]
                    out[b, r, 4:] = torch.tensor([sig(v) for v in t[4:]])
                    r += 1
    return out


@pytest.mark.parametrize("scale_x_y", [1.0, 1.05, 2.0])
def test_decode_head_matches_formula(scale_x_y):
    torch.manual_seed(1)
    raw = torch.randn(2, 3, 4, 5, 7) * 2
    anchors = [[10.0, 14.0], [23.0, 27.0], [37.0, 58.0]]
    got = decode_head(raw, torch.tensor(anchors), (8.0, 16.0), scale_x_y)
    assert got.dtype == torch.float32 and got.shape == (2, 60, 7)
    assert torch.allclose(got, _decode_reference(raw, anchors, (8.0, 16.0), scale_x_y), rtol=1e-5, atol=1e-5)
    half = decode_head(raw.to(torch.bfloat16), torch.tensor(anchors), (8.0, 16.0), scale_x_y)
    assert half.dtype == torch.float32
    with pytest.raises(ValueError):
        decode_head(raw, torch.tensor(anchors[:2]), (8.0, 16.0), scale_x_y)


def test_yolo_layer_measures_stride():
    model = detkit.build_model("yolov3-tiny", num_classes=1)
    head: YoloLayer = model.yolo_layers[0]
    head.eval()
    x = torch.zeros(1, 18, 3, 5)  # all-zero logits: centre of each cell
    out = head(x, (96, 160))
    assert out[0, 0, :2].tolist() == [16.0, 16.0]  # stride 32 both ways, sigmoid(0) = 0.5
    assert out[0, 1, 0].item() == 48.0


def test_import_detkit_is_cheap_and_side_effect_free():
    code = ("import sys, detkit; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert callable(detkit.build_model); assert 'torch' in sys.modules; "
            "assert set(['build_model','load_darknet_weights','save_darknet_weights','DarknetModel']) <= set(dir(detkit))")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_channels_last_default_and_nchw_give_same_outputs():
    torch.manual_seed(0)
    model = detkit.build_model("yolov3-tiny", num_classes=2)
    assert model.channels_last  # default: NHWC parameters (faster CPU forward)
    assert model.layers[0].conv.weight.is_contiguous(memory_format=torch.channels_last)
    model.eval()
    x = torch.rand(1, 3, 96, 64)
    with torch.no_grad():
        nhwc = model(x)
        model.to(memory_format=torch.contiguous_format)
        assert not model.channels_last
        nchw = model(x)
    assert torch.allclose(nhwc, nchw, rtol=1e-4, atol=1e-3)
    assert list(model.state_dict()) == list(detkit.build_model("yolov3-tiny", num_classes=2).state_dict())


def test_inference_bn_folding_matches_unfused_and_tracks_weight_changes():
    torch.manual_seed(0)
    model = detkit.build_model("yolov3-tiny", num_classes=2)
    with torch.no_grad():
        for _, conv in model.conv_layers:
            if conv.bn is not None:
                conv.bn.running_var.uniform_(0.5, 2.0)
                conv.bn.running_mean.uniform_(-0.2, 0.2)
    model.eval()
    x = torch.rand(1, 3, 64, 64)

    def unfused():  # with grad enabled the plain conv -> BN path runs
        with torch.enable_grad():
            return model(x).detach()

    with torch.no_grad():
        fused = model(x)
    assert torch.allclose(fused, unfused(), rtol=1e-4, atol=1e-3)
    with torch.no_grad():
        model.layers[0].bn.running_var.mul_(3.0)  # in-place change, as weight loading does
        model.layers[2].conv.weight.mul_(0.5)
    with torch.inference_mode():
        changed = model(x)
    assert not torch.allclose(changed, fused, atol=1e-3)
    assert torch.allclose(changed, unfused(), rtol=1e-4, atol=1e-3)
