"""Run the darknet model zoo check and write docs/zoo.md.

For every detection cfg in ../shared/darknet_zoo: does detkit build it (or why not), the max
difference of its forward pass against OpenCV DNN's darknet importer and against darknet itself
(fixed-seed random weights written by detkit, one random input of --size), the tolerance
max(1e-4, 4 x detkit's float32-vs-float64 difference), and whether save -> load -> save of its
.weights is byte-identical. darknet is built from ../shared/reference (CPU only) into --darknet-dir
unless it is already there. The comparison code is tests/zoo_reference.py (shared with tests/test_zoo.py).

    .venv/bin/python tools/zoo_table.py --size 128 --out docs/zoo.md
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import shlex
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import zoo_reference as zr  # noqa: E402

import detkit  # noqa: E402
from detkit.darknet.cfg import read_cfg_text  # noqa: E402
from detkit.darknet.spec_types import (  # noqa: E402
    AvgPoolSpec, ConvSpec, DropoutSpec, MaxPoolSpec, RegionSpec, ReorgSpec, RouteSpec, SamSpec,
    ScaleChannelsSpec, ShortcutSpec, YoloSpec,
)
from detkit.darknet.specs import parse_network, unsupported_features  # noqa: E402
from detkit.darknet.shapes import infer_shapes  # noqa: E402

#: where a reference is not usable for a cfg, why (measured; see docs/zoo.md)
REFERENCE_NOTES = {
    "cspx-p7-mish_hp.cfg": "OpenCV asserts on anchors= (31 values: a missing comma; darknet and detkit read it "
                           "the same way, with a warning)",
    "yolov4-sam-mish-csp-reorg-bfm.cfg": "OpenCV has no [reorg3d]",
    "resnet152_trident.cfg": "OpenCV's importer does not implement share_index (it gives the sharing convs "
                             "their own weights), so it disagrees; darknet agrees",
}
MAKE_FLAGS = ["GPU=0", "CUDNN=0", "OPENCV=0", "AVX=1", "OPENMP=1", "LIBSO=1"]


def build_darknet(shared: Path, folder: Path) -> Path:
    """Extract darknet's source into ``folder``, build libdarknet.so and the dump tool; return its path."""
    tool = folder / "zoo_darknet_dump"
    if tool.is_file():
        return tool
    lib = folder / "libdarknet.so"
    if not lib.is_file():
        tarball = next((shared / "reference").glob("darknet-*.tar.gz"))
        folder.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarball) as tar:
            tar.extractall(folder, filter="data")
        (folder / "placeholder.sh").touch()  # the Makefile's `chmod +x *.sh` needs one
        subprocess.run(["make", f"-j{os.cpu_count() or 2}", *MAKE_FLAGS], cwd=folder, check=True,
                       stdout=subprocess.DEVNULL)
    subprocess.run(["gcc", "-O2", f"-I{folder / 'include'}", "-o", str(tool), str(REPO / "tools" / "zoo_darknet_dump.c"),
                    f"-L{folder}", "-ldarknet", f"-Wl,-rpath,{folder}", "-lm", "-fopenmp"], check=True)
    return tool


def features(spec) -> str:
    """The notable layer types / keys of a cfg, as a short comma list."""
    found: list[str] = []

    def add(tag: str) -> None:
        if tag not in found:
            found.append(tag)

    shapes = infer_shapes(spec)
    for layer in spec.layers:
        if isinstance(layer, YoloSpec):
            add("yolo new_coords" if layer.new_coords else "yolo")
            if layer.scale_x_y != 1:
                add("scale_x_y")
        elif isinstance(layer, RegionSpec):
            add("region")
        elif isinstance(layer, ReorgSpec):
            add(layer.type)
        elif isinstance(layer, SamSpec):
            add("sam")
        elif isinstance(layer, ScaleChannelsSpec):
            add("scale_channels")
        elif isinstance(layer, AvgPoolSpec):
            add("avgpool")
        elif isinstance(layer, DropoutSpec):
            add("dropout")
        elif isinstance(layer, MaxPoolSpec) and layer.average:
            add("local_avgpool")
        elif isinstance(layer, RouteSpec) and layer.groups > 1:
            add("route groups")
        elif isinstance(layer, ShortcutSpec):
            prev = shapes[layer.index - 1]
            if any(shapes[i][0] != prev[0] for i in layer.from_):
                add("shortcut channels")
            if layer.weights_type != "none":
                add("weighted shortcut")
        elif isinstance(layer, ConvSpec):
            if layer.groups > 1:
                add("groups")
            if layer.dilation > 1:
                add("dilation")
            if layer.share_index >= 0:
                add("share_index")
            if layer.activation not in ("leaky", "linear"):
                add(layer.activation)
    return ", ".join(found)


def fmt(value: float) -> str:
    return "—" if value != value else f"{value:.1e}"


