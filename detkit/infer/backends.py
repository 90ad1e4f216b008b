"""Which engine runs a detkit model on this machine: ``auto``, ``torch``, ``onnxruntime``, ``openvino``.

* :func:`cpu_features` reads the CPU model and the instruction-set flags that decide the fast
  precision (``/proc/cpuinfo``; no torch import): AMX, AVX512-BF16, AVX512-VNNI.
* :func:`choose_backend` resolves ``--backend`` for a kind of model file and a device, and says
  why (the reason goes into ``detkit detect``'s first line). ``auto`` on a CPU picks OpenVINO when
  it is installed (its convolutions are the fastest measured on both the AMX and the non-AMX
  development CPUs, docs/benchmarks_inference.md), then onnxruntime for ``.onnx`` files, then
  PyTorch; on CUDA it picks PyTorch.
* :func:`default_precision`: the precision that keeps accuracy on this CPU for OpenVINO: bf16 where
  the CPU computes bf16 natively (AMX or AVX512-BF16), else fp32.
* :func:`default_threads`: the intra-op threads every engine gets (``OMP_NUM_THREADS`` or the CPUs
  this process may use), so that engines in one process never oversubscribe the cores.
"""
from __future__ import annotations

import importlib.util
import os
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from detkit.errors import DataError

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
#: ``--weights`` kinds: a darknet file / checkpoint (``"darknet"``), ``.onnx``, OpenVINO IR ``.xml``
WEIGHT_KINDS = ("darknet", "onnx", "openvino")


@dataclass(frozen=True)
class CpuFeatures:
    """What this CPU offers for inference (from ``/proc/cpuinfo`` flags)."""

    model: str
    amx: bool  # AMX bf16/int8 tiles (Sapphire Rapids and later)
    avx512_bf16: bool
    vnni: bool  # AVX512-VNNI or AVX-VNNI int8 dot products
    flags: frozenset[str]

    @property
    def native_bf16(self) -> bool:
        return self.amx or self.avx512_bf16

    def describe(self) -> str:
        has = [name for name, ok in (("AMX", self.amx), ("AVX512-BF16", self.avx512_bf16),
                                     ("VNNI", self.vnni)) if ok]
        return f"{self.model}: {', '.join(has) if has else 'no bf16/int8 instructions'}" + \
            ("" if self.amx else ", no AMX")


def parse_cpuinfo(text: str) -> CpuFeatures:
    """``/proc/cpuinfo`` text -> :class:`CpuFeatures` (first processor's model name and flags)."""
    model, flags = platform.machine() or "unknown CPU", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == (platform.machine() or "unknown CPU"):
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    amx = "amx_bf16" in flags or "amx_tile" in flags
    return CpuFeatures(model, amx, "avx512_bf16" in flags, bool({"avx512_vnni", "avx_vnni"} & flags), flags)


@lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """This machine's :class:`CpuFeatures` (cached)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    return parse_cpuinfo(text)


def default_threads() -> int:
    """Intra-op threads for every engine: ``OMP_NUM_THREADS`` when set, else the usable CPUs."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def configure_thread_pools() -> bool:
    """Make idle OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE`` unless the
    user set it). Must run before torch is imported (libgomp reads it once, when it loads); returns
    whether it could still take effect.

    Why: with 2 OpenMP threads on 2 busy cores (other processes, or other engines' threads in this
    process) libgomp's spinning barrier waits for a descheduled partner: measured on the 2-core
    development VM under load, the PyTorch fast path went from 45-91 ms to 400-1400 ms per image
    (and 43 -> 200-360 ms of CPU per call) with the default policy (docs/benchmarks_inference.md).
    """
    import sys

    if "OMP_WAIT_POLICY" in os.environ:
        return True
    if "torch" in sys.modules:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def default_precision(features: CpuFeatures | None = None) -> str:
    """OpenVINO's precision hint that keeps accuracy here: ``bf16`` with native bf16, else ``fp32``."""
    return "bf16" if (features or cpu_features()).native_bf16 else "fp32"


def installed(backend: str) -> bool:
    """True when the engine's Python package can be imported (nothing is imported here)."""
    module = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino"}[backend]
    return importlib.util.find_spec(module) is not None


def weights_kind(path: str | os.PathLike) -> str:
    """One of :data:`WEIGHT_KINDS` by suffix (``.xml`` IR, ``.onnx``, anything else darknet)."""
    suffix = Path(path).suffix.lower()
    return {".onnx": "onnx", ".xml": "openvino"}.get(suffix, "darknet")


@dataclass(frozen=True)
class BackendChoice:
    """The resolved backend and why it was chosen."""

    backend: str  # torch | onnxruntime | openvino
    reason: str


def choose_backend(requested: str, kind: str, device: str = "cpu",
                   available: dict[str, bool] | None = None, onnx_quantized: bool = False) -> BackendChoice:
    """Resolve ``requested`` (one of :data:`BACKENDS`) for a ``kind`` of model file on ``device``
    (``"cpu"`` or ``"cuda..."``). ``available`` overrides what is installed (tests);
    ``onnx_quantized``: the ``.onnx`` file holds onnxruntime's quantised operators (``onnx-int8``),
    which only onnxruntime runs.

    Raises:
        DataError: an unknown backend, one that is not installed, or one that cannot run this file
            or this device (one line, saying what would).
    """
    if requested not in BACKENDS:
        raise DataError(f"--backend must be one of {', '.join(BACKENDS)}, got {requested!r}")
    if kind not in WEIGHT_KINDS:
        raise ValueError(f"unknown weights kind {kind!r}")
    have = available if available is not None else {b: installed(b) for b in BACKENDS[1:]}
    cuda = str(device).startswith("cuda")
    why = "as requested"
    if requested == "auto":
        if kind == "openvino":
            requested, why = "openvino", "auto: an OpenVINO IR file"
        elif cuda:
            if kind != "darknet":
                raise DataError("an exported model runs on the CPU (onnxruntime / OpenVINO); for CUDA pass the "
                                "cfg + weights, or --device cpu")
            return BackendChoice("torch", "auto: PyTorch on CUDA")
        elif kind == "onnx" and onnx_quantized and have.get("onnxruntime"):
            return BackendChoice("onnxruntime", "auto: an onnxruntime int8 file")
        elif have.get("openvino"):
            return BackendChoice("openvino", "auto: the fastest installed CPU engine")
        elif kind == "onnx":
            requested, why = "onnxruntime", "auto: OpenVINO is not installed"
        else:
            return BackendChoice("torch", "auto: OpenVINO is not installed")
    if not have.get(requested):
        pkg = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino"}[requested]
        raise DataError(f"--backend {requested} needs the {pkg} package (pip install {pkg})")
    if cuda and requested != "torch":
        raise DataError(f"--backend {requested} runs on the CPU; use --device cpu (or --backend torch on CUDA)")
    if requested == "torch" and kind != "darknet":
        raise DataError(f"--backend torch runs a cfg + darknet weights; a .{'xml' if kind == 'openvino' else 'onnx'} "
                        f"file runs with --backend {'openvino' if kind == 'openvino' else 'onnxruntime or openvino'}")
    if requested == "openvino" and kind == "onnx" and onnx_quantized:
        raise DataError("this .onnx file is onnxruntime's int8 format (QLinearConv), which OpenVINO does not read; "
                        "use --backend onnxruntime, or export --format openvino-int8 for OpenVINO")
    if requested == "onnxruntime" and kind == "openvino":
        raise DataError("an OpenVINO IR (.xml) runs with --backend openvino (onnxruntime reads .onnx files)")
    return BackendChoice(requested, why)
