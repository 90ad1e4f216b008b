"""Seeded random detection cases (objects, crowd regions, jittered / wrong-class / duplicate /
background detections, rounded scores for ties) as plain lists, for the TIDE differential tests."""
from __future__ import annotations

import numpy as np

from detkit.metrics.records import DetTable, GTTable


def make_case(seed: int, n_img: int = 30, C: int = 4, max_gt: int = 6, n_bg: int = 3, crowd_p: float = 0.05,
              score_decimals: int = 2, empty_p: float = 0.1):
    """(n_img, C, gts [(img, cls, xywh, crowd)], dets [(img, cls, score, xywh)]), dets shuffled."""
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for i in range(n_img):
        k = 0 if rng.random() < empty_p else int(rng.integers(1, max_gt + 1))
        for _ in range(k):
            w, h = rng.uniform(8, 120, 2)
            x, y = rng.uniform(0, 500, 2)
            c = int(rng.integers(C))
            gts.append((i, c, [float(x), float(y), float(w), float(h)], bool(rng.random() < crowd_p)))
            if rng.random() < 0.1:
                continue  # missed
            for _ in range(int(rng.integers(1, 4))):
                s = rng.uniform(0, 0.6)
                b = [x + rng.normal(0, s * w / 2), y + rng.normal(0, s * h / 2),
                     w * np.exp(rng.normal(0, s)), h * np.exp(rng.normal(0, s))]
                cc = c if rng.random() < 0.8 else int(rng.integers(C))
                dets.append((i, cc, round(float(rng.uniform(0.05, 1)), score_decimals), [float(v) for v in b]))
        if rng.random() < 0.9:
            for _ in range(int(rng.integers(0, n_bg + 1))):
                w, h = rng.uniform(5, 80, 2)
                x, y = rng.uniform(0, 550, 2)
                dets.append((i, int(rng.integers(C)), round(float(rng.uniform(0.01, 0.7)), score_decimals),
                             [float(x), float(y), float(w), float(h)]))
    perm = rng.permutation(len(dets))
    return n_img, C, gts, [dets[j] for j in perm]


def case_tables(n_img, C, gts, dets) -> tuple[GTTable, DetTable]:
    gt = GTTable(image_ids=tuple(range(n_img)), image_index=np.array([g[0] for g in gts], np.int64),
                 boxes=np.array([g[2] for g in gts], np.float64).reshape(-1, 4),
                 labels=np.array([g[1] for g in gts], np.int64), difficult=np.zeros(len(gts), bool),
                 iscrowd=np.array([g[3] for g in gts], bool), box_format="xywh")
    dt = DetTable(image_index=np.array([d[0] for d in dets], np.int64),
                  boxes=np.array([d[3] for d in dets], np.float64).reshape(-1, 4),
                  scores=np.array([d[2] for d in dets], np.float64), labels=np.array([d[1] for d in dets], np.int64),
                  box_format="xywh")
    return gt, dt


def run_tidecv(n_img, C, gts, dets, max_dets: int = 100):
    """tidecv's numbers for a case: (AP, {main type: dAP}, {special: dAP}, {type: count}), percent."""
    from tidecv import Data

    g = Data("gt", max_dets=max_dets)
    p = Data("pred")
    for i in range(n_img):
        g.add_image(i, str(i))
    for c in range(C):
        g.add_class(c, f"c{c}")
    for (i, c, b, crowd) in gts:
        (g.add_ignore_region if crowd else g.add_ground_truth)(i, c, b)
    for (i, c, s, b) in dets:
        p.add_detection(i, c, s, b)
    return tidecv_numbers(g, p)


def tidecv_numbers(g, p):
    from tidecv import TIDE

    t = TIDE()
    t.evaluate(g, p, mode=TIDE.BOX, name="run")
    run = t.runs["run"]
    counts = {k.short_name: v for k, v in run.count_errors().items()}
    return run.ap, t.get_main_errors()["run"], t.get_special_errors()["run"], counts