def row_for(name: str, zoo: Path, size: int, tool: Path | None, work: Path) -> dict:
    path = zoo / name
    text = read_cfg_text(path)
    row = {"cfg": name, "features": "", "builds": "yes", "opencv": "", "darknet": "", "roundtrip": "",
           "note": ""}
    problems = unsupported_features(text, path)
    try:
        spec = parse_network(text, path)
        row["features"] = features(spec)
    except Exception as exc:  # noqa: BLE001
        reason = problems[0] if problems else exc
        row["builds"] = "no"
        row["note"] = str(reason).replace(f"{path}:", "line ", 1)
        return row
    row["note"] = REFERENCE_NOTES.get(name, "")
    for ref, run in (("opencv", lambda: zr.compare_opencv(path, size, work / "cv")),
                     ("darknet", (lambda: zr.compare_darknet(tool, path, size, work / "dn")) if tool else None)):
        if run is None:
            row[ref] = "not run"
            continue
        if ref == "darknet" and any(isinstance(layer, RegionSpec) for layer in spec.layers):
            row[ref] = "n/a"  # darknet's CPU [region] flattens its output buffer (see docs/zoo.md)
            continue
        cmp = run()
        if cmp.error:
            row[ref] = "fails to load" if ref == "opencv" else "error"
            row["note"] = (row["note"] + "; " if row["note"] else "") + cmp.error.split("\n")[0][:160]
        else:
            mark = "ok" if cmp.ok else "**over**"
            row[ref] = f"{fmt(cmp.max_diff)} / {fmt(cmp.tolerance)} {mark}"
    row["roundtrip"] = round_trip(work / "cv", name) or round_trip(work / "dn", name)
    return row


def round_trip(folder: Path, name: str) -> str:
    cfg = folder / name
    weights = folder / (Path(name).stem + ".weights")
    if not weights.is_file():
        return ""
    model = detkit.build_model(os.fspath(cfg))
    detkit.load_darknet_weights(model, weights)
    again = folder / "again.weights"
    detkit.save_darknet_weights(model, again)
    same = again.read_bytes() == weights.read_bytes()
    return f"{'identical' if same else '**differs**'} ({weights.stat().st_size:,} B)"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(REPO.parent / "shared"))
    ap.add_argument("--size", type=int, default=128, help="input size (square; multiples of each cfg's stride)")
    ap.add_argument("--darknet-dir", default="/tmp/detkit-darknet", help="where darknet is built (never committed)")
    ap.add_argument("--no-darknet", action="store_true")
    ap.add_argument("--out", default=str(REPO / "docs" / "zoo.md"))
    ap.add_argument("--work", default="/tmp/detkit-zoo")
    ap.add_argument("cfgs", nargs="*", help="only these cfg file names (default: all detection cfgs)")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    shared = Path(args.shared)
    zoo = zr.zoo_dir(shared)
    tool = None if args.no_darknet else build_darknet(shared, Path(args.darknet_dir))
    names = args.cfgs or zr.detection_cfgs(shared)
    rows = []
    start = time.time()
    for name in names:
        t = time.time()
        rows.append(row_for(name, zoo, args.size, tool, Path(args.work)))
        print(f"{name}: {rows[-1]} ({time.time() - t:.1f} s)", flush=True)
    elapsed = time.time() - start
    write_doc(Path(args.out), rows, args, elapsed)
    print(f"wrote {args.out}")
    return 0


def write_doc(out: Path, rows: list[dict], args, elapsed: float) -> None:
    import cv2
    import torch

    built = sum(r["builds"] == "yes" for r in rows)
    verified = sum(r["builds"] == "yes" and ("ok" in r["darknet"] or ("ok" in r["opencv"] and "over" not in r["darknet"]))
                   for r in rows)
    identical = sum(r["roundtrip"].startswith("identical") for r in rows)
    cmd = "tools/zoo_table.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    head = (REPO / "docs" / "zoo_head.md").read_text() if (REPO / "docs" / "zoo_head.md").is_file() else ""
    lines = [head.rstrip(), "",
             "## Results", "",
             f"{built} of {len(rows)} detection cfgs build; {verified} agree with a reference within the rule; "
             f"{identical} round-trip their weights byte for byte.", "",
             f"Command: `.venv/bin/python {cmd}` — input {args.size}x{args.size}, one image, fixed seeds; "
             f"{elapsed / 60:.0f} min on {cpu_model()} ({os.cpu_count()} cores), torch {torch.__version__}, "
             f"OpenCV {cv2.__version__} (Winograd off), darknet AlexeyAB 59596d7 built with "
             f"`make {' '.join(MAKE_FLAGS)}`.", "",
             "Cells: `max difference / tolerance` (tolerance = max(1e-4, 4 x detkit's own float32-vs-float64 "
             "difference)); box in input-normalised units, objectness and class scores (objectness x class "
             "probability).", "",
             "| cfg | features | builds | vs OpenCV | vs darknet | weights round trip | note |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['cfg']} | {r['features']} | {r['builds']} | {r['opencv']} | {r['darknet']} | "
                     f"{r['roundtrip']} | {r['note'].replace('|', '/')} |")
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
