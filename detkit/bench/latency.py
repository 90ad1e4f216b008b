"""Batch-N model latency (forward + yolo decode) of every contender on the same input, round-robin
so a change of load on the machine hits them all alike: OpenCV DNN, detkit's PyTorch paths, the
exported ONNX file in onnxruntime (float32 and int8), OpenVINO on detkit's IR (raw fp32 / bf16
hints, detect's default model, the int8 IR) and pytorchyolo where installed.
"""
from __future__ import annotations

import copy
import importlib
import importlib.util
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from detkit.bench.machine import nncf_available, onnxruntime_available, openvino_available
from detkit.bench.opencv_loop import opencv_net
from detkit.infer.openvino_model import openvino_core


@dataclass(frozen=True)
class Timing:
    """Latencies of one contender, milliseconds per call (``batch`` images per call)."""

    name: str
    batch: int
    times_ms: tuple[float, ...]
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def best(self) -> float:
        return min(self.times_ms)


def set_nchw(model: torch.nn.Module) -> None:
    model.to(memory_format=torch.contiguous_format)
    try:  # older DarknetModel: a plain attribute; newer: a read-only property following the weights
        model.channels_last = False
    except AttributeError:
        pass


def load_pytorchyolo(cfg: str, weights: str, extra_path: str | None = None):
    """The PyPI ``pytorchyolo`` model (eriklindernoren's PyTorch-YOLOv3) if importable, else None.

    Its ``models`` module imports ``imgaug`` only to seed it; imgaug does not install with current
    numpy, so a stand-in with a no-op ``seed`` is provided when it is missing. Returns
    ``(model, note)``.
    """
    if extra_path and extra_path not in sys.path:
        sys.path.insert(0, extra_path)
    if importlib.util.find_spec("pytorchyolo") is None:
        return None, "not installed (pip install --no-deps --target DIR pytorchyolo; --pytorchyolo-path DIR)"
    note = ""
    if importlib.util.find_spec("imgaug") is None and "imgaug" not in sys.modules:
        sys.modules["imgaug"] = types.SimpleNamespace(seed=lambda _s: None)  # type: ignore[assignment]
        note = "imgaug stand-in (only used for seeding)"
    try:
        models = importlib.import_module("pytorchyolo.models")
        model = models.load_model(cfg, weights)
    except Exception as exc:  # a third-party package: any failure means "not available here"
        return None, f"failed to load: {type(exc).__name__}: {exc}"
    model.to("cpu").eval()
    return model, note


def build_int8(model: torch.nn.Module, calibration: list[Path], folder: Path, size: int | None = None,
               max_images: int = 64) -> tuple[Path, str]:
    """Quantise ``model`` into ``folder/int8.onnx`` (dynamic batch) on ``calibration`` images;
    returns the path and a note (images, seconds)."""
    from detkit.infer.quantize import quantize_int8

    res = quantize_int8(model, folder / "int8.onnx", calibration, img_size=(size, size) if size else None,
                        max_images=max_images)
    return res.path, f"calibrated on {res.calibration_images} images ({res.seconds:.0f} s, once)"


def build_openvino_int8(model: torch.nn.Module, calibration: list[Path], folder: Path, size: int | None = None,
                        max_images: int = 64) -> tuple[Path, str]:
    """Quantise ``model`` with NNCF into ``folder/int8.xml`` on ``calibration`` images, exactly as
    ``detkit export --format openvino-int8`` does; returns the path and a note."""
    from detkit.infer.openvino_export import quantize_openvino_int8

    res = quantize_openvino_int8(model, folder / "int8.xml", calibration, img_size=(size, size) if size else None,
                                 max_images=max_images)
    return res.path, f"NNCF, calibrated on {res.calibration_images} images ({res.seconds:.0f} s, once)"


def raw_openvino(path: Path, hint: str, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """A plain OpenVINO run of an IR with no detkit code in the loop (what a user's own script
    does): ``compile_model`` with the precision hint, one infer request."""
    compiled = openvino_core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                                          "PERFORMANCE_HINT": "LATENCY",
                                                          "INFERENCE_NUM_THREADS": str(threads)})
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        request.infer({0: x})
        return request.get_output_tensor(0).data

    return run


