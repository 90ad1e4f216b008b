"""Inference benchmark: detkit's paths against OpenCV DNN's darknet importer (and pytorchyolo where
installed) on the same cfg + weights, in one process.

* :func:`latency`: batch-N model latency (forward + yolo decode), round-robin over the contenders
  so a load change on the machine hits them all alike.
* :func:`end_to_end_opencv` / :func:`end_to_end_detkit`: a folder of JPEGs -> decode -> resize ->
  model -> NMS -> JSON, images/s, model loading included for both.
* :func:`accuracy`: VOC mAP@0.5 on a dataset's validation split, plain float32 vs the fast path.

Used by ``detkit benchmark`` (detkit/cli/benchmark_cmd.py) and tools/bench_inference.py.
"""
from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import logging
import os
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

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class Throughput:
    """End-to-end run over image files: ``images`` in ``seconds`` (model loading included)."""

    name: str
    images: int
    seconds: float
    detections: int
    note: str = ""

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


@dataclass(frozen=True)
class Accuracy:
    """VOC mAP@0.5 of one inference path on a validation split."""

    name: str
    map50: float
    images: int
    detections: int


def _set_nchw(model: torch.nn.Module) -> None:
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


def _opencv_net(cfg: str, weights: str):
    import cv2

    net = cv2.dnn.readNetFromDarknet(cfg, weights)
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    return net, net.getUnconnectedOutLayersNames()


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def build_int8(model: torch.nn.Module, calibration: list[Path], folder: Path, size: int | None = None,
               max_images: int = 64) -> tuple[Path, str]:
    """Quantise ``model`` into ``folder/int8.onnx`` (dynamic batch) on ``calibration`` images;
    returns the path and a note (images, seconds)."""
    from detkit.infer.quantize import quantize_int8

    res = quantize_int8(model, folder / "int8.onnx", calibration, img_size=(size, size) if size else None,
                        max_images=max_images)
    return res.path, f"calibrated on {res.calibration_images} images ({res.seconds:.0f} s, once)"


def latency(cfg: str, weights: str, size: int = 416, batch: int = 1, warmup: int = 5, iters: int = 30,
            compile: bool = False, pytorchyolo_path: str | None = None,
            progress: Callable[[str], None] | None = None, int8_calibration: list[Path] | None = None
            ) -> list[Timing]:
    """Median/best latency of each contender on the same letterboxed input.

    Contenders: OpenCV DNN; detkit eager fp32 NCHW; detkit eager fp32 (the model's default,
    channels_last); fast fp32 (BN folded + channels_last); fast auto precision (bf16 on CPUs with
    native bf16); with ``compile`` the fast paths under torch.compile; with ``int8_calibration``
    (and onnxruntime installed) the exported float32 ONNX file and the int8 one
    (:mod:`detkit.infer.quantize`) run by onnxruntime; pytorchyolo when importable.
    """
    from detkit.infer.fast import cpu_has_native_bf16, optimize_for_inference
    from detkit.infer.loading import load_model

    say = progress or (lambda _m: None)
    model, _ = load_model(cfg, weights, checkpoints=False, purpose="the benchmark")  # OpenCV reads darknet files only
    model.eval()
    rng = np.random.default_rng(0)
    blob = rng.random((batch, 3, size, size), dtype=np.float32)
    x = torch.from_numpy(blob)
    runners: dict[str, tuple[Callable[[], object], str]] = {}

    net, out_names = _opencv_net(cfg, weights)

    def run_cv():
        net.setInput(blob)
        return net.forward(out_names)

    runners["OpenCV DNN (darknet importer)"] = (run_cv, "")
    nchw = copy.deepcopy(model)
    _set_nchw(nchw)
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


