"""Run an exported detkit model (OpenVINO IR ``.xml`` + ``.bin``, or an ``.onnx`` file) with
OpenVINO on the CPU, behind the model contract.

:class:`OpenVinoModel` behaves like :class:`~detkit.infer.onnxrt.OnnxModel` for the
:class:`~detkit.infer.predict.Predictor`: ``(N, C, H, W)`` float in [0, 1] -> ``(N, R, 5 + C)``
float32, ``forward_numpy`` for the numpy pipeline, ``fast_info`` (so it runs as it is),
``fixed_input_size``, ``net.width/height``, ``num_classes`` and ``metadata`` (the detkit keys of
:mod:`detkit.infer.onnxrt`, stored in the IR's ``rt_info`` under ``detkit``).

Precision is OpenVINO's ``INFERENCE_PRECISION_HINT``: ``auto`` is bf16 on CPUs with native bf16
(AMX, AVX512-BF16) and fp32 elsewhere; an int8 IR (``detkit export --format openvino-int8``) runs
its quantised convolutions in int8 and everything else in fp32 (the decode stays float).
Compiled models are cached in OpenVINO's ``CACHE_DIR`` under :func:`cache_root` (``XDG_CACHE_HOME``
or ``~/.cache``, then ``detkit/openvino``), so a second process skips most of the compilation.
Threads: :func:`~detkit.infer.backends.default_threads`, not pinned to cores (pinning would fight
the image-decoding threads and other engines in the same process), one stream.
"""
from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from detkit.errors import WeightsError
from detkit.infer.engine_model import EngineModel
from detkit.infer.backends import cpu_features, default_precision, default_threads
from detkit.infer.onnxrt import META_PRECISION

log = logging.getLogger(__name__)

@functools.cache
def openvino_core():
    """The one ``openvino.Core`` of the process, shared by every detkit model, export and benchmark.

    Not a convenience: each ``Core`` that compiles a model replaces the calling thread's signal
    stack (``sigaltstack``) with its own and puts the previous one back when it is destroyed.
    Two Cores destroyed in creation order (first one first, as garbage collection does) leave
    the thread on the first Core's freed stack, and the next Python signal handler (Ctrl-C, a
    timer, a DataLoader's SIGCHLD) then kills the process with SIGSEGV. One Core that lives
    as long as the process never unwinds that stack (OpenVINO 2025-2026, seen in detkit's CI).
    """
    import openvino as ov

    return ov.Core()


def openvino_version() -> str:
    """OpenVINO's release, e.g. ``2026.0.0`` (without the build suffix)."""
    import openvino as ov

    return ov.__version__.split("-")[0]


PRECISIONS = ("auto", "fp32", "bf16")
#: rt_info section of an IR that holds detkit's metadata (``detkit.precision`` -> ``detkit/precision``)
RT_SECTION = "detkit"
_HINTS = {"fp32": "f32", "bf16": "bf16"}


def cache_root() -> Path:
    """detkit's cache folder: ``$XDG_CACHE_HOME/detkit`` or ``~/.cache/detkit``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "detkit"


def is_openvino_file(path: str | os.PathLike) -> bool:
    """True for an OpenVINO IR path (``.xml``; its weights are the ``.bin`` beside it)."""
    return Path(path).suffix.lower() == ".xml"


@dataclass(frozen=True)
class OpenVinoInfo:
    """How an :class:`OpenVinoModel` runs (the Predictor prints :meth:`describe`)."""

    path: str
    precision: str  # what runs: "bf16", "fp32" or "int8" (float parts fp32)
    hint: str  # OpenVINO's inference precision hint as compiled ("bf16", "f32")
    threads: int
    runtime: str  # "openvino 2026.x"
    fixed_batch: int | None
    compile_s: float  # first compilation (from the cache when it was there)

    def describe(self) -> str:
        batch = "dynamic batch" if self.fixed_batch is None else f"batch {self.fixed_batch}"
        prec = "int8 (float parts fp32)" if self.precision == "int8" else self.precision
        return f"{self.runtime}, {prec}, {self.threads} threads, {batch}, cpu ({Path(self.path).name})"


def read_metadata(model) -> dict[str, str]:
    """detkit's metadata in an ``openvino.Model`` (``rt_info['detkit']``) as ``{"detkit.key": value}``."""
    out: dict[str, str] = {}
    if not model.has_rt_info([RT_SECTION]):
        return out
    section = model.get_rt_info()[RT_SECTION]
    items = section.astype(dict) if hasattr(section, "astype") else section
    if not isinstance(items, dict):  # an rt_info entry detkit did not write
        return out
    for key, value in items.items():
        out[f"{RT_SECTION}.{key}"] = str(value.astype(str) if hasattr(value, "astype") else value)
    return out


