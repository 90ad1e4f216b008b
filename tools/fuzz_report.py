#!/usr/bin/env python
"""Run the long fuzz / fault-injection tier and write its figures.

    python tools/fuzz_report.py --examples 2000 --kills 30 --train-kills 5 --json fuzz_figures.json

Steps:

1. ``pytest tests/fuzz -m fuzz_long`` with ``DETKIT_FUZZ_EXAMPLES`` (hypothesis examples per
   parser test), ``DETKIT_FUZZ_KILLS`` (convert-voc SIGKILLs), ``DETKIT_FUZZ_TRAIN_KILLS``
   (training SIGKILLs); the suite writes its outcome counts (``DETKIT_FUZZ_STATS``).
2. The fast tier the same way (its counts are reported separately).
3. Evaluation at scale: a COCO ground truth of ``--eval-images`` images (3 boxes each) and a
   results file (10 detections per image), scored with the VOC and COCO metrics in a fresh
   process each; wall time and peak RSS (``ru_maxrss``) are reported.

Prints a markdown report (inputs tried per parser and outcome, faults injected, memory figures)
and, with ``--json``, writes the raw numbers. ``--doc docs/reliability.md`` replaces the text
between ``<!-- fuzz-report:start -->`` and ``<!-- fuzz-report:end -->`` in that file.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Peak RSS is read from /proc/self/status VmHWM: ru_maxrss survives fork + exec on Linux and would
# report the (large) parent's memory.
HWM = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) / 1024"
EVAL_CHILD = r"""
import json, sys, time
from detkit.evaluate.run import evaluate_files
t0 = time.perf_counter()
run = evaluate_files(sys.argv[1], sys.argv[2], sys.argv[3])
print(json.dumps({"seconds": time.perf_counter() - t0, "map": run.report.map, "peak_rss_mb": %s}))
""" % HWM


def run_pytest(marker: str, env_extra: dict[str, str], stats: Path, extra_args: list[str]) -> dict:
    env = dict(os.environ, **env_extra, DETKIT_FUZZ_STATS=str(stats))
    cmd = [sys.executable, "-m", "pytest", "tests/fuzz", "-q", "-p", "no:cacheprovider", "-m", marker,
           "-o", "addopts=-ra --strict-markers", *extra_args]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    tail = "\n".join(proc.stdout.strip().splitlines()[-3:])
    doc = json.loads(stats.read_text()) if stats.is_file() else {"outcomes": {}, "figures": {}}
    doc.update(command=" ".join(cmd[1:]), returncode=proc.returncode, seconds=round(wall, 1), summary=tail,
               env=env_extra)
    if proc.returncode != 0:
        doc["failures"] = proc.stdout[-6000:]
    return doc


def eval_at_scale(n_images: int, work: Path) -> dict:
    import numpy as np
    rng = np.random.default_rng(0)
    images = [{"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"} for i in range(n_images)]
    cats = [{"id": c, "name": f"c{c}"} for c in range(1, 21)]
    anns, res = [], []
    for i in range(n_images):
        for k in range(3):
            x, y = rng.uniform(0, 500, 2)
            w, h = rng.uniform(10, 140, 2)
            c = int(rng.integers(1, 21))
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
            res.append({"image_id": i, "category_id": c, "score": float(rng.uniform(0.3, 1)),
                        "bbox": [x + rng.normal(0, 5), y + rng.normal(0, 5), w, h]})
        for _ in range(7):
            x, y = rng.uniform(0, 500, 2)
            res.append({"image_id": i, "category_id": int(rng.integers(1, 21)), "score": float(rng.uniform(0, 1)),
                        "bbox": [x, y, float(rng.uniform(5, 100)), float(rng.uniform(5, 100))]})
    gt, pred = work / "gt.json", work / "res.json"
    gt.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    pred.write_text(json.dumps(res))
    out = {"images": n_images, "gt_boxes": len(anns), "detections": len(res),
           "gt_json_mb": round(gt.stat().st_size / 2**20, 1), "results_json_mb": round(pred.stat().st_size / 2**20, 1)}
    base = subprocess.run([sys.executable, "-c", f"import detkit.evaluate.run; print({HWM})"],
                          cwd=REPO, capture_output=True, text=True, check=True)
    out["import_only_peak_rss_mb"] = round(float(base.stdout.strip()), 1)
    for metric in ("voc", "coco"):
        p = subprocess.run([sys.executable, "-c", EVAL_CHILD, str(gt), str(pred), metric], cwd=REPO,
                           capture_output=True, text=True)
        if p.returncode:
            out[metric] = {"error": p.stderr[-500:]}
        else:
            r = json.loads(p.stdout.strip().splitlines()[-1])
            out[metric] = {"seconds": round(r["seconds"], 2), "map": round(r["map"], 4),
                           "peak_rss_mb": round(r["peak_rss_mb"], 1)}
    return out


def _outcome_table(outcomes: dict) -> list[str]:
    lines = ["| input / fault | tried | outcomes |", "|---|---:|---|"]
    for name, counts in sorted(outcomes.items()):
        total = sum(counts.values())
        detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
        lines.append(f"| `{name}` | {total} | {detail} |")
    return lines


def markdown(report: dict) -> str:
    long, fast = report["long"], report.get("fast")
    lines = [f"Measured {report['date']} on {report['machine']} with `{report['command']}`.", ""]
    lines += [f"**Long tier** (`pytest {long['command'].split('pytest ', 1)[-1]}`, env {long['env']}): "
              f"{long['seconds']} s, exit code {long['returncode']} — {long['summary'].splitlines()[-1]}", ""]
    lines += _outcome_table(long["outcomes"])
    if fast:
        lines += ["", f"**Fast tier** (default test run): {fast['seconds']} s, exit code {fast['returncode']} — "
                  f"{fast['summary'].splitlines()[-1]}", ""]
        lines += _outcome_table(fast["outcomes"])
    figs = {**(fast or {}).get("figures", {}), **long["figures"]}
    if figs:
        lines += ["", "| figure | value |", "|---|---|"]
        for k, v in sorted(figs.items()):
            if isinstance(v, list):
                from collections import Counter
                v = dict(Counter(v))
            lines.append(f"| `{k}` | {v} |")
    ev = report.get("eval")
    if ev:
        lines += ["", f"**Evaluation at scale**: {ev['images']:,} images, {ev['gt_boxes']:,} ground-truth boxes, "
                  f"{ev['detections']:,} detections (GT JSON {ev['gt_json_mb']} MB, results {ev['results_json_mb']} MB); "
                  f"a fresh process per metric (importing detkit.evaluate.run alone peaks at "
                  f"{ev['import_only_peak_rss_mb']} MB):", "", "| metric | seconds | peak RSS (MB) | mAP |",
                  "|---|---:|---:|---:|"]
        for m in ("voc", "coco"):
            r = ev[m]
            lines.append(f"| {m} | {r.get('seconds', '-')} | {r.get('peak_rss_mb', '-')} | {r.get('map', r.get('error', ''))} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=2000, help="hypothesis examples per long-tier test")
    ap.add_argument("--kills", type=int, default=30, help="convert-voc SIGKILLs")
    ap.add_argument("--train-kills", type=int, default=5, help="training SIGKILLs")
    ap.add_argument("--eval-images", type=int, default=10_000, help="images of the evaluation scale test (0: skip)")
    ap.add_argument("--no-fast", action="store_true", help="skip the fast tier run")
    ap.add_argument("-k", default=None, help="pytest -k expression (run part of the long tier)")
    ap.add_argument("--json", type=Path, default=None, help="write the raw figures here")
    ap.add_argument("--doc", type=Path, default=None, help="replace the fuzz-report section of this markdown file")
    args = ap.parse_args()
    extra = ["-k", args.k] if args.k else []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {"DETKIT_FUZZ_EXAMPLES": str(args.examples), "DETKIT_FUZZ_KILLS": str(args.kills),
               "DETKIT_FUZZ_TRAIN_KILLS": str(args.train_kills)}
        report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
                  "command": "python tools/fuzz_report.py " + " ".join(sys.argv[1:])}
        print("long tier ...", file=sys.stderr)
        report["long"] = run_pytest("fuzz_long", env, tmp / "long.json", extra)
        if not args.no_fast:
            print("fast tier ...", file=sys.stderr)
            report["fast"] = run_pytest("not slow and not fuzz_long", {}, tmp / "fast.json", [])
        if args.eval_images:
            print("evaluation at scale ...", file=sys.stderr)
            report["eval"] = eval_at_scale(args.eval_images, tmp)
    text = markdown(report)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    if args.doc:
        doc = args.doc.read_text(encoding="utf-8")
        start, end = "<!-- fuzz-report:start -->", "<!-- fuzz-report:end -->"
        if start in doc and end in doc:
            head, rest = doc.split(start, 1)
            args.doc.write_text(head + start + "\n" + text + end + rest.split(end, 1)[1], encoding="utf-8")
    failed = report["long"]["returncode"] or (report.get("fast") or {}).get("returncode", 0)
    if failed:
        print(report["long"].get("failures") or report["fast"].get("failures"), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
