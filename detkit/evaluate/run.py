"""Score ground truth and predictions read from files (or produced by a model) with detkit.metrics.

This module orchestrates: :mod:`detkit.evaluate.ground_truth` reads the ground truth
(``load_ground_truth``: COCO JSON, Pascal VOC XML, YOLO/darknet datasets) and
:mod:`detkit.evaluate.predictions` the predictions (``load_predictions``: COCO results JSON,
``comp4``, per-image ``txt`` and normalised ``yolo`` files); here they are brought into one
coordinate space (``prepare_tables``) and scored (``evaluate_files``, ``evaluate_model``). The
readers' public names are re-exported, so ``detkit.evaluate.run`` stays their import path.

Coordinates: VOC XML, ``comp4`` and ``txt`` boxes are VOC 1-based inclusive pixels; COCO and
YOLO boxes are continuous pixels (``x1 = xmin - 1``, ``x2 = xmax``, see detkit.boxes). For the
VOC metric on VOC XML ground truth everything is brought to the XML's own numbers and scored with
the devkit's +1 IoU (bit-identical to the devkit); otherwise everything is continuous.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from detkit.evaluate.ground_truth import (GroundTruth, load_ground_truth, load_yolo_gt)
from detkit.evaluate.predictions import PredFormat, load_predictions
from detkit.errors import EvalError
from detkit.metrics.records import DetTable, GTTable
from detkit.metrics.report import EvalReport
from detkit.metrics.evaluator import evaluate



# --------------------------------------------------------------------------- conversion + scoring

def _to_space(boxes_xyxy: np.ndarray, from_voc: bool, to_voc: bool) -> np.ndarray:
    if from_voc == to_voc:
        return boxes_xyxy
    from detkit.boxes import voc_to_xyxy, xyxy_to_voc
    return xyxy_to_voc(boxes_xyxy) if to_voc else voc_to_xyxy(boxes_xyxy)


def prepare_tables(gt: GroundTruth, dt: DetTable, dt_voc_pixels: bool, metric: str) -> tuple[GTTable, DetTable, bool]:
    """Bring ground truth and detections into one coordinate space for ``metric``.

    Returns (gt table, det table, plus_one default): VOC metric on VOC XML ground truth works on
    the XML's 1-based numbers with +1 IoU; every other case on continuous pixels without +1.
    """
    to_voc = gt.voc_pixels and metric != "coco"
    g = gt.table
    if g.box_format == "xyxy" and gt.voc_pixels != to_voc:
        g = GTTable(image_ids=g.image_ids, image_index=g.image_index, boxes=_to_space(g.boxes, gt.voc_pixels, to_voc),
                    labels=g.labels, difficult=g.difficult, iscrowd=g.iscrowd, area=g.area, ann_ids=g.ann_ids,
                    box_format="xyxy")
    if dt_voc_pixels != to_voc:
        dt = DetTable(image_index=dt.image_index, boxes=_to_space(dt.xyxy(), dt_voc_pixels, to_voc),
                      scores=dt.scores, labels=dt.labels, box_format="xyxy")
    return g, dt, to_voc


@dataclass(frozen=True)
class EvalRun:
    """A scored evaluation with the inputs it used (for plots)."""

    report: EvalReport
    gt: GTTable
    dt: DetTable
    class_names: list[str]
    plus_one: bool
    image_files: tuple = ()  # image path per ground-truth image when known (YOLO lists, VOC roots), else None


def evaluate_files(gt_path: str | os.PathLike, pred_path: str | os.PathLike, metric: str = "voc",
                   names: Sequence[str] | None = None, iou_threshold: float = 0.5, conf_threshold: float = 0.25,
                   plus_one: bool | None = None, iou_rule: str = ">=", pred_format: PredFormat = "auto",
                   image_set: str | None = None) -> EvalRun:
    """Read ground truth and predictions from files and score them (see module docstring).

    ``plus_one=None`` picks the devkit default: +1 pixel IoU for VOC metrics on VOC XML ground
    truth, none otherwise.
    """
    gt = load_ground_truth(gt_path, names, image_set)
    grow = names is None and gt.kind == "voc"
    dt, dt_voc, class_names = load_predictions(pred_path, gt, pred_format, grow_classes=grow)
    g, d, default_plus_one = prepare_tables(gt, dt, dt_voc, metric)
    po = default_plus_one if plus_one is None else bool(plus_one)
    report = evaluate(g, d, class_names, metric=metric, iou_threshold=iou_threshold,  # type: ignore[arg-type]
                      conf_threshold=conf_threshold, plus_one=po, iou_rule=iou_rule)  # type: ignore[arg-type]
    return EvalRun(report=report, gt=g, dt=d, class_names=class_names, plus_one=po, image_files=gt.image_files)


# --------------------------------------------------------------------------- model-driven evaluation

def predictions_to_coco_json(dt: DetTable, image_ids: Sequence, class_names: Sequence[str]) -> list[dict]:
    """Detections (continuous xyxy pixels) -> COCO results list (``image_id`` = image stem,
    ``category_id`` = class index, ``bbox`` xywh), readable back by :func:`load_predictions`."""
    b = dt.xywh()
    return [{"image_id": image_ids[int(i)], "category_id": int(c), "bbox": [float(v) for v in bb], "score": float(s)}
            for i, c, bb, s in zip(dt.image_index, dt.labels, b, dt.scores)]


def evaluate_model(cfg: str | os.PathLike | None, weights: str | os.PathLike, data: str | os.PathLike, metric: str = "voc",
                   names: Sequence[str] | None = None, iou_threshold: float = 0.5, conf_threshold: float = 0.25,
                   img_size: int | None = None, nms: float = 0.45, pred_conf: float = 0.005, batch_size: int = 8,
                   save_pred: str | os.PathLike | None = None, plus_one: bool | None = None,
                   iou_rule: str = ">=", device: str = "auto") -> EvalRun:
    """Run the model on the validation images of ``data`` (obj.data / data.yaml / list file), then
    score the detections like :func:`evaluate_files` (continuous pixels, no +1 unless forced).
    ``weights`` may be an exported ``.onnx`` file (float32 or int8, run by onnxruntime) or an
    OpenVINO IR ``.xml`` (run by OpenVINO at detect's default precision); then ``cfg`` is not needed.

    Detections come from :class:`detkit.infer.predict.Predictor` (letterbox, per-class NMS,
    boxes in original pixels), kept down to ``pred_conf`` so AP sees the whole PR curve.
    """
    from detkit.infer.loading import load_model, load_onnx_model, load_openvino_model
    from detkit.infer.onnxrt import is_onnx_file
    from detkit.infer.openvino_model import is_openvino_file
    from detkit.infer.predict import Predictor

    gt = load_yolo_gt(data, names)
    if is_onnx_file(weights):  # an exported file (float32 or int8) run by onnxruntime; cfg unused
        model = load_onnx_model(weights, len(gt.class_names), classes_from="the dataset")
    elif is_openvino_file(weights):  # an OpenVINO IR (float32 or int8); cfg unused
        model = load_openvino_model(weights, len(gt.class_names), classes_from="the dataset")
    elif cfg is None:
        raise EvalError("model-driven evaluation needs --cfg (unless --weights is an .onnx or .xml model)")
    else:
        model, _ = load_model(cfg, weights, len(gt.class_names), purpose="evaluation", classes_from="the dataset")
    try:
        predictor = Predictor(model, img_size=img_size, conf=pred_conf, nms=nms, letterbox=True, device=device)
    except ValueError as exc:
        raise EvalError(str(exc)) from None
    img_index, boxes, scores, labels = [], [], [], []
    for k, res in enumerate(predictor.predict_paths(list(gt.image_files), batch_size=batch_size)):
        if res.error is not None:
            raise res.error
        det = res.detections
        if det is None or len(det) == 0:
            continue
        img_index.append(np.full(len(det), k, np.int64))
        boxes.append(np.asarray(det.boxes, np.float64))
        scores.append(np.asarray(det.scores, np.float64))
        labels.append(np.asarray(det.class_ids, np.int64))
    cat = (lambda xs, shape, t: np.concatenate(xs) if xs else np.zeros(shape, t))
    dt = DetTable(image_index=cat(img_index, (0,), np.int64), boxes=cat(boxes, (0, 4), np.float64),
                  scores=cat(scores, (0,), np.float64), labels=cat(labels, (0,), np.int64), box_format="xyxy")
    if save_pred is not None:
        from detkit.fileio import write_bytes_atomic
        res_list = predictions_to_coco_json(dt, gt.table.image_ids, gt.class_names)
        write_bytes_atomic(save_pred, (json.dumps(res_list) + "\n").encode("utf-8"), fsync=False, make_parents=True)
    g, d, default_plus_one = prepare_tables(gt, dt, False, metric)
    po = default_plus_one if plus_one is None else bool(plus_one)
    report = evaluate(g, d, gt.class_names, metric=metric, iou_threshold=iou_threshold,  # type: ignore[arg-type]
                      conf_threshold=conf_threshold, plus_one=po, iou_rule=iou_rule)  # type: ignore[arg-type]
    return EvalRun(report=report, gt=g, dt=d, class_names=list(gt.class_names), plus_one=po,
                   image_files=gt.image_files)
