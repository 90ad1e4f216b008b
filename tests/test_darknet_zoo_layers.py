"""Hand-made checks of the zoo layer types against plain loops written from darknet's C code
(src/blas.c reorg_cpu / shortcut_multilayer_cpu, sam_layer.c, scale_channels_layer.c,
maxpool_layer.c forward_local_avgpool_layer, yolo_layer.c get_yolo_box, region_layer.c
get_region_box, activations.h)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import detkit
from detkit.darknet.layers import ELEMENTWISE, make_activation, reorg3d, reorg_old
from detkit.yolo.decode import decode_head, decode_region


def reorg_cpu(x: np.ndarray, w: int, h: int, c: int, batch: int, stride: int, forward: int) -> np.ndarray:
    """darknet's blas.c reorg_cpu on a flat buffer, line by line."""
    out = np.zeros(x.size, dtype=x.dtype)
    in_c = c // (stride * stride)
    for b in range(batch):
        for k in range(c):
            for j in range(h):
                for i in range(w):
                    in_index = i + w * (j + h * (k + c * b))
                    c2 = k % in_c
                    offset = k // in_c
                    w2 = i * stride + offset % stride
                    h2 = j * stride + offset // stride
                    out_index = w2 + w * stride * (h2 + h * stride * (c2 + in_c * b))
                    if forward:
                        out[out_index] = x[in_index]
                    else:
                        out[in_index] = x[out_index]
    return out