def end_to_end_opencv(cfg: str, weights: str, images: list[Path], out_json: Path, size: int = 416,
                      conf: float = 0.25, nms: float = 0.45) -> Throughput:
    """The straightforward OpenCV DNN loop: imread -> blobFromImage (plain resize, RGB, /255) ->
    forward -> per-row argmax class, score > conf -> cv2.dnn.NMSBoxes -> JSON."""
    import cv2

    t0 = time.perf_counter()
    net, out_names = _opencv_net(cfg, weights)
    results = []
    for p in images:
        img = cv2.imread(str(p))
        if img is None:
            continue
        h, w = img.shape[:2]
        blob = cv2.dnn.blobFromImage(img, 1 / 255.0, (size, size), swapRB=True, crop=False)
        net.setInput(blob)
        outs = net.forward(out_names)
        boxes, scores, classes = [], [], []
        for out in outs:
            cls_scores = out[:, 5:]
            cid = cls_scores.argmax(1)
            sc = cls_scores[np.arange(len(out)), cid]
            keep = sc > conf
            for row, c, s in zip(out[keep], cid[keep], sc[keep]):
                bw, bh = row[2] * w, row[3] * h
                boxes.append([float(row[0] * w - bw / 2), float(row[1] * h - bh / 2), float(bw), float(bh)])
                scores.append(float(s))
                classes.append(int(c))
        idx = cv2.dnn.NMSBoxes(boxes, scores, conf, nms) if boxes else []
        for i in np.array(idx).reshape(-1):
            x, y, bw, bh = boxes[i]
            results.append({"image": str(p), "class_id": classes[i], "score": round(scores[i], 6),
                            "box_xyxy": [round(v, 4) for v in (x, y, x + bw, y + bh)]})
    out_json.write_text(json.dumps(results))
    return Throughput("OpenCV DNN loop (imread, blobFromImage, forward, NMSBoxes)", len(images),
                      time.perf_counter() - t0, len(results))


def end_to_end_detkit(cfg: str, weights: str, names: str, images: list[Path], out_dir: Path, size: int = 416,
                      batch: int = 8, fast: bool = True, label: str = "detkit detect") -> Throughput:
    """``detkit detect --no-images`` over the images (a list file), in this process, through the
    library call the command makes (:func:`detkit.infer.detect.run_detect`); the pipeline's
    wait-for-data share goes into ``note``. Python imports (torch, torchvision, detkit's modules) are
    done before the clock starts, as cv2's is for the OpenCV loop; building the model, loading the
    weights and preparing the fast path are timed."""
    from detkit.infer.detect import DetectOptions, run_detect

    listing = out_dir / "images.txt"
    out_dir.mkdir(parents=True, exist_ok=True)
    listing.write_text("".join(f"{p}\n" for p in images), encoding="utf-8")
    captured: list[str] = []

    class _Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(record.getMessage())

    det_log = logging.getLogger("detkit.infer.detect")
    handler, old_level, old_prop = _Grab(level=logging.INFO), det_log.level, det_log.propagate
    det_log.addHandler(handler)
    det_log.setLevel(logging.INFO)
    det_log.propagate = False
    opts = DetectOptions(cfg=cfg, weights=weights, names=names, source=str(listing), out=str(out_dir / "out"),
                         no_images=True, quiet=True, device="cpu", img_size=size, batch=batch, fast=fast)
    try:
        t0 = time.perf_counter()
        code = run_detect(opts, echo=lambda _: None)
        seconds = time.perf_counter() - t0
    finally:
        det_log.removeHandler(handler)
        det_log.setLevel(old_level)
        det_log.propagate = old_prop
    if code != 0:
        raise RuntimeError(f"detkit detect failed (exit {code}): {opts}")
    n_det = len(json.loads((out_dir / "out" / "detections.json").read_text(encoding="utf-8")))
    stats = next((m[len("pipeline: "):] for m in captured if m.startswith("pipeline: ")), "")
    return Throughput(label, len(images), seconds, n_det, stats)


