"""Run an exported detkit ONNX model (float32 or int8) with onnxruntime, behind the model contract.

:class:`OnnxModel` loads a file written by ``detkit export --format onnx`` or ``--format
onnx-int8`` (:mod:`detkit.infer.quantize`) and behaves like the eval-mode DarknetModel for the
:class:`~detkit.infer.predict.Predictor`: ``(N, C, H, W)`` float in [0, 1] -> ``(N, R, 5 + C)``
float32 (cx, cy, w, h in input pixels, objectness, class probabilities). The input size is the
one fixed at export; a file exported with batch 1 runs larger batches one image at a time.

It carries ``fast_info`` (an :class:`OnnxInfo`), so the Predictor runs it as it is (no further
optimisation), and ``net.width/height`` (the exported input size), so ``detkit detect`` and
``detkit eval`` need no cfg for it.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from detkit.errors import WeightsError
from detkit.infer.backends import default_threads
from detkit.infer.engine_model import EngineModel

log = logging.getLogger(__name__)

#: metadata keys detkit writes into its ONNX files (``onnx.ModelProto.metadata_props``)
META_PRECISION = "detkit.precision"
META_CALIBRATION = "detkit.calibration"
META_FP32_LAYERS = "detkit.fp32_layers"
META_RESIZE = "detkit.resize"


def is_onnx_file(path: str | os.PathLike) -> bool:
    """True for a ``.onnx`` path (ONNX files have no magic number; the suffix decides)."""
    return Path(path).suffix.lower() == ".onnx"


def onnx_is_quantized(path: str | os.PathLike) -> bool:
    """True when an ``.onnx`` file holds onnxruntime's quantised operators (QLinearConv, ...);
    False for float files and for files onnx cannot read (their loader reports those)."""
    try:
        import onnx

        ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
    except Exception:  # informational only
        return False
    return bool(ops & {"QLinearConv", "QuantizeLinear", "ConvInteger", "MatMulInteger"})


@dataclass(frozen=True)
class OnnxInfo:
    """How an :class:`OnnxModel` runs (the Predictor prints :meth:`describe`)."""

    path: str
    precision: str  # "int8" or "fp32"
    threads: int
    runtime: str  # "onnxruntime 1.x"
    fixed_batch: int | None  # None: the file takes any batch size

    def describe(self) -> str:
        batch = "dynamic batch" if self.fixed_batch is None else f"batch {self.fixed_batch}"
        return f"{self.runtime}, {self.precision}, {self.threads} threads, {batch}, cpu ({Path(self.path).name})"


class OnnxModel(EngineModel):
    """An exported detkit ONNX file run by onnxruntime (see the module docstring).

    Args:
        path: the ``.onnx`` file.
        threads: onnxruntime's intra-op threads (default :func:`~detkit.infer.backends.default_threads`).

    Raises:
        WeightsError: onnxruntime missing, a file that is not a loadable ONNX model, or one that is
            not a detkit detector (one 4-D float input with fixed H, W; one (N, R, 5 + C) output).
    """

    engine = "ONNX"

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        p = Path(path)
        if not p.is_file():
            raise WeightsError("ONNX model not found", path=p)
        try:
            import onnxruntime as ort
        except ImportError:
            raise WeightsError("running an .onnx model needs onnxruntime (pip install onnxruntime)",
                               path=p) from None
        threads = int(threads or default_threads())
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3  # errors only: its "initializer in the graph inputs" notes are noise
        # no spin-waiting between runs: the idle pool would steal the cores from the image decoding
        # threads that work between batches (and from PyTorch's/OpenCV's pools in the same process)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for every bad file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WeightsError(f"not a loadable ONNX model: {first[:300]}", path=p) from None
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise WeightsError(f"expected one input and one output (a detkit export), found "
                               f"{len(inputs)} and {len(outputs)}", path=p)
        ishape, oshape = list(inputs[0].shape), list(outputs[0].shape)
        if (len(ishape) != 4 or not all(isinstance(v, int) and v > 0 for v in ishape[1:])
                or inputs[0].type != "tensor(float)"):
            raise WeightsError(f"input {inputs[0].name} is {inputs[0].type} {ishape}; a detkit export takes "
                               "float (N, C, H, W) with a fixed C, H and W", path=p)
        if len(oshape) != 3 or not isinstance(oshape[2], int) or oshape[2] < 6:
            raise WeightsError(f"output {outputs[0].name} has shape {oshape}; a detkit export gives "
                               "(N, R, 5 + classes)", path=p)
        self.path = p
        self._input_name = inputs[0].name
        self.in_channels, height, width = (int(v) for v in ishape[1:])
        self.num_classes = int(oshape[2]) - 5
        self.net = SimpleNamespace(width=width, height=height, channels=self.in_channels)
        self.fixed_batch = int(ishape[0]) if isinstance(ishape[0], int) else None
        meta = dict(self._session.get_modelmeta().custom_metadata_map)
        self.metadata = meta
        precision = meta.get(META_PRECISION) or self._guess_precision(p)
        self.fast_info = OnnxInfo(str(p), precision, threads, f"onnxruntime {ort.__version__}", self.fixed_batch)

    @staticmethod
    def _guess_precision(path: Path) -> str:
        """``int8`` when the graph holds quantised operators (files not written by detkit)."""
        return "int8" if onnx_is_quantized(path) else "fp32"

    @property
    def fixed_input_size(self) -> tuple[int, int]:
        """(W, H) the file was exported for (the only size it takes)."""
        return int(self.net.width), int(self.net.height)

    def forward_numpy(self, arr: np.ndarray) -> np.ndarray:
        """The same on numpy: C-contiguous float32 ``(N, C, H, W)`` -> float32 ``(N, R, 5 + C)``.
        The Predictor calls this directly (no PyTorch op, so no OpenMP pool wakes up beside
        onnxruntime's)."""
        if arr.ndim != 4 or tuple(arr.shape[1:]) != (self.in_channels, self.net.height, self.net.width):
            raise ValueError(f"{self.path.name} takes (N, {self.in_channels}, {self.net.height}, {self.net.width}) "
                             f"(exported size {self.net.width}x{self.net.height}), got {tuple(arr.shape)}")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if self.fixed_batch is None or self.fixed_batch == arr.shape[0]:
            out = self._session.run(None, {self._input_name: arr})[0]
        elif self.fixed_batch == 1:
            out = np.concatenate([self._session.run(None, {self._input_name: arr[i:i + 1]})[0]
                                  for i in range(arr.shape[0])])
        else:
            raise ValueError(f"{self.path.name} was exported for batch {self.fixed_batch}, got {arr.shape[0]}")
        return np.asarray(out, dtype=np.float32)
