"""darknet ``.weights`` read/write (REFERENCES.md §2).

Layout: int32 major, int32 minor, int32 revision, then ``seen`` as uint64 when
``major * 10 + minor >= 2`` and ``major, minor < 1000`` (else uint32). Then, in cfg layer order
(darknet's ``load_weights_upto``): for each ``[convolutional]`` with its own weights (not
``share_index``): with ``batch_normalize``: BN beta, gamma, running mean, running variance, conv
weights ``(out, in/groups, k, k)``; without: conv bias, conv weights; for each weighted
``[shortcut]`` (``weights_type=per_feature|per_channel``): its ``(n + 1)`` or ``(n + 1) * C``
weights. All float32 little-endian; nothing else for the layer types detkit supports.

One writer's mistake is recognised: PyTorch ports (pytorchyolo's ``save_darknet_weights``) write a
five-int32 header (64-bit ``seen``) under a version 0.0 header, which darknet reads with a 32-bit
``seen``: exactly 4 bytes are left over. Such a file (and the mirror case, a >= 0.2 header with a
32-bit ``seen``: exactly 4 bytes missing) loads with a warning; every other size mismatch is an error.

Sizes are always computed from the model (never from counts in the file); the file size only
bounds what is read, so a corrupt or hostile file cannot make detkit allocate more than it holds.
"""
from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from torch import nn

from detkit.darknet.layers import ConvLayer, ShortcutLayer, YoloLayer
from detkit.darknet.model import DarknetModel
from detkit.errors import WeightsError
from detkit.fileio import write_atomic

log = logging.getLogger(__name__)

FLOAT_BYTES = 4
DEFAULT_HEADER = (0, 2, 0, 0)  # what darknet writes: major 0, minor 2 -> 64-bit seen


@dataclass(frozen=True)
class WeightsHeader:
    """The header of a ``.weights`` file."""

    major: int
    minor: int
    revision: int
    seen: int  # images seen during training

    @property
    def seen_64bit(self) -> bool:
        return seen_is_64bit(self.major, self.minor)

    @property
    def nbytes(self) -> int:
        return 12 + (8 if self.seen_64bit else 4)


