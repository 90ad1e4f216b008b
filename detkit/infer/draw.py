"""Annotated images: boxes and ``"name 0.81"`` labels drawn on a copy of the image."""
from __future__ import annotations

import cv2
import numpy as np


def class_colour(class_id: int) -> tuple[int, int, int]:
    """A stable, distinct BGR colour per class."""
    hue = (class_id * 47) % 180
    hsv = np.array([[[hue, 220, 230]]], dtype=np.uint8)
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def draw_detections(image_rgb: np.ndarray, det, names: list[str]) -> np.ndarray:
    """Boxes and ``"name 0.81"`` labels on a BGR copy of the image (for cv2.imencode)."""
    out = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    h, w = out.shape[:2]
    thick = max(1, round(min(h, w) / 300))
    font_scale = max(0.4, min(h, w) / 900)
    for box, score, cid in list(zip(det.boxes, det.scores, det.class_ids))[::-1]:  # best drawn last
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        colour = class_colour(int(cid))
        cv2.rectangle(out, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), colour, thick)
        label = f"{names[int(cid)]} {score:.2f}".encode("ascii", "replace").decode()  # cv2 fonts are ASCII
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thick)
        ty = y1 - th - base - 2 if y1 - th - base - 2 >= 0 else y1
        cv2.rectangle(out, (x1, ty), (x1 + tw + 2, ty + th + base + 2), colour, -1)
        cv2.putText(out, label, (x1 + 1, ty + th + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    (0, 0, 0), max(1, thick - 1), cv2.LINE_AA)
    return out
