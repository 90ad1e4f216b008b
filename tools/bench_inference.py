"""Inference benchmark: detkit's paths (PyTorch, onnxruntime, OpenVINO) vs OpenCV DNN 4.x, in one run.

Same as ``detkit benchmark`` (all options are passed through); see docs/benchmarks_inference.md.
Idle OpenMP threads are made to sleep (OMP_WAIT_POLICY=PASSIVE unless set) before torch loads.

    .venv/bin/python tools/bench_inference.py                     # full run: run it on a quiet machine
    .venv/bin/python tools/bench_inference.py --quick             # smoke run, not a measurement
    .venv/bin/python tools/bench_inference.py --pytorchyolo-path /tmp/pyy   # include pytorchyolo
    .venv/bin/python tools/bench_inference.py --cfg CFG --weights FINE_TUNED --data OBJ.DATA
                                                                  # VOC mAP@0.5 of every path
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detkit.infer.backends import configure_thread_pools  # noqa: E402

configure_thread_pools()

from detkit.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["benchmark", *sys.argv[1:]]))
