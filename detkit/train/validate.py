"""Validation during training: VOC all-point mAP@0.5 of the (EMA) model on the validation loader."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def validate(model: nn.Module, loader, class_names: list[str], device: torch.device, ctx,
             conf_thres: float, nms_thres: float, channels_last: bool) -> float:
    """VOC all-point mAP@0.5 of ``model`` on the validation loader (in network-input pixels; the
    letterbox is a uniform scale + shift, so IoUs are those of the original images)."""
    from detkit.metrics.records import ImageDets, ImageGT
    from detkit.metrics.evaluator import evaluate
    from detkit.yolo.postprocess import postprocess

    was_training = model.training
    model.eval()
    gts, dets = [], []
    try:
        for images, targets, infos in loader:
            images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            h, w = images.shape[2:]
            with ctx:
                pred = model(images)
            results = postprocess(pred.float(), conf_thres=conf_thres, nms_thres=nms_thres)
            t = targets.numpy()
            for i, (det, info) in enumerate(zip(results, infos)):
                rows = t[t[:, 0] == i]
                cx, cy, bw, bh = rows[:, 2] * w, rows[:, 3] * h, rows[:, 4] * w, rows[:, 5] * h
                boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
                image_id = int(info["index"])
                ok = np.isfinite(det.boxes).all(axis=1) & np.isfinite(det.scores)
                if not ok.all():  # an early, unstable model can overflow exp(tw): such boxes match nothing
                    det = type(det)(boxes=det.boxes[ok], scores=det.scores[ok], class_ids=det.class_ids[ok])
                gts.append(ImageGT(image_id=image_id, boxes=boxes, labels=rows[:, 1].astype(np.int64),
                                   difficult=np.zeros(len(rows), dtype=bool)))
                dets.append(ImageDets(image_id=image_id, boxes=det.boxes, scores=det.scores, labels=det.class_ids))
    finally:
        model.train(was_training)
    report = evaluate(gts, dets, class_names, metric="voc", iou_threshold=0.5)
    value = float(report.map)
    return 0.0 if math.isnan(value) else value
