"""Benchmark ``detkit eval`` against pycocotools, faster-coco-eval and a plain devkit-rule VOC loop.

Generates a seeded COCO-style set (default: 5,000 images, 80 classes, ~37,000 objects, 500,000
detections) as JSON files in a temporary folder, then times, in one run and with JSON loading
included:

* pycocotools ``COCO`` + ``loadRes`` + ``COCOeval(bbox)`` evaluate/accumulate/summarize;
* faster-coco-eval ``COCO`` + ``loadRes`` + ``COCOeval_faster(bbox)`` (if installed);
* detkit ``evaluate_files(..., metric='coco')`` — its 12 stats must equal pycocotools' to 1e-12;
* detkit ``evaluate_files(..., metric='voc')`` vs a straightforward per-class, per-detection loop
  of the devkit rules (py-faster-rcnn ``voc_eval`` style) on the same files — the APs must agree.

Usage::

    python tools/bench_eval.py                 # full size
    python tools/bench_eval.py --scale 0.1     # 500 images, 50,000 detections (development)
    python tools/bench_eval.py --skip pycocotools --repeat 3 --json bench.json

Never imported by detkit.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def generate(n_images: int, n_classes: int, n_gt: int, n_det: int, seed: int) -> tuple[dict, list[dict]]:
    """A COCO-like set: objects of all sizes (some crowd), detections = jittered copies of objects
    (true and false positives at all IoUs, wrong classes) plus background boxes, 2-decimal scores."""
    rng = np.random.default_rng(seed)
    W, H = 640, 480
    images = [{"id": int(i), "width": W, "height": H, "file_name": f"{i:012d}.jpg"} for i in range(1, n_images + 1)]
    cats = [{"id": int(c), "name": f"class{c}"} for c in range(1, n_classes + 1)]
    img_of = rng.integers(1, n_images + 1, n_gt)
    # class frequencies skewed like COCO (a few frequent classes)
    p = 1.0 / np.arange(1, n_classes + 1) ** 0.8
    cls_of = rng.choice(np.arange(1, n_classes + 1), n_gt, p=p / p.sum())
    side = np.exp(rng.uniform(np.log(6), np.log(400), n_gt))
    aspect = np.exp(rng.normal(0, 0.5, n_gt))
    w = np.clip(side * np.sqrt(aspect), 2, W)
    h = np.clip(side / np.sqrt(aspect), 2, H)
    x = rng.uniform(0, 1, n_gt) * (W - w)
    y = rng.uniform(0, 1, n_gt) * (H - h)
    crowd = rng.random(n_gt) < 0.01
    area = w * h * rng.uniform(0.55, 0.95, n_gt)  # mask area, below the box area like COCO
    r2 = lambda a: np.round(a, 2)  # noqa: E731
    anns = [{"id": int(i + 1), "image_id": int(img_of[i]), "category_id": int(cls_of[i]),
             "bbox": [float(r2(x[i])), float(r2(y[i])), float(r2(w[i])), float(r2(h[i]))],
             "area": float(r2(area[i])), "iscrowd": int(crowd[i])} for i in range(n_gt)]
    # detections: ~45% near objects, the rest background
    n_near = int(n_det * 0.45)
    src = rng.integers(0, n_gt, n_near)
    jit = rng.normal(0, 1, (n_near, 4)) * np.stack([w[src], h[src], w[src], h[src]], 1) * \
        rng.choice([0.03, 0.1, 0.25, 0.6], n_near)[:, None]
    dx, dy = x[src] + jit[:, 0], y[src] + jit[:, 1]
    dw, dh = np.maximum(w[src] + jit[:, 2], 1), np.maximum(h[src] + jit[:, 3], 1)
    dcls = np.where(rng.random(n_near) < 0.85, cls_of[src], rng.integers(1, n_classes + 1, n_near))
    dimg = img_of[src]
    n_bg = n_det - n_near
    bside = np.exp(rng.uniform(np.log(6), np.log(400), n_bg))
    bw, bh = np.minimum(bside * rng.uniform(0.6, 1.4, n_bg), W), np.minimum(bside * rng.uniform(0.6, 1.4, n_bg), H)
    bx, by = rng.uniform(0, 1, n_bg) * (W - bw), rng.uniform(0, 1, n_bg) * (H - bh)
    bimg = rng.integers(1, n_images + 1, n_bg)
    bcls = rng.choice(np.arange(1, n_classes + 1), n_bg, p=p / p.sum())
    X = np.concatenate([dx, bx]); Y = np.concatenate([dy, by])
    Wd = np.concatenate([dw, bw]); Hd = np.concatenate([dh, bh])
    I = np.concatenate([dimg, bimg]); C = np.concatenate([dcls, bcls])
    S = np.concatenate([rng.beta(4, 2, n_near), rng.beta(1.2, 5, n_bg)])
    order = rng.permutation(n_det)
    X, Y, Wd, Hd, I, C, S = (r2(a[order]) if k < 4 else a[order] for k, a in enumerate((X, Y, Wd, Hd, I, C, S)))
    S = np.round(S, 3)  # ties in score
    dets = [{"image_id": int(I[k]), "category_id": int(C[k]), "bbox": [float(X[k]), float(Y[k]), float(Wd[k]),
                                                                         float(Hd[k])], "score": float(S[k])}
            for k in range(n_det)]
    return {"images": images, "annotations": anns, "categories": cats}, dets


def run_pycocotools(gt_path: Path, dt_path: Path) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        dt = gt.loadRes(str(dt_path))
        e = COCOeval(gt, dt, "bbox")
        e.evaluate(); e.accumulate(); e.summarize()
    return np.asarray(e.stats)


def run_faster(gt_path: Path, dt_path: Path) -> np.ndarray:
    from faster_coco_eval import COCO, COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        dt = gt.loadRes(str(dt_path))
        e = COCOeval_faster(gt, dt, "bbox", print_function=lambda *a, **k: None)
        e.evaluate(); e.accumulate(); e.summarize()
    return np.asarray(e.stats)[:12]


def run_detkit(gt_path: Path, dt_path: Path, metric: str):
    from detkit.evaluate.run import evaluate_files

    return evaluate_files(gt_path, dt_path, metric=metric).report


def load_json_pair(gt_path: Path, dt_path: Path) -> tuple[dict, list]:
    with open(gt_path) as f:
        gt = json.load(f)
    with open(dt_path) as f:
        dets = json.load(f)
    return gt, dets


def run_voc_loop(gt_path: Path, dt_path: Path, iou_thr: float = 0.5, loaded=None) -> dict[int, float]:
    """The straightforward implementation: per class, per detection, numpy IoU against that image's
    objects of the class (py-faster-rcnn voc_eval structure; stable sort; no +1; all-point AP).
    ``loaded``: already parsed (gt, dets) to time the evaluation alone."""
    gt, dets = loaded if loaded is not None else load_json_pair(gt_path, dt_path)
    out = {}
    for c in sorted(cat["id"] for cat in gt["categories"]):
        recs: dict = {}
        npos = 0
        for a in gt["annotations"]:
            if a["category_id"] != c:
                continue
            x, y, w, h = a["bbox"]
            r = recs.setdefault(a["image_id"], {"bb": [], "det": []})
            r["bb"].append([x, y, x + w, y + h]); r["det"].append(False)
            npos += 1
        mine = [d for d in dets if d["category_id"] == c]
        conf = np.array([d["score"] for d in mine])
        order = np.argsort(-conf, kind="stable")
        tp = np.zeros(len(mine)); fp = np.zeros(len(mine))
        for k, i in enumerate(order):
            d = mine[i]
            r = recs.get(d["image_id"])
            x, y, w, h = d["bbox"]
            bb = np.array([x, y, x + w, y + h])
            ovmax, jmax = -np.inf, -1
            if r is not None and r["bb"]:
                g = np.asarray(r["bb"])
                iw = np.minimum(g[:, 2], bb[2]) - np.maximum(g[:, 0], bb[0])
                ih = np.minimum(g[:, 3], bb[3]) - np.maximum(g[:, 1], bb[1])
                inter = iw * ih
                uni = (bb[2] - bb[0]) * (bb[3] - bb[1]) + (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1]) - inter
                ov = np.where((iw > 0) & (ih > 0), inter / uni, -np.inf)
                jmax = int(np.argmax(ov)); ovmax = ov[jmax]
            if ovmax >= iou_thr:
                if not r["det"][jmax]:
                    tp[k] = 1; r["det"][jmax] = True
                else:
                    fp[k] = 1
            else:
                fp[k] = 1
        if npos == 0:
            continue
        ctp, cfp = np.cumsum(tp), np.cumsum(fp)
        rec = ctp / npos
        prec = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
        mrec = np.concatenate(([0.], rec, [1.])); mpre = np.concatenate(([0.], prec, [0.]))
        for i in range(mpre.size - 1, 0, -1):
            mpre[i - 1] = max(mpre[i - 1], mpre[i])
        idx = np.where(mrec[1:] != mrec[:-1])[0]
        out[c] = float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))
    return out


def timed(fn, repeat: int):
    best, result = math.inf, None
    for _ in range(repeat):
        gc.collect()
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the full size (default 1.0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1, help="runs per tool, best time kept (default 1)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["pycocotools", "faster", "voc-loop"],
                    help="tools to leave out")
    ap.add_argument("--json", metavar="OUT", help="write the timings as JSON")
    args = ap.parse_args(argv)
    n_img, n_gt, n_det = int(5000 * args.scale), int(37000 * args.scale), int(500000 * args.scale)
    rows = []
    with tempfile.TemporaryDirectory() as td:
        t0 = time.perf_counter()
        gt, dets = generate(n_img, 80, n_gt, n_det, args.seed)
        gt_path, dt_path = Path(td) / "gt.json", Path(td) / "dt.json"
        gt_path.write_text(json.dumps(gt)); dt_path.write_text(json.dumps(dets))
        del gt, dets
        print(f"generated {n_img} images, 80 classes, {n_gt} objects, {n_det} detections "
              f"in {time.perf_counter() - t0:.1f}s ({dt_path.stat().st_size / 1e6:.0f} MB results JSON)")
        ref = None
        if "pycocotools" not in args.skip:
            t, ref = timed(lambda: run_pycocotools(gt_path, dt_path), args.repeat)
            rows.append(("pycocotools COCOeval", t, ref))
        if "faster" not in args.skip:
            try:
                t, st = timed(lambda: run_faster(gt_path, dt_path), args.repeat)
                rows.append(("faster-coco-eval", t, st))
            except ImportError:
                print("faster-coco-eval not installed (pip install 'detkit[bench]'); skipped")
        t, rep = timed(lambda: run_detkit(gt_path, dt_path, "coco"), args.repeat)
        rows.append(("detkit eval --metric coco", t, np.asarray(rep.stats)))
        print(f"\n{'tool':<28} {'seconds':>8}  AP       AP50     AR100    max |diff| vs pycocotools")
        for name, t, st in rows:
            diff = "-" if ref is None else f"{np.max(np.abs(np.asarray(st) - ref)):.1e}"
            print(f"{name:<28} {t:>8.2f}  {st[0]:.6f} {st[1]:.6f} {st[8]:.6f} {diff}")
        ok = True
        if ref is not None:
            ok = bool(np.max(np.abs(np.asarray(rep.stats) - ref)) <= 1e-12)
            print(f"detkit coco == pycocotools (all 12 stats, 1e-12): {ok}")
        t_voc, vrep = timed(lambda: run_detkit(gt_path, dt_path, "voc"), args.repeat)
        # evaluation alone, from already-read tables
        from detkit.evaluate.ground_truth import load_ground_truth
        from detkit.evaluate.predictions import load_predictions
        from detkit.evaluate.run import prepare_tables
        from detkit.metrics.evaluator import evaluate
        g0 = load_ground_truth(gt_path)
        d0, v0, names0 = load_predictions(dt_path, g0)
        gt_t, dt_t, _ = prepare_tables(g0, d0, v0, "voc")
        t_voc_eval, _ = timed(lambda g=gt_t, d=dt_t: evaluate(g, d, names0, metric="voc"), args.repeat)
        del g0, d0, gt_t, dt_t
        print(f"\n{'detkit eval --metric voc':<28} {t_voc:>8.2f}  mAP@.5 {vrep.map:.6f}  "
              f"(evaluation alone {t_voc_eval:.2f} s)")
        voc_row = {"detkit_voc_s": t_voc, "detkit_voc_eval_only_s": t_voc_eval}
        if "voc-loop" not in args.skip:
            t_loop, aps = timed(lambda: run_voc_loop(gt_path, dt_path), 1)
            loaded = load_json_pair(gt_path, dt_path)
            t_loop_eval, _ = timed(lambda: run_voc_loop(gt_path, dt_path, loaded=loaded), 1)
            del loaded
            mine = np.array([c.ap for c in vrep.classes])
            ref_ap = np.array([aps.get(c + 1, np.nan) for c in range(len(mine))])
            agree = bool(np.allclose(mine, ref_ap, rtol=0, atol=1e-12, equal_nan=True))
            print(f"{'per-class devkit loop':<28} {t_loop:>8.2f}  mAP@.5 {np.nanmean(ref_ap):.6f}  "
                  f"(evaluation alone {t_loop_eval:.2f} s)  APs agree: {agree}")
            print(f"VOC speed-up: {t_loop / t_voc:.1f}x end to end (JSON included), "
                  f"{t_loop_eval / t_voc_eval:.1f}x evaluation alone")
            voc_row.update(loop_s=t_loop, loop_eval_only_s=t_loop_eval, speedup=t_loop / t_voc,
                           speedup_eval_only=t_loop_eval / t_voc_eval, agree=agree)
            ok = ok and agree
    info = {"scale": args.scale, "images": n_img, "objects": n_gt, "detections": n_det, "seed": args.seed,
            "python": platform.python_version(), "machine": platform.machine(), "processor": platform.processor(),
            "coco": [{"tool": n, "seconds": t, "stats": [float(s) for s in st]} for n, t, st in rows], "voc": voc_row}
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