@dataclass(frozen=True)
class ConvTensors:
    """Where one layer's tensors sit in a weights file (float counts, file order): a conv, or a
    weighted shortcut (``names == ("weight",)``)."""

    index: int  # cfg layer index
    line: int  # cfg line of the section header
    module: nn.Module  # ConvLayer or ShortcutLayer
    file_filters: int  # filters in the file (differs from the model for a re-sized head)
    names: tuple[str, ...]
    counts: tuple[int, ...]
    model_filters: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts)

    @property
    def same_shape(self) -> bool:
        return self.file_filters == self.model_filters


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_darknet_weights` did."""

    header: WeightsHeader
    loaded: tuple[int, ...]  # layer indices whose tensors were loaded
    reinitialised: tuple[int, ...]  # head layers re-initialised because the class count changed
    partial: bool  # the file ended at a layer boundary before the last conv (within cutoff)
    file_num_classes: int | None


def seen_is_64bit(major: int, minor: int) -> bool:
    """darknet's rule for the width of ``seen``."""
    return (major * 10 + minor) >= 2 and major < 1000 and minor < 1000


def read_weights_header(f: BinaryIO, path: str | os.PathLike) -> WeightsHeader:
    """Read the header at the current position of ``f``.

    Raises:
        WeightsError: the file is shorter than its header.
    """
    head = f.read(12)
    if len(head) < 12:
        raise WeightsError(f"file too short for a darknet weights header ({len(head)} bytes)", path=path)
    major, minor, revision = struct.unpack("<iii", head)
    wide = seen_is_64bit(major, minor)
    raw = f.read(8 if wide else 4)
    if len(raw) < (8 if wide else 4):
        raise WeightsError("file ends inside the header (seen counter)", path=path)
    seen = struct.unpack("<Q" if wide else "<I", raw)[0]
    return WeightsHeader(major, minor, revision, seen)


def _head_convs(model: DarknetModel) -> dict[int, YoloLayer]:
    """conv layer index -> the yolo layer it feeds (the conv directly before each [yolo])."""
    out: dict[int, YoloLayer] = {}
    for i, m in enumerate(model.layers):
        if isinstance(m, YoloLayer) and i >= 1 and isinstance(model.layers[i - 1], ConvLayer):
            out[i - 1] = m
    return out


def conv_layout(model: DarknetModel, cutoff: int | None = None,
                file_num_classes: int | None = None) -> list[ConvTensors]:
    """Tensor counts of every layer with weights (layer index < cutoff) as stored in a file with
    ``file_num_classes`` classes (default: the model's): convs and weighted shortcuts, cfg order."""
    heads = _head_convs(model)
    layout = []
    owners = dict(model.conv_layers)
    for i, module in enumerate(model.layers):
        if cutoff is not None and i >= cutoff:
            break
        if isinstance(module, ShortcutLayer) and getattr(module, "weight", None) is not None:
            n = module.weight.numel()
            layout.append(ConvTensors(i, module.spec.line, module, n, ("weight",), (n,), n))
            continue
        if i not in owners:
            continue
        conv = owners[i]
        c = conv.conv
        filters = c.out_channels
        if file_num_classes is not None and i in heads:
            filters = (file_num_classes + 5) * heads[i].num_anchors
        per_filter = (c.in_channels // c.groups) * c.kernel_size[0] * c.kernel_size[1]
        if conv.bn is not None:
            names = ("bn.bias", "bn.weight", "bn.running_mean", "bn.running_var", "conv.weight")
            counts = (filters, filters, filters, filters, filters * per_filter)
        else:
            names = ("conv.bias", "conv.weight")
            counts = (filters, filters * per_filter)
        layout.append(ConvTensors(i, conv.spec.line, conv, filters, names, counts, c.out_channels))
    return layout


def _infer_file_classes(model: DarknetModel, n_floats: int) -> int | None:
    """The class count that makes a complete file hold exactly ``n_floats`` floats, if any."""
    heads = _head_convs(model)
    if not heads:
        return None
    base = sum(t.total for t in conv_layout(model, file_num_classes=None) if t.index not in heads)
    # each head conv holds (C + 5) * A filters of (per_filter + 1 or 4) floats -> linear in C
    # ([region] heads: (C + coords + 1) * num with coords = 4, the same form)
    slope = 0
    for t in conv_layout(model):
        if t.index in heads:
            slope += heads[t.index].num_anchors * (t.total // t.file_filters)
    rest = n_floats - base
    if slope == 0 or rest <= 0 or rest % slope:
        return None
    classes = rest // slope - 5
    return classes if classes >= 1 else None


def _where(t: ConvTensors) -> str:
    kind = "shortcut" if t.names == ("weight",) else "convolutional"
    return f"layer {t.index} ([{kind}] at cfg line {t.line})"


def _fix_seen_width(header: WeightsHeader, body: int, expected: int, path: Path,
                    f: BinaryIO) -> WeightsHeader:
    """Recognise the one known writer's mistake about the width of ``seen`` (module docstring).

    ``body`` is the file size after the header as darknet reads it, ``expected`` what the model's
    layers need. Returns the header to use (the file position moved past the real header) or the
    given one unchanged.
    """
    if not header.seen_64bit and body - 4 == expected:
        extra = f.read(4)
        seen = header.seen | (struct.unpack("<I", extra)[0] << 32)
        log.warning("%s: version %d.%d header with a 64-bit 'seen' (5 int32; darknet reads 4 for versions "
                    "before 0.2, leaving 4 bytes over): written by a PyTorch port's save_darknet_weights; "
                    "loaded as such", path, header.major, header.minor)
        return WeightsHeader(header.major, header.minor, header.revision, seen)
    if header.seen_64bit and body + 4 == expected:
        f.seek(12 + 4)
        seen = header.seen & 0xFFFFFFFF
        log.warning("%s: version %d.%d header with a 32-bit 'seen' (darknet reads 64 bits from version 0.2 "
                    "on, leaving the file 4 bytes short): a writer's mistake; loaded with a 32-bit 'seen'",
                    path, header.major, header.minor)
        return WeightsHeader(header.major, header.minor, header.revision, seen)
    return header


@torch.no_grad()
def load_darknet_weights(model: DarknetModel, path: str | os.PathLike, cutoff: int | None = None,
                         file_num_classes: int | None = None) -> LoadReport:
    """Load a darknet ``.weights`` file into ``model`` (in place).

    Args:
        model: a :class:`DarknetModel`.
        path: the ``.weights`` file (either header variant).
        cutoff: load only layers with index ``< cutoff`` (darknet's ``load_weights_upto``); bytes
            after them are ignored.
        file_num_classes: the class count the file was trained with, when it differs from the
            model's. Without it and without ``cutoff``, a complete file is checked against the
            model and, if it does not fit, the file's class count is inferred from its size.

    Head convs whose shape differs from the file's (class count changed) are re-initialised and
    reported with a warning; everything else loads. A file that ends at a layer boundary before
    the last conv is accepted as partial (warning). The header is kept in ``model.weights_header``.

    Raises:
        WeightsError: missing/short file, a file ending inside a tensor, bytes left over after the
            last layer (without ``cutoff``), or a layer that does not fit.
    """
    if not isinstance(model, DarknetModel):
        raise TypeError(f"model must be a DarknetModel, got {type(model).__name__}")
    _check_count("cutoff", cutoff, 0)
    _check_count("file_num_classes", file_num_classes, 1)
    p = Path(path)
    try:
        f = open(p, "rb")
    except OSError as exc:
        raise WeightsError(f"cannot open weights file: {exc.strerror or exc}", path=p) from exc
    with f:
        size = os.fstat(f.fileno()).st_size
        header = read_weights_header(f, p)
        body = size - header.nbytes
        if cutoff is None and file_num_classes is None:
            header = _fix_seen_width(header, body, sum(t.total for t in conv_layout(model)) * FLOAT_BYTES, p, f)
            body = size - f.tell()
        if file_num_classes is None and cutoff is None and body % FLOAT_BYTES == 0:
            if sum(t.total for t in conv_layout(model)) * FLOAT_BYTES != body:
                guess = _infer_file_classes(model, body // FLOAT_BYTES)
                if guess is not None and guess != model.num_classes:
                    log.info("%s: the file holds %d classes, the model %d (inferred from the file size)",
                             p, guess, model.num_classes)
                    file_num_classes = guess
        layout = conv_layout(model, cutoff, file_num_classes)
        loaded: list[int] = []
        reinit: list[int] = []
        partial = False
        for n, t in enumerate(layout):
            remaining = size - f.tell()
            if remaining == 0:
                partial = True
                log.warning("%s: file ends after %d of %d conv layers (before %s); "
                            "the rest keep their initialisation (partial weights)",
                            p, n, len(layout), _where(t))
                break
            if remaining < t.total * FLOAT_BYTES:
                offset = 0
                for name, count in zip(t.names, t.counts):
                    if remaining < (offset + count) * FLOAT_BYTES:
                        raise WeightsError(
                            f"file ends inside {name} of {_where(t)}: needs {t.total * FLOAT_BYTES} bytes "
                            f"for this layer, {remaining} left (truncated file, or a cfg that does not match)",
                            path=p)
                    offset += count
            if not t.same_shape:
                f.seek(t.total * FLOAT_BYTES, os.SEEK_CUR)  # skip the file's tensors, never allocate them
                _reinit_conv(t.module)  # type: ignore[arg-type]  # only head convs change shape
                reinit.append(t.index)
                log.warning("%s: %s has %d filters in the file but %d in the model (class count %s -> %d); "
                            "re-initialised it, loading everything else",
                            p, _where(t), t.file_filters, t.module.conv.out_channels,
                            file_num_classes, model.num_classes)
                continue
            for name, count in zip(t.names, t.counts):
                data = np.fromfile(f, dtype="<f4", count=count)
                target = t.module.get_parameter(name) if name.endswith(("weight", "bias")) \
                    else t.module.get_buffer(name)
                target.copy_(torch.from_numpy(data.astype(np.float32, copy=False)).view_as(target))
            loaded.append(t.index)
        if cutoff is None and not partial:
            left = size - f.tell()
            if left:
                last = _where(layout[-1]) if layout else "the header"
                raise WeightsError(f"{left} bytes left over after the last layer ({last}): "
                                   "the weights do not match this cfg", path=p)
    model.weights_header = (header.major, header.minor, header.revision, header.seen)
    log.info("%s: loaded %d conv layers%s", p, len(loaded),
             f", re-initialised {len(reinit)} head(s)" if reinit else "")
    return LoadReport(header, tuple(loaded), tuple(reinit), partial, file_num_classes)


def _check_count(name: str, value: int | None, minimum: int) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _reinit_conv(module: ConvLayer) -> None:
    module.conv.reset_parameters()
    if module.bn is not None:
        module.bn.reset_parameters()


@torch.no_grad()
def save_darknet_weights(model: DarknetModel, path: str | os.PathLike, cutoff: int | None = None) -> None:
    """Write ``model`` as a darknet ``.weights`` file (64-bit ``seen`` header), atomically.

    The header's major/minor/revision/seen come from ``model.weights_header`` when it was loaded
    from a 64-bit-header file (so load -> save reproduces the file byte for byte); otherwise
    ``(0, 2, revision, seen)``. ``cutoff`` writes only layers with index ``< cutoff``.
    """
    if not isinstance(model, DarknetModel):
        raise TypeError(f"model must be a DarknetModel, got {type(model).__name__}")
    _check_count("cutoff", cutoff, 0)
    major, minor, revision, seen = model.weights_header or DEFAULT_HEADER
    if not seen_is_64bit(major, minor):
        major, minor = DEFAULT_HEADER[:2]
    def write(tmp: str) -> None:
        with open(tmp, "wb") as out:
            out.write(struct.pack("<iiiQ", major, minor, revision, seen))
            for t in conv_layout(model, cutoff):
                for name in t.names:
                    src = t.module.get_parameter(name) if name.endswith(("weight", "bias")) \
                        else t.module.get_buffer(name)
                    arr = src.detach().to("cpu", torch.float32).contiguous().numpy()
                    out.write(arr.astype("<f4", copy=False).tobytes())

    write_atomic(path, write)
