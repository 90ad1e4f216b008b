"""Build a model from a cfg and load its weights: darknet ``.weights`` or a detkit checkpoint.

One loader for every command (detect, eval, export, benchmark, train's ``--weights``): the class
count comes from the caller (names file / dataset) or, for a checkpoint, from its class names;
checkpoints give their EMA weights when they hold them. ``strict=True`` (inference, export) wants
every tensor from the file and raises a one-line :class:`WeightsError` otherwise; ``strict=False``
(fine-tuning) keeps the initialisation of whatever does not fit and reports those layers.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detkit.errors import WeightsError

if TYPE_CHECKING:  # pragma: no cover
    from detkit.darknet.model import DarknetModel
    from detkit.darknet.weights import LoadReport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedWeights:
    """What :func:`load_model` loaded."""

    path: Path
    source: str  # "darknet" (a .weights file), "ema" or "model" (which state of a checkpoint)
    class_names: tuple[str, ...]  # a checkpoint's class names; () for darknet files
    fresh_layers: tuple[int, ...]  # layer indices that kept their initialisation (strict=False only)
    partial: bool  # a darknet file that ends before the last conv (strict=False only)
    report: LoadReport | None  # the darknet loader's report; None for checkpoints


def load_model(cfg: str | os.PathLike, weights: str | os.PathLike, num_classes: int | None = None, *,
               checkpoints: bool = True, strict: bool = True, cutoff: int | None = None,
               purpose: str = "", classes_from: str = "the model", names_file: str | os.PathLike | None = None,
               classes_hint: str = "") -> tuple[DarknetModel, LoadedWeights]:
    """Build ``cfg`` for ``num_classes`` and load ``weights`` into it.

    Args:
        cfg: darknet cfg path or builtin name.
        weights: a darknet ``.weights`` file or (with ``checkpoints``) a detkit checkpoint; of a
            checkpoint the EMA weights are taken when present, else the raw model.
        num_classes: class count; None: a checkpoint's class names, else the cfg's.
        checkpoints: accept detkit checkpoints (False: every file is read as darknet weights).
        strict: every tensor must come from the file. False: tensors that do not fit (class
            count change), layers after ``cutoff`` and the rest of a partial darknet file keep
            their initialisation and are listed in ``fresh_layers``.
        cutoff: darknet files only: load layers with index ``< cutoff`` (needs ``strict=False``).
        purpose: what needs complete weights, for the error text (e.g. "detection").
        classes_from: what set the class count, for the error text (e.g. "the dataset").
        names_file: the names file that set the class count (named in the error text instead).
        classes_hint: how to fix a class count mismatch, appended to its error text.

    Raises:
        WeightsError: missing file, a darknet file whose class count or length does not fit
            (strict), a checkpoint without model state or (strict) one that does not fit the cfg.
        TrainError: a corrupt or unsafe checkpoint (from :func:`load_checkpoint`).
        CfgError: a bad cfg.
    """
    from detkit.darknet.model import build_model
    from detkit.checkpoint import is_checkpoint_file, load_checkpoint

    if cutoff is not None and strict:
        raise ValueError("cutoff leaves layers uninitialised: it needs strict=False")
    w = Path(weights)
    if not w.is_file():
        raise WeightsError("weights file not found", path=w)
    payload = load_checkpoint(w) if checkpoints and is_checkpoint_file(w) else None
    names = tuple(str(n) for n in (payload.get("class_names") or ())) if payload is not None else ()
    if num_classes is None and names:
        num_classes = len(names)
    model = build_model(cfg, num_classes=num_classes)
    if payload is not None:
        return model, _load_checkpoint_state(model, w, payload, names, cfg, strict)
    return model, _load_darknet(model, w, cfg, strict, cutoff, purpose, classes_from, names_file, classes_hint)


def checkpoint_model_state(payload: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The state dict to run from a checkpoint payload: EMA weights when present, else the raw
    model's; with ``"ema"`` or ``"model"`` saying which (state None when it holds neither)."""
    ema = payload.get("ema")
    if isinstance(ema, dict) and ema.get("module"):
        return ema["module"], "ema"
    state = payload.get("model")
    return (state if isinstance(state, dict) else None), "model"


def _load_checkpoint_state(model: DarknetModel, w: Path, payload: dict[str, Any], names: tuple[str, ...],
                           cfg: str | os.PathLike, strict: bool) -> LoadedWeights:
    import torch

    state, source = checkpoint_model_state(payload)
    if state is None:
        raise WeightsError("checkpoint holds no model state", path=w)
    own = model.state_dict()
    take = {k: v for k, v in state.items()
            if k in own and isinstance(v, torch.Tensor) and own[k].shape == v.shape}
    if strict:
        wrong = [k for k, v in state.items() if k in own and k not in take]
        if wrong:
            k, v = wrong[0], state[wrong[0]]
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise WeightsError(f"checkpoint does not fit {cfg} with {model.num_classes} classes "
                               f"(trained with {len(names) or '?'}): size mismatch for {k}: {got} in the "
                               f"checkpoint, {tuple(own[k].shape)} in the model", path=w)
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if missing or unexpected:
            raise WeightsError(f"checkpoint does not fit {cfg} (missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]})", path=w)
    skipped = sorted(k for k in own if k not in take)
    model.load_state_dict(take, strict=False)
    fresh = sorted({int(k.split(".")[1]) for k in skipped if k.startswith("layers.")})
    if skipped:
        log.warning("%s: %d tensors did not fit (class count change?) and keep their initialisation: layers %s",
                    w, len(skipped), fresh)
    log.info("%s: loaded %d tensors (%s weights) from checkpoint", w, len(take), "EMA" if source == "ema" else "model")
    return LoadedWeights(w, source, names, tuple(fresh), False, None)


