"""The machine a benchmark ran on, and its compute floor.

* :func:`machine_line`: CPU model, the instruction-set flags that decide inference speed (AVX2,
  AVX-512, AVX512-BF16, VNNI, AMX), CPUs, threads, load average and library versions — printed
  with every table, since figures from different machines are not comparable.
* :func:`gemm_gflops` / :func:`compute_floor`: the network's convolution GFLOP over this machine's
  sustained matmul rate in fp32 and bf16: the least time any implementation needs that computes
  every convolution directly in that precision.
"""
from __future__ import annotations

import importlib.util
import os
import tempfile
import time
from pathlib import Path

import torch

#: the /proc/cpuinfo flags shown in :func:`machine_line`
SHOWN_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


def default_shared() -> Path:
    """``../shared`` next to the repository (where the project's real data lives), if present."""
    return Path(__file__).resolve().parents[2].parent / "shared"


def temp_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="detkit-bench-")


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def nncf_available() -> bool:
    return importlib.util.find_spec("nncf") is not None


def load_average() -> str:
    try:
        return "load average " + ", ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover - not on Linux
        return "load average unknown"


def machine_line(threads: int) -> str:
    """One line: CPU model and flags, logical CPUs, threads, load, torch / OpenCV / engines' versions."""
    import cv2

    from detkit.infer.backends import cpu_features

    cpu = cpu_features()
    flags = " ".join(f for f in SHOWN_FLAGS if f in cpu.flags) or "none of " + " ".join(SHOWN_FLAGS)
    engines = []
    for mod in ("onnxruntime", "openvino"):
        if importlib.util.find_spec(mod) is not None:
            engines.append(f"{mod} {_version(mod)}")
    return (f"{cpu.model} (flags: {flags}; AMX: {'yes' if cpu.amx else 'no'}), {os.cpu_count()} logical CPUs, "
            f"{threads} threads, {load_average()} at start; torch {torch.__version__}, OpenCV {cv2.__version__}"
            + (", " + ", ".join(engines) if engines else ""))


def _version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return "?"


def gemm_gflops(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 6) -> float:
    """Sustained ``n x n`` matmul GFLOPS at torch's thread count (best of ``repeats``): the ceiling
    for a convolution computed directly (im2col / GEMM-like kernels) in ``dtype`` on this machine."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    best = float("inf")
    with torch.inference_mode():
        a @ b
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best / 1e9


def compute_floor(cfg: str, size: int) -> dict[str, float]:
    """The network's convolution GFLOP at ``size`` and, per dtype, this machine's matmul GFLOPS and
    the resulting floor in ms for any implementation that computes every convolution directly."""
    from detkit.darknet.cfg import resolve_cfg
    from detkit.darknet.shapes import conv_gflop
    from detkit.darknet.specs import parse_network

    text, source = resolve_cfg(cfg)
    gflop = conv_gflop(parse_network(text, source), (size, size))
    out = {"conv_gflop": gflop}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        peak = gemm_gflops(dt)
        out[f"{name}_gemm_gflops"] = peak
        out[f"{name}_floor_ms"] = gflop / peak * 1000.0
    return out
