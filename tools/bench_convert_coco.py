"""Benchmark ``detkit convert`` COCO -> YOLO against straightforward json + per-annotation loops.

Usage: python tools/bench_convert_coco.py [--annotations 100000] [--per-image 50] [--repeats 3] [--workdir DIR]

Generates one COCO JSON with N annotations (``--per-image`` per image, 80 categories with COCO's
non-contiguous ids 1..90, a third of the file names Chinese) and the real JPEG files it names
(detkit reads every image header; the loops do not). Then, interleaved in each repeat, times:

* ``detkit``: ``convert_dataset(json, out, DatasetOptions(to="yolo", images=...))``: the whole
  conversion (JSON parse and checks, image header reads, box checks and clipping, ASCII-safe
  names, hard links, label files and their copies, lists, names, rename_map.csv, report);
* ``loop_numpy``: ``json.load``, annotations grouped by image in a dict, then per annotation the
  box maths on a small numpy array (the structure of ultralytics' ``convert_coco``, written here
  from its description, not copied: ultralytics is AGPL and not installed offline) and one label
  file per image;
* ``loop_python``: the same with plain Python floats (no numpy per annotation);
* ``floor``: the least work that turns this JSON into label files: msgspec's typed decode of only
  the fields used (``image_id``, ``category_id``, ``bbox``; width/height trusted), numpy grouping
  by image, all lines formatted at once (detkit's ``label_lines``), one ``os.open``/``os.write`` per
  label file. No checks, no images, no lists, no report;
* ``ultralytics``: ``ultralytics.data.converter.convert_coco(labels_dir, save_dir, cls91to80=False)``
  when ultralytics can be imported (it is not a detkit dependency; e.g.
  ``pip install --no-deps --target /tmp/ultra ultralytics`` then ``PYTHONPATH=/tmp/ultra``);
  left out otherwise.

The loops and the floor write only label files (no images, lists, names or report) and trust the
JSON's width/height. Each repeat also times parsing alone (``json.loads``, ``orjson.loads``,
msgspec typed) on the bytes in memory. ``--workdir`` on a tmpfs (``/dev/shm/...``) takes the
disk's file-creation latency (shared, very variable on a VM) out of every contender. Prints the CPU model and flags, each repeat, and per contender the median and the
spread (min..max) of annotations per second, and detkit's speed-up over each loop.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from collections import defaultdict
from itertools import chain
from pathlib import Path

import msgspec
import numpy as np
from PIL import Image

from detkit.convert.any_format import convert_dataset
from detkit.convert.fastlabels import label_lines
from detkit.convert.options import DatasetOptions

COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]  # COCO's 80 ids


def generate(root: Path, n_ann: int, per_image: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    sizes = [(640, 480), (500, 375), (375, 500), (416, 416)]
    blobs = []
    for w, h in sizes:
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)).resize((w, h)).save(
            buf, "JPEG", quality=60)
        blobs.append((w, h, buf.getvalue()))
    (root / "images").mkdir(parents=True)
    n_img = (n_ann + per_image - 1) // per_image
    images, anns = [], []
    for i in range(n_img):
        w, h, data = blobs[i % len(blobs)]
        name = f"图片_{i:06d}.jpg" if i % 3 == 0 else f"img_{i:06d}.jpg"
        (root / "images" / name).write_bytes(data)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
    k = np.arange(n_ann)
    img = k // per_image
    wh = np.array([blobs[i % len(blobs)][:2] for i in range(n_img)], np.float64)[img]
    x = rng.uniform(0, 0.8, n_ann) * wh[:, 0]
    y = rng.uniform(0, 0.8, n_ann) * wh[:, 1]
    bw = rng.uniform(0.01, 0.2, n_ann) * wh[:, 0]
    bh = rng.uniform(0.01, 0.2, n_ann) * wh[:, 1]
    cats = rng.integers(0, len(COCO_IDS), n_ann)
    for j in range(n_ann):
        anns.append({"id": j + 1, "image_id": int(img[j]) + 1, "category_id": COCO_IDS[cats[j]],
                     "bbox": [round(float(x[j]), 2), round(float(y[j]), 2), round(float(bw[j]), 2),
                              round(float(bh[j]), 2)],
                     "area": round(float(bw[j] * bh[j]), 2), "iscrowd": 0, "segmentation": []})
    doc = {"images": images, "annotations": anns,
           "categories": [{"id": c, "name": f"class_{c}", "supercategory": ""} for c in COCO_IDS]}
    jf = root / "annotations" / "instances_train.json"
    jf.parent.mkdir()
    jf.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return jf


def loop_numpy(jf: Path, out: Path) -> int:
    with open(jf, encoding="utf-8") as fh:
        data = json.load(fh)
    cat_index = {c["id"]: k for k, c in enumerate(sorted(data["categories"], key=lambda c: c["id"]))}
    images = {im["id"]: im for im in data["images"]}
    by_image = defaultdict(list)
    for a in data["annotations"]:
        by_image[a["image_id"]].append(a)
    out.mkdir(parents=True)
    n = 0
    for iid, anns in by_image.items():
        im = images[iid]
        w, h = im["width"], im["height"]
        lines = []
        for a in anns:
            if a.get("iscrowd"):
                continue
            box = np.array(a["bbox"], dtype=np.float64)
            box[:2] += box[2:] / 2
            box[[0, 2]] /= w
            box[[1, 3]] /= h
            if box[2] <= 0 or box[3] <= 0:
                continue
            lines.append((cat_index[a["category_id"]], *box.tolist()))
            n += 1
        with open(out / (Path(im["file_name"]).stem + ".txt"), "w", encoding="utf-8") as f:
            f.writelines("%d %.6f %.6f %.6f %.6f\n" % row for row in lines)
    return n


def loop_python(jf: Path, out: Path) -> int:
    with open(jf, encoding="utf-8") as fh:
        data = json.load(fh)
    cat_index = {c["id"]: k for k, c in enumerate(sorted(data["categories"], key=lambda c: c["id"]))}
    images = {im["id"]: im for im in data["images"]}
    by_image = defaultdict(list)
    for a in data["annotations"]:
        by_image[a["image_id"]].append(a)
    out.mkdir(parents=True)
    n = 0
    for iid, anns in by_image.items():
        im = images[iid]
        w, h = im["width"], im["height"]
        lines = []
        for a in anns:
            if a.get("iscrowd"):
                continue
            x, y, bw, bh = a["bbox"]
            if bw <= 0 or bh <= 0:
                continue
            lines.append(f"{cat_index[a['category_id']]} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} "
                         f"{bw / w:.6f} {bh / h:.6f}\n")
            n += 1
        with open(out / (Path(im["file_name"]).stem + ".txt"), "w", encoding="utf-8") as f:
            f.writelines(lines)
    return n


class _Ann(msgspec.Struct, gc=False):
    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float]
    iscrowd: int = 0


class _Img(msgspec.Struct, gc=False):
    id: int
    file_name: str
    width: int
    height: int


class _Cat(msgspec.Struct, gc=False):
    id: int


class _Doc(msgspec.Struct, gc=False):
    images: list[_Img]
    annotations: list[_Ann]
    categories: list[_Cat]


class _AnnOnly(msgspec.Struct, gc=False):
    annotations: list[_Ann]


_FLOOR_DECODER = msgspec.json.Decoder(_Doc)
_PARSE_DECODER = msgspec.json.Decoder(_AnnOnly)


def floor(jf: Path, out: Path) -> int:
    doc = _FLOOR_DECODER.decode(jf.read_bytes())
    anns = doc.annotations
    n = len(anns)
    box = np.fromiter(chain.from_iterable([a.bbox for a in anns]), np.float64, 4 * n).reshape(n, 4)
    iid = np.fromiter([a.image_id for a in anns], np.int64, n)
    cid = np.fromiter([a.category_id for a in anns], np.int64, n)
    keep = (np.fromiter([a.iscrowd for a in anns], np.int64, n) == 0) & (box[:, 2] > 0) & (box[:, 3] > 0)
    img_ids = np.array([im.id for im in doc.images], np.int64)
    k = np.searchsorted(np.sort(img_ids), iid[keep])  # image ids are 1..N, sorted, here
    cat = np.searchsorted(np.sort(np.array([c.id for c in doc.categories], np.int64)), cid[keep])
    order = np.argsort(k, kind="stable")
    k, cat, b = k[order], cat[order], box[keep][order]
    wh = np.array([(im.width, im.height) for im in doc.images], np.float64)[k]
    blob, off = label_lines(cat, b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3], wh[:, 0], wh[:, 1])
    first = np.searchsorted(k, np.arange(len(doc.images) + 1)).tolist()
    off = off.tolist()
    out.mkdir(parents=True)
    base = str(out)
    for j, im in enumerate(doc.images):
        fd = os.open(f"{base}/{os.path.splitext(im.file_name)[0]}.txt", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, blob[off[first[j]]:off[first[j + 1]]])
        os.close(fd)
    return int(keep.sum())


def parse_times(jf: Path) -> dict[str, float]:
    """Seconds to parse the file's bytes (already in memory) into Python objects."""
    import orjson

    data = jf.read_bytes()
    res = {}
    for name, fn in (("json.loads", json.loads), ("orjson.loads", orjson.loads),
                     ("msgspec_typed", _PARSE_DECODER.decode)):
        t = time.perf_counter()
        fn(data)
        res[name] = time.perf_counter() - t
    return res