def write_metadata(model, meta: dict[str, str]) -> None:
    """Store ``{"detkit.key": value}`` in an ``openvino.Model``'s ``rt_info['detkit']``."""
    for key, value in meta.items():
        section, _, name = key.partition(".")
        if section != RT_SECTION or not name:
            raise ValueError(f"metadata keys are 'detkit.<name>', got {key!r}")
        model.set_rt_info(str(value), [RT_SECTION, name])


def _onnx_metadata(path: Path) -> dict[str, str]:
    try:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # informational only: OpenVINO already read the file
        return {}
    return {p.key: p.value for p in proto.metadata_props if p.key.startswith(f"{RT_SECTION}.")}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not ln.strip().startswith(("Check '", "Exception from ", "[ "))
             and not ln.strip().endswith(".cpp") and "src/" not in ln.split(":")[0]]
    return (lines[0] if lines else type(exc).__name__)[:300]


class OpenVinoModel(EngineModel):
    """An exported detkit model run by OpenVINO (see the module docstring).

    Args:
        path: an IR ``.xml`` (with its ``.bin``) or an ``.onnx`` file written by ``detkit export``.
        precision: ``auto``, ``fp32`` or ``bf16`` (an int8 IR ignores it: its float parts run fp32).
        threads: inference threads (default :func:`~detkit.infer.backends.default_threads`).
        cache_dir: OpenVINO's compiled-model cache (default ``cache_root() / "openvino"``; ``""``: none).

    Raises:
        WeightsError: openvino missing, a missing ``.xml``/``.bin``, a file OpenVINO cannot read, or
            one that is not a detkit detector (one 4-D float input with fixed C, H, W; one
            (N, R, 5 + C) output).
    """

    engine = "OpenVINO"

    def __init__(self, path: str | os.PathLike, precision: str = "auto", threads: int | None = None,
                 cache_dir: str | os.PathLike | None = None) -> None:
        p = Path(path)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
        if not p.is_file():
            raise WeightsError("OpenVINO model not found" if is_openvino_file(p) else "model file not found", path=p)
        if is_openvino_file(p) and not p.with_suffix(".bin").is_file():
            raise WeightsError(f"the IR's weights file {p.with_suffix('.bin').name} is missing (an OpenVINO IR is "
                               ".xml + .bin side by side)", path=p)
        try:
            self._core = openvino_core()
        except ImportError:
            raise WeightsError("running a model with OpenVINO needs the openvino package (pip install openvino)",
                               path=p) from None
        try:
            model = self._core.read_model(str(p))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses with multi-line texts
            raise WeightsError(f"not a loadable OpenVINO/ONNX model: {_first_line(exc)}", path=p) from None
        self._check_io(model, p)
        meta = read_metadata(model) if is_openvino_file(p) else _onnx_metadata(p)
        ops = {op.get_type_name() for op in model.get_ops()}
        int8 = meta.get(META_PRECISION) == "int8" or "FakeQuantize" in ops
        if int8:
            chosen = "int8"
            hint = "fp32"  # float parts (decode, float layers) stay fp32; the int8 convs run int8 anyway
        else:
            chosen = default_precision() if precision == "auto" else precision
            hint = chosen
        if chosen == "bf16" and not cpu_features().native_bf16:
            log.warning("bf16 asked for on a CPU without native bf16 (%s): OpenVINO may run fp32 or emulate it",
                        cpu_features().model)
        self.path = p
        self.metadata = meta
        self.threads = int(threads or default_threads())
        self._model = model
        self._config = {"INFERENCE_PRECISION_HINT": _HINTS[hint], "PERFORMANCE_HINT": "LATENCY",
                        "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(self.threads),
                        "ENABLE_CPU_PINNING": "NO"}
        cache = cache_root() / "openvino" if cache_dir is None else (Path(cache_dir) if cache_dir else None)
        if cache is not None:
            try:
                cache.mkdir(parents=True, exist_ok=True)
                self._config["CACHE_DIR"] = str(cache)
            except OSError as exc:
                log.info("OpenVINO model cache disabled (%s: %s)", cache, exc)
        self._compiled: dict[int, tuple[object, object]] = {}
        t0 = time.perf_counter()
        first_batch = self.fixed_batch or 1
        compiled, _ = self._request(first_batch, p)
        compile_s = time.perf_counter() - t0
        compiled_hint = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
        hint_name = "bf16" if ("bf16" in compiled_hint.lower() or "bfloat16" in compiled_hint.lower()) else "fp32"
        self.fast_info = OpenVinoInfo(str(p), "int8" if int8 else hint_name, hint_name, self.threads,
                                      f"openvino {openvino_version()}", self.fixed_batch, compile_s)

    def _check_io(self, model, p: Path) -> None:
        inputs, outputs = model.inputs, model.outputs
        if len(inputs) != 1 or len(outputs) != 1:
            raise WeightsError(f"expected one input and one output (a detkit export), found {len(inputs)} and "
                               f"{len(outputs)}", path=p)
        ishape, oshape = inputs[0].get_partial_shape(), outputs[0].get_partial_shape()
        etype = inputs[0].get_element_type().get_type_name()
        if (ishape.rank.is_dynamic or ishape.rank.get_length() != 4 or not all(d.is_static for d in list(ishape)[1:])
                or etype != "f32"):
            raise WeightsError(f"input {inputs[0].get_any_name()} is {etype} {ishape}; a detkit export takes float "
                               "(N, C, H, W) with a fixed C, H and W", path=p)
        if oshape.rank.is_dynamic or oshape.rank.get_length() != 3 or oshape[2].is_dynamic or \
                oshape[2].get_length() < 6:
            raise WeightsError(f"output has shape {oshape}; a detkit export gives (N, R, 5 + classes)", path=p)
        self.in_channels, height, width = (int(d.get_length()) for d in list(ishape)[1:])
        self.num_classes = int(oshape[2].get_length()) - 5
        self.net = SimpleNamespace(width=width, height=height, channels=self.in_channels)
        self.fixed_batch = int(ishape[0].get_length()) if ishape[0].is_static else None

    def _request(self, batch: int, p: Path | None = None):
        """The compiled model + infer request for ``batch`` (dynamic-batch files: one static
        compilation per batch size seen, as fixed shapes run faster than dynamic ones)."""
        hit = self._compiled.get(batch)
        if hit is not None:
            return hit
        model = self._model
        if self.fixed_batch is None:
            model = model.clone()
            model.reshape({model.inputs[0].get_any_name(): [batch, self.in_channels, self.net.height, self.net.width]})
        try:
            compiled = self._core.compile_model(model, "CPU", self._config)
        except Exception as exc:
            raise WeightsError(f"OpenVINO cannot compile the model: {_first_line(exc)}", path=p or self.path) from None
        hit = (compiled, compiled.create_infer_request())
        self._compiled[batch] = hit
        return hit

    @property
    def fixed_input_size(self) -> tuple[int, int]:
        """(W, H) the file was exported for (the only size it takes)."""
        return int(self.net.width), int(self.net.height)

    def forward_numpy(self, arr: np.ndarray) -> np.ndarray:
        """C-contiguous float32 ``(N, C, H, W)`` -> float32 ``(N, R, 5 + C)`` (no PyTorch op runs)."""
        if arr.ndim != 4 or tuple(arr.shape[1:]) != (self.in_channels, self.net.height, self.net.width):
            raise ValueError(f"{self.path.name} takes (N, {self.in_channels}, {self.net.height}, {self.net.width}) "
                             f"(exported size {self.net.width}x{self.net.height}), got {tuple(arr.shape)}")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        n = arr.shape[0]
        if self.fixed_batch is not None and self.fixed_batch != n:
            if self.fixed_batch != 1:
                raise ValueError(f"{self.path.name} was exported for batch {self.fixed_batch}, got {n}")
            return np.concatenate([self.forward_numpy(arr[i:i + 1]) for i in range(n)])
        _, request = self._request(n)
        request.infer({0: arr})
        return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)
