"""Make the example HTML report (and its screenshot, docs/img/eval_report.png) on real images.

Ground truth: the BCCD test split of ../shared/data/bccd (real blood-cell photos, 3 classes).
Detections are *simulated* (seeded): jittered copies of the objects at all IoUs (some with the
wrong class, some duplicated), missed objects, and background boxes — so every error type shows.
Then it runs what ``detkit eval --metric voc --errors --report DIR`` runs and, when Chromium is on
PATH, takes a headless screenshot of the page opened from disk.

Usage::

    python tools/eval_report_example.py --out runs/report_example [--screenshot docs/img/eval_report.png]

Never imported by detkit.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BCCD = ROOT.parent / "shared" / "data" / "bccd"


def simulate(gt_table, n_classes: int, seed: int) -> list[dict]:
    """COCO-style results (image_id = image stem, category_id = class index, continuous xywh)."""
    rng = np.random.default_rng(seed)
    b = gt_table.boxes  # VOC 1-based inclusive pixels
    x1, y1, w, h = b[:, 0] - 1, b[:, 1] - 1, b[:, 2] - b[:, 0] + 1, b[:, 3] - b[:, 1] + 1
    res = []
    for k in range(len(gt_table)):
        if rng.random() < 0.12:
            continue  # missed
        for _ in range(1 if rng.random() < 0.85 else 2):  # sometimes a duplicate
            s = rng.choice([0.03, 0.08, 0.2, 0.45])
            j = rng.normal(0, s, 4) * np.array([w[k], h[k], w[k], h[k]])
            c = int(gt_table.labels[k]) if rng.random() < 0.9 else int(rng.integers(n_classes))
            score = float(np.clip(0.95 - 1.2 * s + rng.normal(0, 0.1), 0.01, 1))
            res.append({"image_id": gt_table.image_ids[int(gt_table.image_index[k])], "category_id": c,
                        "bbox": [float(x1[k] + j[0]), float(y1[k] + j[1]), float(max(w[k] + j[2], 2)),
                                 float(max(h[k] + j[3], 2))], "score": round(score, 3)})
    for i, iid in enumerate(gt_table.image_ids):  # background boxes
        for _ in range(int(rng.integers(0, 3))):
            bw, bh = rng.uniform(30, 120, 2)
            res.append({"image_id": iid, "category_id": int(rng.integers(n_classes)),
                        "bbox": [float(rng.uniform(0, 640 - bw)), float(rng.uniform(0, 480 - bh)), float(bw), float(bh)],
                        "score": round(float(rng.uniform(0.01, 0.6)), 3)})
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/report_example", help="report folder (default runs/report_example)")
    ap.add_argument("--screenshot", metavar="PNG", help="also save a screenshot of the page (needs chromium)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not BCCD.is_dir():
        print(f"{BCCD} is absent", file=sys.stderr)
        return 1
    from detkit.evaluate.analysis_outputs import AnalysisRequest, run_analysis
    from detkit.evaluate.ground_truth import load_ground_truth
    from detkit.evaluate.run import evaluate_files

    gt = load_ground_truth(BCCD, image_set="test")
    with tempfile.TemporaryDirectory() as td:
        pred = Path(td) / "simulated_results.json"
        pred.write_text(json.dumps(simulate(gt.table, len(gt.class_names), args.seed)))
        run = evaluate_files(BCCD, pred, metric="voc", image_set="test", conf_threshold=0.25)
        out = run_analysis(run, AnalysisRequest(errors=True, report_dir=args.out))
    print(run.report.format_table())
    print(out.text)
    print(f"wrote {out.report.path} ({out.report.size_bytes / 1e6:.2f} MB, {out.report.thumbnails} thumbnails)")
    if args.screenshot:
        browser = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
        if browser is None:
            print("no chromium on PATH: no screenshot", file=sys.stderr)
            return 1
        with tempfile.TemporaryDirectory() as prof:
            subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={prof}",
                            "--hide-scrollbars", "--window-size=1280,2600", f"--screenshot={Path(args.screenshot).resolve()}",
                            out.report.path.resolve().as_uri()], check=True, capture_output=True, timeout=120)
        print(f"wrote {args.screenshot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