def run_ultralytics(jf: Path, out: Path) -> int:
    import contextlib
    import io as _io

    from ultralytics.data.converter import convert_coco
    with contextlib.redirect_stdout(_io.StringIO()), contextlib.redirect_stderr(_io.StringIO()):
        convert_coco(labels_dir=str(jf.parent), save_dir=str(out), cls91to80=False)
    return sum(len(p.read_text().splitlines()) for p in out.rglob("*.txt"))


def run_detkit(jf: Path, out: Path) -> int:
    res = convert_dataset(jf, out, DatasetOptions(to="yolo", images=str(jf.parent.parent / "images"), force=True))
    return res.report["objects_written"]


def cpu_info() -> dict:
    info = {"machine": platform.machine(), "python": platform.python_version(), "cores": os.cpu_count()}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in text.splitlines():
            k, _, v = line.partition(":")
            if k.strip() in ("Model name", "Flags"):
                info[k.strip()] = v.strip()
    except (OSError, subprocess.CalledProcessError):
        info["Model name"] = platform.processor()
    try:
        info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--annotations", type=int, default=100_000)
    ap.add_argument("--per-image", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_convert_coco_"))
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    info = cpu_info()
    print(json.dumps({"cpu": info.get("Model name"), "flags": info.get("Flags"), "cores": info["cores"],
                      "python": info["python"], "load_average_start": info.get("load_average")}))
    t0 = time.perf_counter()
    jf = generate(work / "src", args.annotations, args.per_image)
    print(json.dumps({"generated": args.annotations, "json_bytes": jf.stat().st_size,
                      "seconds": round(time.perf_counter() - t0, 2)}))
    contenders = {"detkit": run_detkit, "loop_numpy": loop_numpy, "loop_python": loop_python, "floor": floor}
    try:
        import ultralytics
        contenders["ultralytics"] = run_ultralytics
        print(json.dumps({"ultralytics": ultralytics.__version__}))
    except ImportError:
        print(json.dumps({"ultralytics": "not importable: left out"}))
    rates: dict[str, list[float]] = {k: [] for k in contenders}
    parses: dict[str, list[float]] = {}
    for r in range(args.repeats):
        for k, v in parse_times(jf).items():
            parses.setdefault(k, []).append(v)
        order = list(contenders) if r % 2 == 0 else list(reversed(contenders))  # interleaved, alternating order
        for name in order:
            out = work / f"out_{name}"
            if out.exists():
                shutil.rmtree(out)
            t = time.perf_counter()
            n = contenders[name](jf, out)
            dt = time.perf_counter() - t
            rates[name].append(n / dt)
            print(json.dumps({"repeat": r, "contender": name, "annotations": n, "seconds": round(dt, 3),
                              "annotations_per_s": round(n / dt)}))
    summary = {k: {"median": round(statistics.median(v)), "min": round(min(v)), "max": round(max(v))}
               for k, v in rates.items()}
    for k in [c for c in contenders if c != "detkit"]:
        summary[f"detkit_over_{k}"] = round(statistics.median(rates["detkit"]) / statistics.median(rates[k]), 2)
    summary["floor_over_loop_python"] = round(statistics.median(rates["floor"]) / statistics.median(rates["loop_python"]), 2)
    summary["parse_seconds"] = {k: {"median": round(statistics.median(v), 3), "min": round(min(v), 3),
                                    "max": round(max(v), 3)} for k, v in parses.items()}
    summary["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(summary))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