def accuracy(cfg: str, weights: str, data: str, size: int | None = None, batch: int = 8,
             int8: bool = True) -> list[Accuracy]:
    """VOC mAP@0.5 (all-point, continuous pixels) on the validation split of ``data`` (obj.data /
    data.yaml), detections kept down to 0.005: plain float32 model, fast fp32, fast auto precision
    and, with ``int8`` (and onnxruntime installed), the int8 ONNX file calibrated on up to 200
    images of the training split."""
    from detkit.evaluate.ground_truth import load_yolo_gt
    from detkit.evaluate.run import prepare_tables
    from detkit.infer.loading import load_model
    from detkit.infer.predict import Predictor
    from detkit.metrics.records import DetTable
    from detkit.metrics.evaluator import evaluate

    gt = load_yolo_gt(data)
    model, _ = load_model(cfg, weights, len(gt.class_names), purpose="evaluation", classes_from="the dataset")
    paths: list[tuple[str, dict]] = [
        ("plain fp32 (no folding)", dict(fast=False)),
        ("fast fp32", dict(fast=True, precision="fp32")),
        ("fast auto (detect's default)", dict(fast=True, precision="auto")),
    ]
    tmp = tempfile.TemporaryDirectory(prefix="detkit-bench-int8-")
    if int8 and onnxruntime_available():
        from detkit.data.datafiles import load_data_config
        from detkit.infer.onnxrt import OnnxModel

        train = load_data_config(data).train
        if train:
            path, note = build_int8(model, list(train), Path(tmp.name), size, max_images=200)
            paths.append((f"int8 ONNX, onnxruntime ({note.split(' (')[0]} of the training split)",
                          dict(model=OnnxModel(path))))
    out = []
    for name, kw in paths:
        runner = kw.pop("model", None) or copy.deepcopy(model)
        pred = Predictor(runner, img_size=size, conf=0.005, nms=0.45, device="cpu", **kw)
        info = getattr(pred.model, "fast_info", None)
        if info is not None:
            name = f"{name} ({info.describe()})"
        idx, boxes, scores, labels = [], [], [], []
        for k, res in enumerate(pred.predict_paths(list(gt.image_files), batch_size=batch)):
            if res.error is not None:
                raise res.error
            d = res.detections
            idx.append(np.full(len(d), k, np.int64))
            boxes.append(d.boxes.astype(np.float64))
            scores.append(d.scores.astype(np.float64))
            labels.append(d.class_ids.astype(np.int64))
        dt = DetTable(image_index=np.concatenate(idx), boxes=np.concatenate(boxes).reshape(-1, 4),
                      scores=np.concatenate(scores), labels=np.concatenate(labels), box_format="xyxy")
        g, d_, _ = prepare_tables(gt, dt, False, "voc")
        rep = evaluate(g, d_, gt.class_names, metric="voc", iou_threshold=0.5, conf_threshold=0.25)
        out.append(Accuracy(name, float(rep.map), len(gt.image_files), len(dt.scores)))
    tmp.cleanup()
    return out


def gemm_gflops(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 6) -> float:
    """Sustained ``n x n`` matmul GFLOPS at torch's thread count (best of ``repeats``): the ceiling
    for a convolution computed directly (im2col / GEMM-like kernels) in ``dtype`` on this machine."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    best = float("inf")
    with torch.inference_mode():
        a @ b
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best / 1e9


def compute_floor(cfg: str, size: int) -> dict[str, float]:
    """The network's convolution GFLOP at ``size`` and, per dtype, this machine's matmul GFLOPS and
    the resulting floor in ms for any implementation that computes every convolution directly."""
    from detkit.darknet.cfg import resolve_cfg
    from detkit.darknet.shapes import conv_gflop
    from detkit.darknet.specs import parse_network

    text, source = resolve_cfg(cfg)
    gflop = conv_gflop(parse_network(text, source), (size, size))
    out = {"conv_gflop": gflop}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        peak = gemm_gflops(dt)
        out[f"{name}_gemm_gflops"] = peak
        out[f"{name}_floor_ms"] = gflop / peak * 1000.0
    return out


def default_shared() -> Path:
    """``../shared`` next to the repository (where the project's real data lives), if present."""
    return Path(__file__).resolve().parents[2].parent / "shared"


def temp_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="detkit-bench-")


def machine_line(threads: int) -> str:
    import platform

    import cv2

    from detkit.infer.fast import cpu_has_native_bf16

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} logical CPUs, {threads} threads; native bf16: "
            f"{'yes' if cpu_has_native_bf16() else 'no'}; torch {torch.__version__}, OpenCV {cv2.__version__}")
