"""Accuracy of every inference path: VOC mAP@0.5 on a dataset's validation split, plain float32
against the fast paths (PyTorch fast fp32 / auto, int8 ONNX in onnxruntime, OpenVINO fp32 / bf16 /
int8 on detkit's IR)."""
from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detkit.bench.latency import build_int8, build_openvino_int8
from detkit.bench.machine import nncf_available, onnxruntime_available, openvino_available


@dataclass(frozen=True)
class Accuracy:
    """VOC mAP@0.5 of one inference path on a validation split."""

    name: str
    map50: float
    images: int
    detections: int


def accuracy(cfg: str, weights: str, data: str, size: int | None = None, batch: int = 8,
             int8: bool = True, openvino: bool = True) -> list[Accuracy]:
    """VOC mAP@0.5 (all-point, continuous pixels) on the validation split of ``data`` (obj.data /
    data.yaml), detections kept down to 0.005: plain float32 model, fast fp32, fast auto precision
    and, with ``int8`` (and onnxruntime installed), the int8 ONNX file calibrated on up to 200
    images of the training split; with ``openvino`` (installed), detkit's IR with the fp32 and the
    auto (detect's default) precision and, with ``int8`` and NNCF, the int8 IR calibrated on the same
    images."""
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
    if openvino and openvino_available():
        from detkit.data.datafiles import load_data_config
        from detkit.infer.openvino_export import export_openvino
        from detkit.infer.openvino_model import OpenVinoModel

        w_h = (size, size) if size else None
        ir, _ = export_openvino(model, Path(tmp.name) / "fp32.xml", w_h)
        paths.append(("OpenVINO fp32 hint", dict(model=OpenVinoModel(ir, precision="fp32", cache_dir=""))))
        paths.append(("OpenVINO auto precision (detect's default)", dict(model=OpenVinoModel(ir, cache_dir=""))))
        train = load_data_config(data).train
        if int8 and nncf_available() and train:
            path, note = build_openvino_int8(model, list(train), Path(tmp.name), size, max_images=200)
            paths.append((f"int8 IR, OpenVINO ({note.split(' (')[0]} of the training split)",
                          dict(model=OpenVinoModel(path, cache_dir=""))))
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
