"""Setup shared by several test files (plain functions; ``pythonpath = ["tests"]`` in pyproject.toml):
tiny darknet cfgs and random-weights models, the ``detect`` command line for them, a synthetic
training set with a miniature 2-head cfg, and a digest of a folder tree."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import cv2
import numpy as np
import torch

import detkit

if TYPE_CHECKING:
    from detkit.train.settings import TrainSettings


def tiny_cfg(classes: int = 2) -> str:
    """A one-head 64x64 darknet cfg (conv s2, maxpool, conv s2, 1x1 head conv, yolo with 3 anchors):
    an 8x8 grid, ``3 * (5 + classes)`` head filters."""
    return f"""[net]
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

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=leaky

[convolutional]
size=1
stride=1
pad=1
filters={3 * (5 + classes)}
activation=linear

[yolo]
mask = 0,1,2
anchors = 10,14,  23,27,  37,58
classes={classes}
num=3
"""


def write_tiny_model(folder: Path, *, cfg_classes: int = 2, num_classes: int | None = None, seed: int = 0,
                     head_scale: float = 1.0, head_bias: Sequence[float] | None = None,
                     zero_bias: bool = False) -> detkit.DarknetModel:
    """Write ``folder/tiny.cfg`` (:func:`tiny_cfg` with ``cfg_classes``) and ``folder/tiny.weights``:
    the model built for ``num_classes`` after ``torch.manual_seed(seed)``, its head conv weights
    multiplied by ``head_scale``, its head biases zeroed (``zero_bias``) and, per anchor, biases
    ``4:`` (objectness, class 0, class 1, ...) set to ``head_bias``. Returns the model."""
    (folder / "tiny.cfg").write_text(tiny_cfg(cfg_classes))
    torch.manual_seed(seed)
    model = detkit.build_model(folder / "tiny.cfg", num_classes=num_classes)
    head = model.layers[3].conv
    with torch.no_grad():
        head.weight.mul_(head_scale)
        bias = head.bias.view(3, 5 + model.num_classes)
        if zero_bias:
            bias.zero_()
        if head_bias is not None:
            bias[:, 4:] = torch.tensor(list(head_bias), dtype=bias.dtype)
    detkit.save_darknet_weights(model, folder / "tiny.weights")
    return model


def detect_argv(folder: Path, out: Path, *extra: str) -> list[str]:
    """``detkit detect`` arguments for the model :func:`write_tiny_model` wrote to ``folder`` (names
    ``folder/two.names``), 64x64 input."""
    return ["detect", "--cfg", str(folder / "tiny.cfg"), "--weights", str(folder / "tiny.weights"),
            "--names", str(folder / "two.names"), "--out", str(out), "--img-size", "64", *extra]


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file and marker of every folder (symlinks by target)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root) + "/"] = "dir"
        for f in filenames:
            p = Path(dirpath) / f
            rel = os.path.relpath(p, root)
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# two heads: 2x2 (stride 32, mask 3,4,5) and 4x4 (stride 16, mask 0,1,2) at 64x64
MINI_CFG = """[net]
batch=4
subdivisions=2
width=64
height=64
channels=3
momentum=0.9
decay=0.0005
learning_rate=0.01
burn_in=2
max_batches=100
policy=steps
steps=80,90
scales=.1,.1
hue=0
saturation=1
exposure=1

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

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=32
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=32
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=32
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
mask = 3,4,5
anchors = 6,6, 10,10, 14,14, 20,20, 28,28, 40,40
classes=2
num=6
jitter=0
ignore_thresh = .7
truth_thresh = 1
random=0

[route]
layers = -3

[convolutional]
batch_normalize=1
filters=16
size=1
stride=1
pad=1
activation=leaky

[upsample]
stride=2

[route]
layers = -1, 8