def _load_darknet(model: DarknetModel, w: Path, cfg: str | os.PathLike, strict: bool, cutoff: int | None,
                  purpose: str, classes_from: str, names_file: str | os.PathLike | None,
                  classes_hint: str) -> LoadedWeights:
    from detkit.darknet.weights import load_darknet_weights

    report = load_darknet_weights(model, w, cutoff=cutoff)
    if strict and report.reinitialised:  # running re-initialised heads would give random boxes
        has = (f"the names file {names_file} has {model.num_classes} names" if names_file is not None
               else f"{classes_from} has {model.num_classes}")
        raise WeightsError(f"holds {report.file_num_classes} classes but {has}"
                           + (f"; {classes_hint}" if classes_hint else ""), path=w)
    if strict and report.partial:
        raise WeightsError(f"is a partial file (it ends before the last layer of {cfg})"
                           + (f"; {purpose} needs complete weights" if purpose else ""), path=w)
    loaded = set(report.loaded)
    fresh = tuple(i for i, _ in model.conv_layers if i not in loaded)
    return LoadedWeights(w, "darknet", (), fresh, report.partial, report)


def check_class_count(model, weights: str | os.PathLike, num_classes: int | None, what: str,
                      classes_from: str = "the model", names_file: str | os.PathLike | None = None) -> None:
    """An exported model's class count against the names file / dataset (one-line WeightsError)."""
    if num_classes is not None and model.num_classes != num_classes:
        has = (f"the names file {names_file} has {num_classes} names" if names_file is not None
               else f"{classes_from} has {num_classes}")
        raise WeightsError(f"the {what} gives {model.num_classes} classes but {has}", path=weights)


def load_onnx_model(weights: str | os.PathLike, num_classes: int | None = None, *,
                    classes_from: str = "the model", names_file: str | os.PathLike | None = None):
    """An exported ``.onnx`` detector run by onnxruntime (:class:`~detkit.infer.onnxrt.OnnxModel`),
    its class count checked against ``num_classes``.

    Raises:
        WeightsError: missing or unloadable file, not a detkit detector, or a class count mismatch.
    """
    from detkit.infer.onnxrt import OnnxModel

    model = OnnxModel(weights)
    check_class_count(model, weights, num_classes, "ONNX model", classes_from, names_file)
    log.info("%s: %s", weights, model.fast_info.describe())
    return model


def load_openvino_model(weights: str | os.PathLike, num_classes: int | None = None, *, precision: str = "auto",
                        classes_from: str = "the model", names_file: str | os.PathLike | None = None):
    """An exported IR ``.xml`` (or ``.onnx``) detector run by OpenVINO
    (:class:`~detkit.infer.openvino_model.OpenVinoModel`), its class count checked.

    Raises:
        WeightsError: missing ``.xml``/``.bin``, unloadable file, not a detkit detector, or a class
            count mismatch.
    """
    from detkit.infer.openvino_model import OpenVinoModel

    model = OpenVinoModel(weights, precision=precision)
    check_class_count(model, weights, num_classes, "OpenVINO model", classes_from, names_file)
    log.info("%s: %s", weights, model.fast_info.describe())
    return model


def load_darknet_openvino(cfg: str | os.PathLike, weights: str | os.PathLike, num_classes: int,
                          img_size: tuple[int, int] | None = None, *, precision: str = "auto",
                          names_file: str | os.PathLike | None = None, classes_hint: str = ""):
    """A cfg + darknet ``.weights`` run by OpenVINO: the float32 IR is converted once and cached
    (:func:`~detkit.infer.ir_cache.cached_ir`), so later runs neither build the PyTorch model
    nor convert it. ``img_size`` (W, H) defaults to the cfg's ``[net]`` size. Returns
    ``(model, cached)``.

    Raises:
        WeightsError / CfgError: as :func:`load_model` (checked on the first conversion).
    """
    from detkit.darknet.cfg import resolve_cfg
    from detkit.darknet.specs import parse_network
    from detkit.infer.ir_cache import cached_ir, ir_cache_key
    from detkit.infer.openvino_model import OpenVinoModel

    w = Path(weights)
    if not w.is_file():
        raise WeightsError("weights file not found", path=w)
    text, source = resolve_cfg(cfg)
    spec = parse_network(text, source)
    size = img_size or (int(spec.net.width), int(spec.net.height))

    def build():
        model, _ = load_model(cfg, w, num_classes, checkpoints=False, purpose="detection", names_file=names_file,
                              classes_hint=classes_hint)
        return model.eval()

    path, cached = cached_ir(ir_cache_key(text, w, num_classes, size), build, size)
    model = OpenVinoModel(path, precision=precision)
    log.info("%s: %s (%s %s)", w, model.fast_info.describe(), "cached IR" if cached else "converted to IR", path)
    return model, cached