def latency(cfg: str, weights: str, size: int = 416, batch: int = 1, warmup: int = 5, iters: int = 30,
            compile: bool = False, pytorchyolo_path: str | None = None,
            progress: Callable[[str], None] | None = None, int8_calibration: list[Path] | None = None,
            openvino: bool = True) -> list[Timing]:
    """Median/best latency of each contender on the same letterboxed input.

    Contenders: OpenCV DNN; detkit eager fp32 NCHW; detkit eager fp32 (the model's default,
    channels_last); fast fp32 (BN folded + channels_last); fast auto precision (bf16 on CPUs with
    native bf16); with ``compile`` the fast paths under torch.compile; with ``int8_calibration``
    (and onnxruntime installed) the exported float32 ONNX file and the int8 one
    (:mod:`detkit.infer.quantize`) run by onnxruntime; with ``openvino`` (and openvino installed)
    detkit's IR under raw OpenVINO with the fp32 and bf16 hints, detect's default model
    (:class:`~detkit.infer.openvino_model.OpenVinoModel`, auto precision) and, with
    ``int8_calibration`` and NNCF, the int8 IR; pytorchyolo when importable.
    """
    from detkit.infer.backends import cpu_features
    from detkit.infer.fast import cpu_has_native_bf16, optimize_for_inference
    from detkit.infer.loading import load_model

    say = progress or (lambda _m: None)
    model, _ = load_model(cfg, weights, checkpoints=False, purpose="the benchmark")  # OpenCV reads darknet files only
    model.eval()
    rng = np.random.default_rng(0)
    blob = rng.random((batch, 3, size, size), dtype=np.float32)
    x = torch.from_numpy(blob)
    runners: dict[str, tuple[Callable[[], object], str]] = {}

    net, out_names = opencv_net(cfg, weights)

    def run_cv():
        net.setInput(blob)
        return net.forward(out_names)

    runners["OpenCV DNN (darknet importer)"] = (run_cv, "")
    nchw = copy.deepcopy(model)
    set_nchw(nchw)
    runners["detkit eager fp32, NCHW"] = (lambda: nchw(x), "")
    runners["detkit eager fp32 (default model, channels_last)"] = (lambda: model(x), "")
    fast32 = optimize_for_inference(model, "cpu", dtype="fp32")
    runners["detkit fast fp32 (BN folded, channels_last)"] = (lambda: fast32(x), "")
    fast_auto = optimize_for_inference(model, "cpu", dtype="auto")
    auto_name = fast_auto.fast_info.dtype
    runners[f"detkit fast {auto_name} (detect's default)"] = (
        lambda: fast_auto(x), "" if auto_name != "fp32" else "no native bf16 on this CPU")
    if auto_name == "fp32":
        fast_bf16 = optimize_for_inference(model, "cpu", dtype="bf16")
        runners["detkit fast bf16 (forced)"] = (lambda: fast_bf16(x), "emulated bf16")
    if compile:
        for dt in ("fp32", auto_name) if auto_name != "fp32" else ("fp32",):
            say(f"compiling the fast {dt} model (takes a while)")
            compiled = optimize_for_inference(model, "cpu", dtype=dt, compile=True)
            t0 = time.perf_counter()
            with torch.inference_mode():
                compiled(x)
            runners[f"detkit fast {dt} + torch.compile"] = (
                lambda c=compiled: c(x), f"compile {time.perf_counter() - t0:.0f} s")
    tmp = tempfile.TemporaryDirectory(prefix="detkit-bench-onnx-")
    openvino = openvino and openvino_available()
    if int8_calibration and onnxruntime_available():
        from detkit.infer.export import export_onnx
        from detkit.infer.onnxrt import OnnxModel

        say("exporting the float32 ONNX file and quantising the int8 one")
        threads = torch.get_num_threads()
        fp32_path = export_onnx(model, Path(tmp.name) / "fp32.onnx", (size, size), dynamic_batch=True).path
        ort32 = OnnxModel(fp32_path, threads=threads)
        runners["detkit export onnx fp32, onnxruntime"] = (lambda: ort32(x), "")
        int8_path, note = build_int8(model, int8_calibration, Path(tmp.name), size)
        ort8 = OnnxModel(int8_path, threads=threads)
        runners["detkit export onnx-int8, onnxruntime"] = (lambda: ort8(x), note)
    elif int8_calibration:
        say("int8: onnxruntime/onnx are not installed (skipped)")
    if openvino:
        from detkit.infer.openvino_export import export_openvino
        from detkit.infer.openvino_model import OpenVinoModel

        say("exporting detkit's OpenVINO IR (float32) and quantising the int8 one with NNCF")
        threads = torch.get_num_threads()
        ir, _ = export_openvino(model, Path(tmp.name) / "fp32.xml", (size, size))
        blob_c = np.ascontiguousarray(blob)
        for hint, label in (("f32", "fp32"), ("bf16", "bf16")):
            raw = raw_openvino(ir, hint, threads)
            runners[f"OpenVINO {label} hint (raw, detkit's IR)"] = (
                lambda r=raw: r(blob_c), "" if label == "fp32" or cpu_features().native_bf16 else "emulated bf16")
        ovd = OpenVinoModel(ir, threads=threads, cache_dir="")
        runners["detkit detect's default model (OpenVinoModel, auto precision)"] = (
            lambda: ovd.forward_numpy(blob_c), ovd.fast_info.describe())
        if int8_calibration and nncf_available():
            ov8_path, note = build_openvino_int8(model, int8_calibration, Path(tmp.name), size)
            ov8 = OpenVinoModel(ov8_path, threads=threads, cache_dir="")
            runners["OpenVINO int8 (detkit export --format openvino-int8)"] = (lambda: ov8.forward_numpy(blob_c), note)
    pyy, pyy_note = load_pytorchyolo(cfg, weights, pytorchyolo_path)
    if pyy is not None:
        runners["pytorchyolo (PyPI) fp32"] = (lambda: pyy(x), pyy_note)
    else:
        say(f"pytorchyolo: {pyy_note}")
    say(f"native bf16 on this CPU: {cpu_has_native_bf16()}")

    times: dict[str, list[float]] = {k: [] for k in runners}
    with torch.inference_mode():
        for name, (fn, _) in runners.items():
            for _ in range(warmup):
                fn()
        for _ in range(iters):  # round-robin: every contender sees the same machine state
            for name, (fn, _) in runners.items():
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1000.0)
    tmp.cleanup()
    out = [Timing(k, batch, tuple(v), runners[k][1]) for k, v in times.items()]
    if pyy is None:
        out.append(Timing("pytorchyolo (PyPI) fp32", batch, (), pyy_note))
    return out
