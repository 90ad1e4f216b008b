"""The zoo differential harness shared by ``tests/test_zoo.py`` and ``tools/zoo_table.py``.

For one darknet cfg: build it with detkit at a small input size, give it fixed-seed random weights,
write them with detkit's writer, and compare detkit's eval-mode forward with OpenCV DNN's darknet
importer (or darknet itself, through ``tools/zoo_darknet.py``) on the decoded head outputs:
box (normalised to the input), objectness, class score = objectness * class probability.

The rule (issue 15): max difference <= max(1e-4, 4 * the network's own float32-vs-float64
difference on the same input), per cfg.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from detkit.darknet.cfg import parse_cfg
from detkit.darknet.cfg_edit import CfgEdit, apply_edits
from detkit.darknet.layers import ShortcutLayer
from detkit.darknet.model import DarknetModel, build_model
from detkit.darknet.weights import save_darknet_weights

ABS_TOL = 1e-4
NOISE_FACTOR = 4.0


def zoo_dir(shared: Path) -> Path:
    return shared / "darknet_zoo"


def detection_cfgs(shared: Path) -> list[str]:
    """File names of the detection cfgs in ``shared/darknet_zoo`` (its index.json), sorted."""
    index = json.loads((zoo_dir(shared) / "index.json").read_text())
    return sorted(name for name, meta in index.items() if meta.get("detection"))


def reference_cfg_text(text: str, size: int | None) -> str:
    """The cfg with ``[net] width=height=size`` (when given) and ``thresh=0`` in every head, so the
    reference zeroes no class score. Every other byte stays."""
    sections = parse_cfg(text)
    edits: list[CfgEdit] = []
    for sec in sections:
        keys: list[tuple[str, str]] = []
        if sec.type == "net" and size is not None:
            keys = [("width", str(size)), ("height", str(size))]
        elif sec.type in ("yolo", "region"):
            keys = [("thresh", "0")]
        for key, value in keys:
            opts = sec.all(key)
            if not opts:
                edits.append(CfgEdit(sec.line, key, None, value, sec.type))
            for opt in opts:
                edits.append(CfgEdit(opt.line, key, opt.value, value, sec.type))
    edits.sort(key=lambda e: e.line)
    return apply_edits(text, edits)


def randomise(model: DarknetModel, seed: int) -> None:
    """Random weights that keep activations O(1) through the whole network (He-scaled convs,
    random batch-norm statistics, random weighted-shortcut weights, damped head convs)."""
    g = torch.Generator().manual_seed(seed)
    head_inputs = {i - 1 for i, m in enumerate(model.layers) if m in model.yolo_layers}
    with torch.no_grad():
        for i, layer in model.conv_layers:
            w = layer.conv.weight
            fan_in = w.shape[1] * w.shape[2] * w.shape[3]
            w.copy_(torch.randn(w.shape, generator=g) * math.sqrt(2.0 / fan_in))
            if layer.conv.bias is not None:
                layer.conv.bias.copy_(torch.rand(layer.conv.bias.shape, generator=g) - 0.5)
            if i in head_inputs:  # realistic head outputs: boxes within a few image sizes
                w.mul_(0.25)
            if layer.bn is not None:
                n = layer.bn.num_features
                layer.bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
                layer.bn.bias.copy_((torch.rand(n, generator=g) - 0.5) * 0.4)
                layer.bn.running_mean.copy_((torch.rand(n, generator=g) - 0.5) * 0.4)
                layer.bn.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
        for m in model.layers:
            if isinstance(m, ShortcutLayer) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.25)


@torch.no_grad()
def calibrate(model: DarknetModel, blob: np.ndarray) -> None:
    """Rescale each conv (in order, on this input) so its pre-activation output has std 1 (0.5 for
    the convs feeding a head): deep residual nets with random weights otherwise grow to 1e4 and
    overflow ``exp`` in the heads. Batch-normalised convs get their BN scale/shift rescaled."""
    from detkit.darknet.layers import ConvLayer, RouteLayer, YoloLayer

    model.eval()
    head_inputs = {i - 1 for i, m in enumerate(model.layers) if m in model.yolo_layers}
    done: set[int] = set()
    x = torch.from_numpy(blob)
    saved: dict[int, torch.Tensor] = {}
    for i, layer in enumerate(model.layers):
        if isinstance(layer, RouteLayer):
            x = layer([saved[j] for j in layer.sources])
        elif isinstance(layer, ShortcutLayer):
            x = layer(x, [saved[j] for j in layer.sources])
        elif isinstance(layer, YoloLayer):
            pass
        elif isinstance(layer, ConvLayer):
            if id(layer.conv) not in done:
                done.add(id(layer.conv))
                y = layer.conv(x)
                if layer.bn is not None:
                    y = layer.bn(y)
                target = 0.5 if i in head_inputs else 1.0
                scale = target / max(float(y.std()), 1e-6)
                if layer.bn is not None:
                    layer.bn.weight.mul_(scale)
                    layer.bn.bias.mul_(scale)
                else:
                    layer.conv.weight.mul_(scale)
                    layer.conv.bias.mul_(scale)
            x = layer(x)
        else:
            x = layer(x)
        saved[i] = x


def input_blob(size: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).random((1, 3, size, size), dtype=np.float32)


def head_tables(model: DarknetModel, out: np.ndarray, in_hw: tuple[int, int]) -> list[np.ndarray]:
    """detkit's eval output ``(R, 5 + C)`` -> one ``(H*W*A, 5 + C)`` table per head in the reference's
    layout: rows y, x, anchor; box normalised to the input; class scores times objectness."""
    tables, start = [], 0
    in_h, in_w = in_hw
    shapes = _head_grids(model, in_hw)
    for head, (h, w) in zip(model.yolo_layers, shapes):
        a = head.num_anchors
        n = a * h * w
        t = out[start:start + n].reshape(a, h, w, -1).transpose(1, 2, 0, 3).reshape(n, -1).astype(np.float64)
        start += n
        t[:, :4] /= np.array([in_w, in_h, in_w, in_h])
        t[:, 5:] *= t[:, 4:5]
        tables.append(t)
    assert start == out.shape[0]
    return tables


def _head_grids(model: DarknetModel, in_hw: tuple[int, int]) -> list[tuple[int, int]]:
    from detkit.darknet.shapes import infer_shapes

    shapes = infer_shapes(model.spec, (model.spec.net.channels, in_hw[0], in_hw[1]))
    return [shapes[i][1:] for i, m in enumerate(model.layers) if m in model.yolo_layers]


def detkit_forward(model: DarknetModel, blob: np.ndarray, double: bool = False) -> list[np.ndarray]:
    model.eval()
    x = torch.from_numpy(blob)
    with torch.no_grad():
        if double:
            model.double()
            try:
                out = model(x.double())[0].numpy()
            finally:
                model.float()
        else:
            out = model(x)[0].numpy()
    return head_tables(model, out, blob.shape[2:])


@dataclass
class Comparison:
    """One cfg against one reference."""

    cfg: str
    reference: str
    max_diff: float = float("nan")
    noise: float = float("nan")
    per_head: list[float] = field(default_factory=list)
    error: str = ""

    @property
    def tolerance(self) -> float:
        return max(ABS_TOL, NOISE_FACTOR * self.noise)

    @property
    def ok(self) -> bool:
        return not self.error and self.max_diff <= self.tolerance


def max_difference(ours: list[np.ndarray], refs: list[np.ndarray],
                   nms_zeroed: list[bool] | None = None) -> list[float]:
    """Max abs difference per head. ``nms_zeroed[k]``: the reference ran NMS inside head ``k``
    (OpenCV's importer does for ``[region]``, threshold 0.4) and zeroed the class scores of the
    suppressed boxes; those cells (exactly 0 in the reference) are left out."""
    if len(ours) != len(refs):
        raise AssertionError(f"{len(ours)} heads in detkit, {len(refs)} in the reference")
    diffs = []
    for k, (a, b) in enumerate(zip(ours, refs)):
        if a.shape != b.shape:
            raise AssertionError(f"head shape {a.shape} in detkit, {b.shape} in the reference")
        d = np.abs(a - b)
        if nms_zeroed and nms_zeroed[k]:
            d[:, 5:][b[:, 5:] == 0] = 0.0
        diffs.append(float(d.max()))
    return diffs


def prepare(cfg_path: Path, size: int | None, workdir: Path, seed: int = 7) -> tuple[DarknetModel, Path, Path]:
    """Write the reference cfg copy and detkit's random weights; return (model, cfg copy, weights)."""
    text = reference_cfg_text(cfg_path.read_text(encoding="utf-8", errors="replace"), size)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg_copy = workdir / cfg_path.name
    cfg_copy.write_text(text, encoding="utf-8")
    torch.manual_seed(0)
    model = build_model(os.fspath(cfg_copy))
    randomise(model, seed)
    calibrate(model, input_blob(size or model.net.width))
    weights = workdir / (cfg_path.stem + ".weights")
    save_darknet_weights(model, weights)
    return model, cfg_copy, weights


def opencv_forward(cfg_copy: Path, weights: Path, blob: np.ndarray) -> list[np.ndarray]:
    import cv2

    net = cv2.dnn.readNetFromDarknet(os.fspath(cfg_copy), os.fspath(weights))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.enableWinograd(False)  # OpenCV's float32 Winograd 3x3 adds its own rounding (issue 15)
    net.setInput(blob)
    return [np.asarray(r, dtype=np.float64) for r in net.forward(net.getUnconnectedOutLayersNames())]


def compare_opencv(cfg_path: Path, size: int | None, workdir: Path) -> Comparison:
    cmp = Comparison(cfg_path.name, "opencv")
    try:
        model, cfg_copy, weights = prepare(cfg_path, size, workdir)
    except Exception as exc:  # noqa: BLE001 - reported per cfg
        cmp.error = f"detkit: {exc}"
        return cmp
    blob = input_blob(size or model.net.width)
    ours = detkit_forward(model, blob)
    exact = detkit_forward(model, blob, double=True)
    cmp.noise = max(max_difference(ours, exact))
    try:
        refs = opencv_forward(cfg_copy, weights, blob)
    except Exception as exc:  # noqa: BLE001
        cmp.error = f"opencv: {str(exc).strip().splitlines()[-1][:200]}"
        return cmp
    cmp.per_head = max_difference(ours, refs, [getattr(h, "kind", "yolo") == "region" for h in model.yolo_layers])
    cmp.max_diff = max(cmp.per_head)
    return cmp


#: darknet's batch norm: (x - mean) / sqrt(var + 1e-5) (blas.c normalize_cpu); detkit and OpenCV use
#: 1e-6. The darknet comparison runs detkit with darknet's constant so that it tests the semantics.
DARKNET_BN_EPS = 1e-5


def set_bn_eps(model: DarknetModel, eps: float) -> None:
    for _, layer in model.conv_layers:
        if layer.bn is not None:
            layer.bn.eps = eps


def darknet_forward(binary: Path, model: DarknetModel, cfg_copy: Path, weights: Path, blob: np.ndarray,
                    workdir: Path) -> list[np.ndarray]:
    """Run darknet (``tools/zoo_darknet_dump.c`` built against libdarknet) and turn every [yolo]
    layer's output buffer into the reference table layout (darknet's ``get_yolo_box`` formulas)."""
    import subprocess

    inp = workdir / (cfg_copy.stem + ".input.f32")
    out = workdir / (cfg_copy.stem + ".darknet.bin")
    blob[0].astype("<f4").tofile(inp)
    proc = subprocess.run([os.fspath(binary), os.fspath(cfg_copy), os.fspath(weights), os.fspath(inp),
                           os.fspath(out)], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"darknet exited {proc.returncode}: {tail[0][:200]}")
    raw = out.read_bytes()
    tables, pos = [], 0
    in_h, in_w = blob.shape[2:]
    for head in model.yolo_layers:
        ltype, w, h, n, classes, outputs = np.frombuffer(raw, "<i4", 6, pos)
        pos += 24
        o = np.frombuffer(raw, "<f4", outputs, pos).astype(np.float64).reshape(n, 5 + classes, h, w)
        pos += 4 * int(outputs)
        if getattr(head, "kind", "yolo") != "yolo":
            raise RuntimeError("darknet's CPU [region] output is flattened differently; compare with OpenCV")
        anchors = head.anchors.double().numpy()  # (A, 2) pixels
        cols = np.arange(w).reshape(1, 1, w)
        rows = np.arange(h).reshape(1, h, 1)
        t = np.empty((n, h, w, 5 + classes))
        t[..., 0] = (cols + o[:, 0]) / w
        t[..., 1] = (rows + o[:, 1]) / h
        if head.new_coords:
            t[..., 2] = o[:, 2] ** 2 * 4 * anchors[:, 0].reshape(-1, 1, 1) / in_w
            t[..., 3] = o[:, 3] ** 2 * 4 * anchors[:, 1].reshape(-1, 1, 1) / in_h
        else:
            t[..., 2] = np.exp(o[:, 2]) * anchors[:, 0].reshape(-1, 1, 1) / in_w
            t[..., 3] = np.exp(o[:, 3]) * anchors[:, 1].reshape(-1, 1, 1) / in_h
        t[..., 4] = o[:, 4]
        t[..., 5:] = np.moveaxis(o[:, 5:], 1, -1) * o[:, 4][..., None]
        tables.append(t.transpose(1, 2, 0, 3).reshape(h * w * n, 5 + classes))
    return tables


def compare_darknet(binary: Path, cfg_path: Path, size: int | None, workdir: Path) -> Comparison:
    cmp = Comparison(cfg_path.name, "darknet")
    try:
        model, cfg_copy, weights = prepare(cfg_path, size, workdir)
    except Exception as exc:  # noqa: BLE001 - reported per cfg
        cmp.error = f"detkit: {exc}"
        return cmp
    blob = input_blob(size or model.net.width)
    set_bn_eps(model, DARKNET_BN_EPS)
    ours = detkit_forward(model, blob)
    cmp.noise = max(max_difference(ours, detkit_forward(model, blob, double=True)))
    try:
        refs = darknet_forward(binary, model, cfg_copy, weights, blob, workdir)
    except Exception as exc:  # noqa: BLE001
        cmp.error = f"darknet: {exc}"
        return cmp
    cmp.per_head = max_difference(ours, refs)
    cmp.max_diff = max(cmp.per_head)
    return cmp
