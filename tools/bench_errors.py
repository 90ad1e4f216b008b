"""Benchmark detkit's full analysis (TIDE errors + F1/threshold curves + per-image results) against
tidecv and against detkit's plain COCO evaluation, on the set of tools/bench_eval.py.

In one run, on the same generated files (JSON loading included in every end-to-end time):

* detkit plain: ``evaluate_files(gt, dt, metric='coco')`` (what ``detkit eval --metric coco`` runs);
* detkit full: the same plus ``analyze`` (errors, curves, per-image counts; what ``--errors
  --per-image`` adds), and the analysis alone;
* tidecv 1.0.1 (``TIDE().evaluate`` + ``get_main_errors`` + ``get_special_errors``, its
  ``Data`` filled from the same JSON as ``tidecv.datasets.COCO`` / ``COCOResult`` do, boxes only),
  in a child process killed after ``--tidecv-timeout`` seconds. When it does not finish on the
  whole set it is run on the first ``--tidecv-scale`` fraction of the images (detections of
  those images only) and detkit is timed on the same subset for the ratio.

Every dAP of detkit must equal tidecv's within 1e-6 AP points (exit status 1 otherwise). Peak RSS of
the detkit process and of the tidecv child are printed.

Usage::

    python tools/bench_errors.py                       # full size, tidecv on the full set
    python tools/bench_errors.py --scale 0.1           # development size
    python tools/bench_errors.py --tidecv-scale 0.2    # tidecv on 20 % of the images

Never imported by detkit.
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from bench_eval import generate  # noqa: E402

TIDECV_CHILD = r"""
import json, resource, sys, time
from tidecv import TIDE, Data  # imports (matplotlib, pandas, seaborn: ~3 s) are not timed, as for detkit
t0, c0 = time.perf_counter(), time.process_time()
gj = json.load(open(sys.argv[1])); dj = json.load(open(sys.argv[2]))
g, p = Data("gt", max_dets=100), Data("pred")
for im in gj["images"]:
    g.add_image(im["id"], im.get("file_name", str(im["id"])))
for c in gj["categories"]:
    g.add_class(c["id"], c["name"])
for a in gj["annotations"]:
    (g.add_ignore_region if a.get("iscrowd", 0) else g.add_ground_truth)(a["image_id"], a["category_id"], a["bbox"])
for d in dj:
    p.add_detection(d["image_id"], d["category_id"], d["score"], d["bbox"])
t = TIDE()
t.evaluate(g, p, mode=TIDE.BOX, name="run")
main = t.get_main_errors()["run"]; special = t.get_special_errors()["run"]
run = t.runs["run"]
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]  # this process only (ru_maxrss
# would report the parent's size at fork time when that is larger)
print(json.dumps({"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0, "ap": run.ap, "main": main, "special": special,
                  "counts": {k.short_name: v for k, v in run.count_errors().items()},
                  "peak_rss_mb": int(hwm[0].split()[1]) / 1024 if hwm else float("nan")}))
