"""The plain OpenCV DNN loop the end-to-end benchmark compares ``detkit detect`` with:
``cv2.imread`` -> ``cv2.dnn.blobFromImage`` (stretch to the input size, RGB, /255) -> ``forward``
-> per-row best class > conf -> ``cv2.dnn.NMSBoxes`` -> JSON.

Imports only cv2, numpy and json, so ``python -m detkit.bench.opencv_loop CFG WEIGHTS LIST OUT.json
[SIZE] [THREADS]`` measures what a user's first OpenCV script costs as a whole process.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np


def opencv_net(cfg: str, weights: str):
    """``cv2.dnn.readNetFromDarknet`` on the CPU with OpenCV's own backend, and its output names."""
    net = cv2.dnn.readNetFromDarknet(cfg, weights)
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    return net, net.getUnconnectedOutLayersNames()


def run_loop(cfg: str, weights: str, images: list[str], out_json: str, size: int = 416, conf: float = 0.25,
             nms: float = 0.45) -> int:
    """Run the loop over ``images``; writes the detections to ``out_json``, returns their count."""
    net, out_names = opencv_net(cfg, weights)
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
    Path(out_json).write_text(json.dumps(results))
    return len(results)


def main(argv: list[str]) -> int:
    if len(argv) not in (4, 5, 6):
        print("usage: python -m detkit.bench.opencv_loop CFG WEIGHTS LIST.txt OUT.json [SIZE] [THREADS]",
              file=sys.stderr)
        return 2
    cfg, weights, listing, out = argv[:4]
    size = int(argv[4]) if len(argv) > 4 else 416
    if len(argv) > 5:
        cv2.setNumThreads(int(argv[5]))
    images = [ln.strip() for ln in Path(listing).read_text(encoding="utf-8").splitlines() if ln.strip()]
    print(run_loop(cfg, weights, images, out, size))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