@pytest.mark.parametrize("c, h, w, s", [(8, 4, 6, 2), (18, 6, 3, 3), (4, 2, 2, 2)])
def test_reorg_old_is_darknets_reorg_cpu_on_the_input_dims(c, h, w, s):
    x = np.random.default_rng(0).random((2, c, h, w), dtype=np.float32)
    # [reorg] (reorg_old_layer.c): reorg_cpu(input, l.w, l.h, l.c, batch, stride, 0, output)
    want = reorg_cpu(x.reshape(-1), w, h, c, 2, s, 0).reshape(2, c * s * s, h // s, w // s)
    got = reorg_old(torch.from_numpy(x), s).numpy()
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("c, h, w, s", [(3, 4, 6, 2), (2, 6, 9, 3)])
def test_reorg3d_is_darknets_reorg_cpu_on_the_output_dims(c, h, w, s):
    x = np.random.default_rng(1).random((2, c, h, w), dtype=np.float32)
    # [reorg3d] (reorg_layer.c): reorg_cpu(input, l.out_w, l.out_h, l.out_c, batch, stride, 0, output)
    want = reorg_cpu(x.reshape(-1), w // s, h // s, c * s * s, 2, s, 0).reshape(2, c * s * s, h // s, w // s)
    got = reorg3d(torch.from_numpy(x), s).numpy()
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(reorg3d(torch.from_numpy(got), s, reverse=True).numpy(), x)


def shortcut_multilayer_cpu(inp: np.ndarray, adds: list[np.ndarray], weights: np.ndarray | None,
                            norm: str) -> np.ndarray:
    """darknet's blas.c shortcut_multilayer_cpu, one element at a time (batch 1)."""
    src_outputs = inp.size
    n = len(adds)
    nweights = 0 if weights is None else weights.size
    layer_step = nweights // (n + 1) if nweights else 0
    step = src_outputs // layer_step if nweights else 0
    flat_in = inp.reshape(-1)
    flat_adds = [a.reshape(-1) for a in adds]
    out = np.zeros(src_outputs, dtype=np.float64)
    relu = lambda v: v if v > 0 else 0.0  # noqa: E731
    for src_i in range(src_outputs):
        total, max_val = 1.0, -math.inf
        if weights is not None and norm != "none":
            if norm == "softmax":
                for i in range(n + 1):
                    max_val = max(max_val, weights[src_i // step + i * layer_step])
            total = 0.0001
            for i in range(n + 1):
                wv = weights[src_i // step + i * layer_step]
                total += relu(wv) if norm == "relu" else math.exp(wv - max_val)

        def weight(i: int) -> float:
            wv = float(weights[src_i // step + i * layer_step])
            if norm == "relu":
                return relu(wv) / total
            if norm == "softmax":
                return math.exp(wv - max_val) / total
            return wv

        out[src_i] = flat_in[src_i] * (weight(0) if weights is not None else 1.0)
        for i, add in enumerate(flat_adds):
            if src_i < add.size:
                out[src_i] += add[src_i] * (weight(i + 1) if weights is not None else 1.0)
    return out.reshape(inp.shape)


def _net(body: str, c: int = 3, size: int = 4) -> str:
    return f"[net]\nwidth={size}\nheight={size}\nchannels={c}\n" + body


@pytest.mark.parametrize("wtype, norm", [("none", "none"), ("per_feature", "none"), ("per_feature", "relu"),
                                         ("per_channel", "softmax"), ("per_channel", "relu")])
@pytest.mark.parametrize("other_filters", [2, 4, 6])  # fewer, same, more channels than the previous output
def test_shortcut_matches_darknet_loop(wtype, norm, other_filters):
    cfg = _net(f"[convolutional]\nfilters={other_filters}\nsize=1\nactivation=linear\n"
               "[convolutional]\nfilters=4\nsize=1\nactivation=linear\n"
               f"[shortcut]\nfrom=-2\nactivation=linear\nweights_type={wtype}\nweights_normalization={norm}\n")
    model = detkit.build_model(cfg).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, m in model.conv_layers:
            m.conv.weight.copy_(torch.randn(m.conv.weight.shape, generator=g))
        sc = model.layers[2]
        if sc.weight is not None:
            sc.weight.copy_(torch.randn(sc.weight.shape, generator=g))
        x = torch.rand(1, 3, 4, 4, generator=g)
        a = model.layers[0](x)
        b = model.layers[1](a)
        got = sc(b, [a]).numpy()
    weights = None if sc.weight is None else sc.weight.detach().numpy().reshape(-1).astype(np.float64)
    want = shortcut_multilayer_cpu(b.numpy()[0].astype(np.float64), [a.numpy()[0].astype(np.float64)], weights, norm)
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6)


def test_weighted_shortcut_weights_round_trip_in_darknet_order(tmp_path):
    cfg = _net("[convolutional]\nfilters=4\nsize=1\n[convolutional]\nfilters=4\nsize=1\nbatch_normalize=1\n"
               "[shortcut]\nfrom=-2,-1\nweights_type=per_channel\nweights_normalization=softmax\n"
               "[convolutional]\nfilters=2\nsize=1\n")
    model = detkit.build_model(cfg)
    with torch.no_grad():
        model.layers[2].weight.copy_(torch.arange(12, dtype=torch.float32).view(3, 4))
    path = tmp_path / "w.weights"
    detkit.save_darknet_weights(model, path)
    data = np.fromfile(path, dtype="<f4", offset=20)
    conv0 = 4 + 4 * 3
    conv1 = 4 * 4 + 4 * 4
    # (n + 1) * C shortcut weights sit between conv 1 and conv 3, input-major (darknet's l.weights)
    np.testing.assert_array_equal(data[conv0 + conv1:conv0 + conv1 + 12], np.arange(12))
    assert data.size == conv0 + conv1 + 12 + (2 + 2 * 4)
    other = detkit.build_model(cfg)
    detkit.load_darknet_weights(other, path)
    detkit.save_darknet_weights(other, tmp_path / "again.weights")
    assert (tmp_path / "again.weights").read_bytes() == path.read_bytes()


def test_shared_conv_uses_the_owners_tensors_and_stores_nothing(tmp_path):
    cfg = _net("[convolutional]\nfilters=3\nsize=3\npad=1\nbatch_normalize=1\n"
               "[convolutional]\nfilters=3\nsize=3\npad=1\nbatch_normalize=1\nshare_index=0\ndilation=2\n")
    model = detkit.build_model(cfg)
    assert model.layers[1].conv.weight is model.layers[0].conv.weight
    assert model.layers[1].bn is model.layers[0].bn
    assert [i for i, _ in model.conv_layers] == [0]
    path = tmp_path / "s.weights"
    detkit.save_darknet_weights(model, path)
    assert path.stat().st_size == 20 + 4 * (4 * 3 + 3 * 3 * 9)
    assert model.layers[1].conv.dilation == (2, 2) and model.layers[1].conv.padding == (2, 2)


def test_sam_and_scale_channels_match_darknet_loops():
    rng = np.random.default_rng(2)
    cfg = _net("[convolutional]\nfilters=4\nsize=1\nactivation=linear\n"
               "[convolutional]\nfilters=4\nsize=1\nactivation=logistic\n[sam]\nfrom=-2\n"
               "[avgpool]\n[convolutional]\nfilters=4\nsize=1\nactivation=logistic\n"
               "[scale_channels]\nfrom=-3\n")
    model = detkit.build_model(cfg).eval()
    x = torch.from_numpy(rng.random((1, 3, 4, 4), dtype=np.float32))
    with torch.no_grad():
        a = model.layers[0](x)
        b = model.layers[1](a)
        sam = model.layers[2](b, [a])
        pooled = model.layers[3](sam)
        s = model.layers[4](pooled)
        out = model.layers[5](s, [sam])
    # sam_layer.c: output[i] = input[i] * from_output[i]
    np.testing.assert_allclose(sam.numpy().reshape(-1), b.numpy().reshape(-1) * a.numpy().reshape(-1), rtol=1e-6)
    # avgpool_layer.c: mean over h*w per channel
    np.testing.assert_allclose(pooled.numpy().reshape(-1), sam.numpy()[0].reshape(4, -1).mean(1), rtol=1e-6)
    # scale_channels_layer.c: output[i] = input[i / channel_size] * from_output[i]
    flat_from, flat_in = sam.numpy().reshape(-1), s.numpy().reshape(-1)
    want = np.array([flat_in[i // 16] * flat_from[i] for i in range(flat_from.size)])
    np.testing.assert_allclose(out.numpy().reshape(-1), want, rtol=1e-6)


def local_avgpool_loop(x: np.ndarray, size: int, stride: int, pad: int) -> np.ndarray:
    """maxpool_layer.c forward_local_avgpool_layer (batch 1)."""
    c, h, w = x.shape
    out_h, out_w = (h + pad - size) // stride + 1, (w + pad - size) // stride + 1
    out = np.zeros((c, out_h, out_w))
    off = -pad // 2 if pad >= 0 else 0
    off = -(pad // 2)
    for k in range(c):
        for i in range(out_h):
            for j in range(out_w):
                vals = [x[k, off + i * stride + n, off + j * stride + m]
                        for n in range(size) for m in range(size)
                        if 0 <= off + i * stride + n < h and 0 <= off + j * stride + m < w]
                out[k, i, j] = sum(vals) / len(vals)
    return out


@pytest.mark.parametrize("size, stride", [(3, 1), (2, 2), (3, 2)])
def test_local_avgpool_matches_darknet_loop(size, stride):
    x = np.random.default_rng(4).random((2, 5, 7), dtype=np.float32)
    model = detkit.build_model(f"[net]\nwidth=7\nheight=5\nchannels=2\n[local_avgpool]\nsize={size}\nstride={stride}\n")
    with torch.no_grad():
        got = model.layers[0](torch.from_numpy(x[None]))[0].numpy()
    np.testing.assert_allclose(got, local_avgpool_loop(x, size, stride, size - 1), rtol=1e-6)


def get_yolo_box(x, biases, n, i, j, lw, lh, w, h, new_coords):
    """yolo_layer.c get_yolo_box on one cell's (already activated) entries."""
    if new_coords:
        return ((i + x[0]) / lw, (j + x[1]) / lh, x[2] * x[2] * 4 * biases[2 * n] / w,
                x[3] * x[3] * 4 * biases[2 * n + 1] / h)
    return ((i + x[0]) / lw, (j + x[1]) / lh, math.exp(x[2]) * biases[2 * n] / w, math.exp(x[3]) * biases[2 * n + 1] / h)


@pytest.mark.parametrize("new_coords, sxy", [(True, 2.0), (True, 1.0), (False, 1.05)])
def test_yolo_decode_matches_darknet(new_coords, sxy):
    rng = np.random.default_rng(5)
    a, h, w, c = 3, 4, 5, 2
    raw = rng.random((1, a, h, w, 5 + c)).astype(np.float32)  # new_coords: the conv's logistic output
    if not new_coords:
        raw = (raw - 0.5) * 6
    anchors = np.array([[12, 16], [19, 36], [40, 28]], dtype=np.float32)
    netw, neth = w * 32, h * 32
    got = decode_head(torch.from_numpy(raw), torch.from_numpy(anchors), (32.0, 32.0), sxy, new_coords).numpy()
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    for n in range(a):
        for j in range(h):
            for i in range(w):
                t = [float(v) for v in raw[0, n, j, i]]
                # forward_yolo_layer: logistic on x, y, obj, classes unless new_coords; then scale_x_y
                act = t[:] if new_coords else [sig(v) for v in t[:2]] + t[2:4] + [sig(v) for v in t[4:]]
                act[0] = act[0] * sxy - 0.5 * (sxy - 1)
                act[1] = act[1] * sxy - 0.5 * (sxy - 1)
                bx = get_yolo_box(act, anchors.reshape(-1), n, i, j, w, h, netw, neth, new_coords)
                row = got[0, n * h * w + j * w + i]
                np.testing.assert_allclose(row[:4] / [netw, neth, netw, neth], bx, rtol=2e-5, atol=1e-6)
                np.testing.assert_allclose(row[4:], act[4:], rtol=2e-5, atol=1e-7)


def test_region_decode_matches_darknet():
    rng = np.random.default_rng(6)
    a, h, w, c = 2, 3, 4, 3
    raw = ((rng.random((1, a, h, w, 5 + c)) - 0.5) * 4).astype(np.float32)
    grid = np.array([[1.08, 1.19], [3.42, 4.41]], dtype=np.float32)
    got = decode_region(torch.from_numpy(raw), torch.from_numpy(grid), (32.0, 32.0), softmax=True).numpy()
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    for n in range(a):
        for j in range(h):
            for i in range(w):
                t = raw[0, n, j, i].astype(np.float64)
                # region_layer.c get_region_box (DOABS): normalised to the grid
                box = ((i + sig(t[0])) / w, (j + sig(t[1])) / h, math.exp(t[2]) * grid[n, 0] / w,
                       math.exp(t[3]) * grid[n, 1] / h)
                e = np.exp(t[5:] - t[5:].max())
                row = got[0, n * h * w + j * w + i]
                np.testing.assert_allclose(row[:4] / [w * 32, h * 32, w * 32, h * 32], box, rtol=2e-5)
                np.testing.assert_allclose(row[4], sig(t[4]), rtol=2e-5)
                np.testing.assert_allclose(row[5:], e / e.sum(), rtol=2e-5)


DARKNET_ACTIVATIONS = {  # activations.h, one value at a time
    "elu": lambda x: x if x >= 0 else math.exp(x) - 1,
    "selu": lambda x: 1.0507 * x if x >= 0 else 1.0507 * 1.6732 * (math.exp(x) - 1),
    "relie": lambda x: x if x > 0 else 0.01 * x,
    "ramp": lambda x: x * (x > 0) + 0.1 * x,
    "tanh": lambda x: 2 / (1 + math.exp(-2 * x)) - 1,
    "plse": lambda x: 0.01 * (x + 4) if x < -4 else 0.01 * (x - 4) + 1 if x > 4 else 0.125 * x + 0.5,
    "lhtan": lambda x: 0.001 * x if x < 0 else 0.001 * (x - 1) + 1 if x > 1 else x,
    "stair": lambda x: math.floor(x / 2) if math.floor(x) % 2 == 0 else x - math.floor(x) + math.floor(x / 2),
    "hardtan": lambda x: -1 if x < -1 else 1 if x > 1 else x,
    "loggy": lambda x: 2 / (1 + math.exp(-x)) - 1,
    "relu6": lambda x: min(max(x, 0), 6),
    "hard_mish": lambda x: x if x > 0 else x * x / 2 + x if x > -2 else 0,
    "gelu": lambda x: 0.5 * x * (1 + math.tanh(0.797885 * x + 0.035677 * x ** 3)),
    "revleaky": lambda x: x if x > 0 else 0.1 * x,
    "mish": lambda x: x * math.tanh(math.log1p(math.exp(x)) if x < 20 else x),
    "swish": lambda x: x / (1 + math.exp(-x)),
}


@pytest.mark.parametrize("name", sorted(DARKNET_ACTIVATIONS))
def test_activations_match_darknet(name):
    xs = np.linspace(-8, 8, 161, dtype=np.float32)
    got = make_activation(name)(torch.from_numpy(xs.copy())).numpy()
    want = np.array([DARKNET_ACTIVATIONS[name](float(v)) for v in xs])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert set(ELEMENTWISE) <= set(DARKNET_ACTIVATIONS)


def test_stride_x_stride_y_conv_and_maxpool():
    model = detkit.build_model(_net("[convolutional]\nfilters=2\nsize=3\npad=1\nstride_x=2\nstride_y=1\n"
                                    "[maxpool]\nsize=2\nstride_x=1\nstride_y=2\n", size=8))
    model.eval()
    with torch.no_grad():
        assert model.layers[0](torch.rand(1, 3, 8, 8)).shape == (1, 2, 8, 4)
        out = model(torch.rand(1, 3, 8, 8)) if model.yolo_layers else None
    assert out is None


def test_dropout_is_identity_at_inference():
    model = detkit.build_model(_net("[dropout]\nprobability=.4\n")).eval()
    x = torch.rand(1, 3, 4, 4)
    assert torch.equal(model.layers[0](x), x)
