"""Benchmark ``detkit convert-voc``: throughput on a generated VOC set with real JPEG files.

Usage: python tools/bench_convert.py [--n 10000] [--objects 3] [--workdir DIR] [--copy]

Generates N labelImg-style pairs (XML + a small real JPEG, 8 distinct sizes, 1-6 objects each,
some Chinese file names), then times the full conversion with validation on (XML parsing,
image header + truncation check, box checks, renaming, labels, lists, report). Generation is not
timed. Prints one JSON line: wall-clock throughput, and CPU time (user + system) of the conversion,
which is what an idle machine's wall clock would show for this single-threaded loop when the disk
keeps up (on a shared, busy machine the wall clock mostly measures the other processes).
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from detkit.convert.options import ConvertOptions
from detkit.convert.voc_to_yolo import convert_voc


def generate(root: Path, n: int, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    sizes = [(320, 240), (640, 480), (500, 375), (375, 500), (416, 416), (800, 600), (300, 200), (256, 256)]
    blobs = []
    for w, h in sizes:
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)).resize((w, h)).save(buf, "JPEG",
                                                                                                   quality=70)
        blobs.append((w, h, buf.getvalue()))
    total = 0
    for i in range(n):
        folder = root / (f"场景_{i // 1000}" if i % 2 else f"scene_{i // 1000}")
        folder.mkdir(parents=True, exist_ok=True)
        w, h, data = blobs[i % len(blobs)]
        stem = f"图片_{i:05d}" if i % 3 == 0 else f"img_{i:05d}"
        (folder / f"{stem}.jpg").write_bytes(data)
        objs = []
        for _ in range(int(rng.integers(1, 7))):
            x1, y1 = int(rng.integers(1, w - 20)), int(rng.integers(1, h - 20))
            x2, y2 = int(rng.integers(x1 + 5, w + 1)), int(rng.integers(y1 + 5, h + 1))
            name = ("cat", "dog", "bird")[int(rng.integers(0, 3))]
            objs.append(f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
                        f"<difficult>0</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax>"
                        f"<ymax>{y2}</ymax></bndbox></object>")
        total += len(objs)
        (folder / f"{stem}.xml").write_text(
            f"<annotation><folder>x</folder><filename>{stem}.jpg</filename><path>C:\\x\\{stem}.jpg</path>"
            f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>{''.join(objs)}</annotation>",
            encoding="utf-8")
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--copy", action="store_true", help="copy images instead of hard-linking")
    args = ap.parse_args()
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench_convert_", dir=args.workdir))
    try:
        src, out = work / "src", work / "out"
        t0 = time.perf_counter()
        objects = generate(src, args.n)
        t_gen = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.process_time()
        res = convert_voc(src, out, ConvertOptions(link="copy" if args.copy else "link"))
        t, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(json.dumps({"annotations": args.n, "objects": objects, "converted": res.images,
                          "seconds": round(t, 3), "annotations_per_s": round(args.n / t, 1),
                          "cpu_seconds": round(cpu, 3), "annotations_per_cpu_s": round(args.n / cpu, 1),
                          "generate_seconds": round(t_gen, 1), "mode": "copy" if args.copy else "link"}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