[convolutional]
batch_normalize=1
filters=32
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
mask = 0,1,2
anchors = 6,6, 10,10, 14,14, 20,20, 28,28, 40,40
classes=2
num=6
jitter=0
ignore_thresh = .7
truth_thresh = 1
random=0
"""


def make_dataset(root: Path, n_train: int = 8, n_val: int = 4, seed: int = 0, size: tuple[int, int] = (80, 64),
                 empty_every: int = 0) -> Path:
    """Synthetic 2-class set (0 = red square, 1 = blue disc) in darknet layout; returns obj.data.

    ``empty_every=k``: every k-th image has no object (and no label file content).
    """
    rng = np.random.default_rng(seed)
    img_dir, lab_dir = root / "images", root / "labels"
    img_dir.mkdir(parents=True), lab_dir.mkdir(parents=True)
    w, h = size
    lists = {"train": [], "val": []}
    for i in range(n_train + n_val):
        img = np.full((h, w, 3), 200, np.uint8)
        img += rng.integers(0, 20, size=(h, w, 3), dtype=np.uint8)
        lines = []
        placed: list[tuple[int, int, int]] = []
        if not (empty_every and i % empty_every == empty_every - 1):
            for _ in range(int(rng.integers(1, 3))):
                cls = int(rng.integers(0, 2))
                s = int(rng.integers(14, 30))
                x0, y0 = int(rng.integers(0, w - s)), int(rng.integers(0, h - s))
                if any(x0 < px + ps + 2 and px < x0 + s + 2 and y0 < py + ps + 2 and py < y0 + s + 2
                       for px, py, ps in placed):
                    continue  # objects never overlap: an occluded object could not be learnt
                placed.append((x0, y0, s))
                if cls == 0:
                    cv2.rectangle(img, (x0, y0), (x0 + s - 1, y0 + s - 1), (0, 0, 220), -1)  # BGR red
                else:
                    cv2.circle(img, (x0 + s // 2, y0 + s // 2), s // 2, (220, 0, 0), -1)  # BGR blue
                lines.append(f"{cls} {(x0 + s / 2) / w:.6f} {(y0 + s / 2) / h:.6f} {s / w:.6f} {s / h:.6f}")
        name = f"im{i:03d}"
        cv2.imwrite(str(img_dir / f"{name}.png"), img)
        (lab_dir / f"{name}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
        lists["train" if i < n_train else "val"].append(str(img_dir / f"{name}.png"))
    (root / "train.txt").write_text("\n".join(lists["train"]) + "\n")
    (root / "val.txt").write_text("\n".join(lists["val"] or lists["train"]) + "\n")
    (root / "obj.names").write_text("square\ndisc\n")
    data = root / "obj.data"
    data.write_text(f"classes = 2\ntrain = {root / 'train.txt'}\nvalid = {root / 'val.txt'}\n"
                    f"names = {root / 'obj.names'}\nbackup = {root / 'backup'}\n")
    return data


def mini_settings(tmp_path: Path, data: Path, **kw) -> TrainSettings:
    """Settings for a short CPU run of ``tmp_path/mini.cfg`` (:data:`MINI_CFG`, written once) on ``data``."""
    from detkit.train.settings import resolve_settings

    cfg = tmp_path / "mini.cfg"
    if not cfg.exists():
        cfg.write_text(MINI_CFG)
    base = dict(epochs=2, device="cpu", amp=False, workers=0, seed=1, progress=False, plots=False, ema_tau=5.0,
                channels_last=False)
    base.update(kw)
    out = base.pop("out", str(tmp_path / "runs" / "exp"))
    return resolve_settings(str(cfg), str(data), 2, out, **base)


def disc_images(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """``n`` PNGs of ``size`` (w, h) in ``folder``: uniform noise with one green disc each
    (calibration and detect inputs for the int8 / OpenVINO tests)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        img = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        cv2.circle(img, (int(rng.integers(10, 70)), int(rng.integers(10, 54))), 9, (40, 200, 90), -1)
        p = folder / f"c{i:02d}.png"
        cv2.imwrite(str(p), img)
        paths.append(p)
    return paths