"""


def subset(gt: dict, dets: list, fraction: float) -> tuple[dict, list]:
    """The first ``fraction`` of the images with their objects and detections."""
    n = max(1, int(round(len(gt["images"]) * fraction)))
    keep = {im["id"] for im in gt["images"][:n]}
    return ({"images": gt["images"][:n], "categories": gt["categories"],
             "annotations": [a for a in gt["annotations"] if a["image_id"] in keep]},
            [d for d in dets if d["image_id"] in keep])


def run_tidecv(gt_path: Path, dt_path: Path, timeout: float) -> dict | None:
    try:
        out = subprocess.run([sys.executable, "-c", TIDECV_CHILD, str(gt_path), str(dt_path)], capture_output=True,
                             text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if out.returncode != 0:
        raise SystemExit(f"tidecv failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def timed(fn, repeat: int):
    """Best of ``repeat`` runs: (wall seconds, CPU seconds of that run, result)."""
    best, cpu, result = float("inf"), float("inf"), None
    for _ in range(repeat):
        gc.collect()
        t, c = time.perf_counter(), time.process_time()
        result = fn()
        w = time.perf_counter() - t
        if w < best:
            best, cpu = w, time.process_time() - c
    return best, cpu, result


def detkit_times(gt_path: Path, dt_path: Path, repeat: int) -> dict:
    from detkit.evaluate.run import evaluate_files
    from detkit.metrics.analysis import analyze

    def full():
        run = evaluate_files(gt_path, dt_path, metric="coco")
        return run, analyze(run.report, run.gt, run.dt, run.class_names)

    t_plain, c_plain, run = timed(lambda: evaluate_files(gt_path, dt_path, metric="coco"), repeat)
    t_full, c_full, (run, an) = timed(full, repeat)
    t_alone, c_alone, an = timed(lambda: analyze(run.report, run.gt, run.dt, run.class_names), repeat)
    return {"plain_s": t_plain, "full_s": t_full, "analysis_only_s": t_alone, "plain_cpu_s": c_plain,
            "full_cpu_s": c_full, "analysis_only_cpu_s": c_alone, "analysis": an, "ap": run.report.map}


def compare(an, tc: dict) -> float:
    e = an.errors
    diffs = [abs(100 * e.ap - tc["ap"])] + [abs(100 * e.dap[k] - v) for k, v in tc["main"].items()] + \
        [abs(100 * e.special[k] - v) for k, v in tc["special"].items()]
    return float(max(diffs))


def write_report(gt_path: Path, dt_path: Path, img_dir: Path, out_dir: Path) -> dict:
    from PIL import Image

    from detkit.evaluate.analysis_outputs import AnalysisRequest, run_analysis
    from detkit.evaluate.run import evaluate_files

    img_dir.mkdir()
    one = img_dir / "_one.jpg"
    Image.new("RGB", (640, 480), (120, 130, 140)).save(one, quality=80)
    for im in json.loads(gt_path.read_text())["images"]:
        (img_dir / im["file_name"]).symlink_to(one)
    run = evaluate_files(gt_path, dt_path, metric="coco")
    t = time.perf_counter()
    out = run_analysis(run, AnalysisRequest(report_dir=out_dir, images_dir=img_dir))
    dt = time.perf_counter() - t
    r = out.report
    print(f"HTML report: {r.path} {r.size_bytes / 1e6:.2f} MB, {r.thumbnails} thumbnails, "
          f"analysis + report {dt:.2f} s")
    return {"size_bytes": r.size_bytes, "thumbnails": r.thumbnails, "seconds": dt}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the full benchmark set (default 1.0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1, help="runs of each detkit timing, best kept")
    ap.add_argument("--tidecv-scale", type=float, default=1.0,
                    help="fraction of the images tidecv (and the ratio's detkit run) gets (default 1.0)")
    ap.add_argument("--tidecv-timeout", type=float, default=600.0, help="seconds before tidecv is stopped")
    ap.add_argument("--skip-tidecv", action="store_true")
    ap.add_argument("--json", metavar="OUT", help="write the figures as JSON")
    ap.add_argument("--report", metavar="DIR", help="also write the HTML report of the whole set here (gallery "
                    "images: one generated 640x480 JPEG linked under every file name) and print its size and time")
    args = ap.parse_args(argv)
    n_img, n_gt, n_det = int(5000 * args.scale), int(37000 * args.scale), int(500000 * args.scale)
    info: dict = {"scale": args.scale, "images": n_img, "objects": n_gt, "detections": n_det, "seed": args.seed,
                  "python": platform.python_version(), "machine": platform.machine()}
    ok = True
    with tempfile.TemporaryDirectory() as td:
        gt, dets = generate(n_img, 80, n_gt, n_det, args.seed)
        gt_path, dt_path = Path(td) / "gt.json", Path(td) / "dt.json"
        gt_path.write_text(json.dumps(gt)); dt_path.write_text(json.dumps(dets))
        sub_paths = (gt_path, dt_path)
        if args.tidecv_scale < 1.0:
            sg, sd = subset(gt, dets, args.tidecv_scale)
            sub_paths = (Path(td) / "gt_sub.json", Path(td) / "dt_sub.json")
            sub_paths[0].write_text(json.dumps(sg)); sub_paths[1].write_text(json.dumps(sd))
            info["tidecv_subset"] = {"images": len(sg["images"]), "objects": len(sg["annotations"]), "detections": len(sd)}
            del sg, sd
        del gt, dets
        print(f"set: {n_img} images, 80 classes, {n_gt} objects, {n_det} detections")
        d = detkit_times(gt_path, dt_path, args.repeat)
        ratio = d["full_s"] / d["plain_s"]
        print(f"detkit plain COCO eval          {d['plain_s']:8.2f} s   (CPU {d['plain_cpu_s']:.2f} s)  AP {d['ap']:.6f}")
        print(f"detkit eval + full analysis     {d['full_s']:8.2f} s   (CPU {d['full_cpu_s']:.2f} s)  {ratio:.2f}x plain, "
              f"CPU {d['full_cpu_s'] / d['plain_cpu_s']:.2f}x (analysis alone {d['analysis_only_s']:.2f} s)")
        e = d["analysis"].errors
        print("detkit TIDE AP {:.4f}  dAP ".format(100 * e.ap) +
              " ".join(f"{k} {100 * v:.4f}" for k, v in {**e.dap, **e.special}.items()))
        info.update(detkit_plain_s=d["plain_s"], detkit_full_s=d["full_s"], detkit_analysis_only_s=d["analysis_only_s"],
                    detkit_plain_cpu_s=d["plain_cpu_s"], detkit_full_cpu_s=d["full_cpu_s"],
                    full_over_plain=ratio, tide_ap=e.ap, dap=e.dap, special=e.special)
        if args.report:
            info["report"] = write_report(gt_path, dt_path, Path(td) / "images", Path(args.report))
        if not args.skip_tidecv:
            ds = d if args.tidecv_scale >= 1.0 else detkit_times(*sub_paths, args.repeat)
            t0 = time.perf_counter()
            tc = run_tidecv(*sub_paths, args.tidecv_timeout)
            if tc is None:
                print(f"tidecv did not finish within {args.tidecv_timeout:.0f} s "
                      f"(rerun with a smaller --tidecv-scale); elapsed {time.perf_counter() - t0:.0f} s")
                ok = False
            else:
                diff = compare(ds["analysis"], tc)
                speed = tc["seconds"] / ds["full_s"]
                speed_cpu = tc["cpu_seconds"] / ds["full_cpu_s"]
                where = "whole set" if args.tidecv_scale >= 1.0 else f"first {args.tidecv_scale:g} of the images"
                print(f"tidecv ({where})   {tc['seconds']:8.2f} s   (CPU {tc['cpu_seconds']:.2f} s)  "
                      f"peak RSS {tc['peak_rss_mb']:.0f} MB")
                print(f"detkit full analysis, same set  {ds['full_s']:8.2f} s   -> {speed:.1f}x faster than tidecv "
                      f"(CPU time: {speed_cpu:.1f}x); max |dAP diff| {diff:.1e} AP points")
                ok = ok and diff <= 1e-6
                info.update(tidecv_s=tc["seconds"], tidecv_cpu_s=tc["cpu_seconds"], speedup_cpu=speed_cpu, tidecv_peak_rss_mb=tc["peak_rss_mb"],
                            detkit_full_same_set_s=ds["full_s"], speedup_vs_tidecv=speed, max_dap_diff=diff,
                            tidecv_where=where)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of the detkit process (generation and --report included): {rss:.0f} MB")
    info["detkit_peak_rss_mb"] = rss
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=1, default=float))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
