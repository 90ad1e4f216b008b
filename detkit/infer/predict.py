"""Batched prediction: images -> letterbox/resize -> model -> threshold + NMS -> original pixels.

Decoding and resizing of the next batch run in a small thread pool (image files) or a background
thread (video frames, any iterable of arrays) while the model works on the current one (OpenCV
releases the GIL while decoding and resizing). ``Predictor.last_stats`` tells how long the model
waited for data. ``fast=True`` runs :func:`detkit.infer.fast.optimize_for_inference`'s model
(batch norm folded, channels_last, bf16 on CPUs with native bf16, fp16 on CUDA).
"""
from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from detkit.data.images import letterbox as letterbox_image
from detkit.data.images import read_image, resize_darknet
from detkit.errors import ImageError
from detkit.yolo.postprocess import Detections, postprocess, unletterbox_detections, unresize_detections

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

log = logging.getLogger(__name__)


def parse_img_size(value: int | str | Sequence[int]) -> tuple[int, int]:
    """``416`` / ``"416"`` / ``"608x352"`` / ``(608, 352)`` -> (W, H); each a positive multiple of 32."""
    if isinstance(value, str):
        parts = value.lower().replace(",", "x").split("x")
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"image size must be N or WxH, got {value!r}") from None
    elif isinstance(value, int):
        nums = [value]
    else:
        nums = [int(v) for v in value]
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or any(n <= 0 or n % 32 for n in nums):
        raise ValueError(f"image size must be N or WxH with positive multiples of 32, got {value!r}")
    return nums[0], nums[1]


def cuda_possible() -> bool:
    """False when this machine surely has no CUDA device (Linux without an NVIDIA driver, macOS),
    decided without importing torch; True means "ask torch"."""
    if sys.platform == "darwin":
        return False
    if sys.platform.startswith("linux"):
        return any(os.path.exists(p) for p in ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/dxg"))
    return True


def resolve_device_type(device: str | torch.device) -> str:
    """``"auto"`` -> ``"cuda"`` when available else ``"cpu"``; ``"cpu"`` as is; other devices as
    given (checked by :func:`resolve_device`). torch is imported only when CUDA is possible."""
    text = str(device)
    if text == "cpu" or (text == "auto" and not cuda_possible()):
        return "cpu"
    return str(resolve_device(device))


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> cuda when available else cpu; anything else as given (cuda must exist)."""
    import torch

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


@dataclass(frozen=True)
class InputTransform:
    """How an original image became the network input, to map boxes back.

    ``kind`` is ``"letterbox"`` (``scale, pad_x, pad_y`` as :func:`detkit.data.images.letterbox`
    returns them) or ``"resize"`` (plain stretch to ``input_size``). ``width, height``: original size.
    """

    kind: Literal["letterbox", "resize"]
    width: int
    height: int
    input_size: tuple[int, int]
    scale: float = 1.0
    pad_x: float = 0.0
    pad_y: float = 0.0

    def to_original(self, det: Detections) -> Detections:
        """Network-input boxes -> original-image boxes, clipped to the image."""
        if self.kind == "letterbox":
            return unletterbox_detections(det, self.scale, self.pad_x, self.pad_y, self.width, self.height)
        return unresize_detections(det, self.input_size, self.width, self.height)


@dataclass(frozen=True)
class PipelineStats:
    """Timings of one :meth:`Predictor.predict_paths` / :meth:`Predictor.predict_frames` run.

    Attributes:
        images: images (or frames) run through the model.
        batches: forward passes.
        wall_s: seconds from the first request to the last result handed out (includes the time
            the caller spends between results).
        wait_s: seconds the model thread was blocked waiting for decoded, resized inputs.
        model_s: seconds in forward + decode + NMS + mapping back (the model thread's work).
    """

    images: int
    batches: int
    wall_s: float
    wait_s: float
    model_s: float

    @property
    def wait_share(self) -> float:
        """Share of the model thread's busy + waiting time spent waiting for data (0 = never)."""
        total = self.wait_s + self.model_s
        return self.wait_s / total if total > 0 else 0.0

    def describe(self) -> str:
        rate = self.images / self.wall_s if self.wall_s > 0 else float("nan")
        return (f"{self.images} image(s) in {self.batches} batch(es), {self.wall_s:.2f} s ({rate:.1f}/s); "
                f"model {self.model_s:.2f} s, waiting for data {self.wait_s:.2f} s "
                f"({100 * self.wait_share:.1f}% of the model thread's time)")


@dataclass(frozen=True)
class PathResult:
    """Outcome for one image file: ``detections`` (original pixels) or ``error`` (why it was skipped).

    ``image`` is the decoded RGB image when requested (``keep_images=True``), else None;
    ``image_size`` its (width, height) after EXIF orientation (None for an unreadable file).
    """

    path: str | os.PathLike
    detections: Detections | None
    error: ImageError | None = None
    image: np.ndarray | None = None
    image_size: tuple[int, int] | None = None


class Predictor:
    """Run a detkit model (``detkit.build_model``) on RGB images.

    Args:
        model: eval forward ``(N, 3, H, W)`` in [0, 1] -> ``(N, R, 5 + C)`` (see docs/ARCHITECTURE.md).
            Without ``fast`` it is moved to ``device`` and put in eval mode; with ``fast`` it is
            only read (the predictor runs an optimised copy).
        img_size: network input, ``416``, ``"WxH"`` or ``(W, H)``; multiples of 32. None: the
            cfg's ``[net] width/height``.
        conf: score threshold (objectness * class probability, strict ``>``).
        nms: per-class NMS IoU threshold.
        letterbox: True: aspect-preserving letterbox (grey 114 padding); False: darknet's plain
            stretch to the input size, with darknet's own resize arithmetic.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``.
        max_det: at most this many detections per image.
        fast: run :func:`detkit.infer.fast.optimize_for_inference` (needs a DarknetModel). A
            model that already has ``fast_info`` (an optimised model, a
            :class:`~detkit.infer.onnxrt.OnnxModel`) runs as it is, whatever ``fast`` says.
        precision: the fast path's compute dtype: ``"auto"``, ``"fp32"``, ``"bf16"``, ``"fp16"``.
        compile: the fast path under ``torch.compile``.
        reader: reads one image file into RGB uint8 (H, W, 3) (default
            :func:`detkit.data.images.read_image`); it runs in the decode threads and raises
            :class:`~detkit.errors.ImageError` for a file it cannot read.

    ``last_stats`` holds the :class:`PipelineStats` of the last finished ``predict_paths`` /
    ``predict_frames`` run (None before).
    """

    def __init__(self, model: nn.Module, img_size: int | str | Sequence[int] | None = None,
                 conf: float = 0.25, nms: float = 0.45, letterbox: bool = True,
                 device: str | torch.device = "cpu", max_det: int = 300, fast: bool = False,
                 precision: str = "auto", compile: bool = False,
                 reader: Callable[[str | os.PathLike], np.ndarray] = read_image) -> None:
        if img_size is None:
            net = getattr(model, "net", None)
            width = getattr(net, "width", None) if not isinstance(net, dict) else net.get("width")
            height = getattr(net, "height", None) if not isinstance(net, dict) else net.get("height")
            img_size = (int(width), int(height)) if width and height else 416
        self.input_size = parse_img_size(img_size)
        fixed = getattr(model, "fixed_input_size", None)  # e.g. an ONNX model: size fixed at export
        if fixed is not None and tuple(fixed) != self.input_size:
            raise ValueError(f"the model takes {fixed[0]}x{fixed[1]} inputs only (fixed at export), "
                             f"not {self.input_size[0]}x{self.input_size[1]}")
        if not 0.0 <= conf < 1.0:
            raise ValueError(f"confidence threshold must be in [0, 1), got {conf}")
        if not 0.0 < nms <= 1.0:
            raise ValueError(f"NMS threshold must be in (0, 1], got {nms}")
        self.conf, self.nms, self.letterbox, self.max_det = conf, nms, letterbox, max_det
        self.fast = fast
        self._numpy = hasattr(model, "forward_numpy")  # onnxruntime / OpenVINO: numpy in, numpy out
        if self._numpy:
            if resolve_device_type(device) != "cpu":
                raise ValueError(f"an exported model runs on the CPU, not on {device}")
            self.device = "cpu"
        else:
            self.device = resolve_device(device)
        if getattr(model, "fast_info", None) is not None:
            # already built for inference (an optimize_for_inference model, an ONNX model run by
            # onnxruntime): used as it is, on its own device
            if compile:
                raise ValueError("compile applies to the PyTorch fast path, not to an already optimised model")
            self.model = model
        elif fast:
            from detkit.infer.fast import optimize_for_inference

            self.model = optimize_for_inference(model, self.device, dtype=precision, compile=compile)
        else:
            if compile:
                raise ValueError("compile needs the fast path (fast=True)")
            self.model = model.to(self.device).eval()
        self.reader = reader
        self.last_stats: PipelineStats | None = None
        # a compiled model is specialised to its first batch size: smaller batches (the last one
        # of a run) are padded to it instead of triggering a second compilation
        self._compiled_batch: int | None = 0 if fast and compile else None

    @property
    def description(self) -> str:
        """How the model runs, e.g. ``"fast: bf16, channels_last, 11 BN folded, cpu"``."""
        info = getattr(self.model, "fast_info", None)
        return f"fast: {info.describe()}" if info is not None else f"eager float32, {self.device}"

    def prepare(self, img: np.ndarray) -> tuple[np.ndarray, InputTransform]:
        """RGB uint8 (h, w, 3) -> network-size RGB (H, W, 3) and its transform.

        Letterbox: uint8 (``cv2.resize`` bilinear, grey 114 padding). Plain resize: float32 in
        [0, 1] from :func:`~detkit.data.images.resize_darknet`, darknet's own corner-aligned
        bilinear resize, so scores match darknet's ``detector test``.
        """
        h, w = img.shape[:2]
        if self.letterbox:
            out, scale, pad_x, pad_y = letterbox_image(img, self.input_size)
            return out, InputTransform("letterbox", w, h, self.input_size, scale, pad_x, pad_y)
        return resize_darknet(img, self.input_size), InputTransform("resize", w, h, self.input_size)

    def _run(self, batch: list[np.ndarray], transforms: list[InputTransform]) -> list[Detections]:
        if self._numpy:  # onnxruntime / OpenVINO: input, output and NMS in numpy, torch never imported
            pred = self.model.forward_numpy(_nchw_float(batch))
            dets = postprocess(pred, self.conf, self.nms, self.max_det)
            return [t.to_original(d) for t, d in zip(transforms, dets)]
        import torch

        with torch.inference_mode():
            return self._run_torch(batch, transforms)

    def _run_torch(self, batch: list[np.ndarray], transforms: list[InputTransform]) -> list[Detections]:
        import torch

        x = torch.from_numpy(np.stack(batch)).to(self.device)  # (N, H, W, 3) uint8 or float [0, 1]
        x = x.permute(0, 3, 1, 2)  # (N, 3, H, W) view, channels_last in memory (no copy)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()  # [0, 1], layout kept
        n = x.shape[0]
        if self._compiled_batch is not None:
            if self._compiled_batch == 0:
                self._compiled_batch = n
            elif n < self._compiled_batch:
                pad = x[-1:].expand(self._compiled_batch - n, *x.shape[1:])
                x = torch.cat([x, pad]).contiguous(memory_format=torch.channels_last)
        pred = self.model(x)[:n]  # (N, R, 5 + C), network-input pixels
        dets = postprocess(pred, self.conf, self.nms, self.max_det)
        return [t.to_original(d) for t, d in zip(transforms, dets)]

    def predict(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detect on RGB uint8 (h, w, 3) images, as one batch; boxes in each image's own pixels."""
        if not images:
            return []
        prepared = [self.prepare(img) for img in images]
        return self._run([p[0] for p in prepared], [p[1] for p in prepared])

    def _load(self, path) -> tuple[np.ndarray, np.ndarray, InputTransform] | ImageError:
        try:
            img = self.reader(path)
        except ImageError as exc:
            return exc
        net_img, transform = self.prepare(img)
        return img, net_img, transform

    def predict_paths(self, paths: Iterable[str | os.PathLike], batch_size: int = 8,
                      keep_images: bool = False, workers: int = 2) -> Iterator[PathResult]:
        """Detect on image files, in order, batch by batch; unreadable files yield an error result.

        The next ``batch_size`` images are decoded and resized in ``workers`` threads while the
        model runs on the current batch.
        """
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        path_iter = iter(paths)
        clock = _Clock()
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="detkit-load") as pool:
            pending: deque[tuple[object, Future]] = deque()

            def fill(limit: int) -> None:
                while len(pending) < limit:
                    p = next(path_iter, None)
                    if p is None:
                        return
                    pending.append((p, pool.submit(self._load, p)))

            fill(2 * batch_size)
            while pending:
                items = [pending.popleft() for _ in range(min(batch_size, len(pending)))]
                fill(2 * batch_size)  # the next batch decodes while this one runs
                with clock.waiting():
                    loaded = [(p, f.result()) for p, f in items]
                ok = [(p, r) for p, r in loaded if not isinstance(r, ImageError)]
                with clock.working(len(ok)):
                    dets = self._run([r[1] for _, r in ok], [r[2] for _, r in ok]) if ok else []
                by_path = {id(r): d for (_, r), d in zip(ok, dets)}
                for p, r in loaded:
                    if isinstance(r, ImageError):
                        yield PathResult(p, None, r)
                    else:
                        yield PathResult(p, by_path[id(r)], None, r[0] if keep_images else None,
                                         (r[2].width, r[2].height))
        self.last_stats = clock.stats()

    def predict_frames(self, frames: Iterable[np.ndarray], batch_size: int = 8,
                       prefetch: int | None = None) -> Iterator[tuple[np.ndarray, Detections]]:
        """Detect on a stream of RGB uint8 (h, w, 3) frames (e.g. a video), in order.

        The iterable is consumed in a background thread (reading a video there decodes the next
        frames while the model runs), which also letterboxes; ``prefetch`` frames at most wait
        ready (default ``2 * batch_size``). Yields ``(frame, detections)`` per frame.
        """
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        clock = _Clock()
        with _Prefetcher(frames, lambda f: (f, *self.prepare(f)), prefetch or 2 * batch_size) as feed:
            done = False
            while not done:
                batch: list[tuple[np.ndarray, np.ndarray, InputTransform]] = []
                with clock.waiting():
                    while len(batch) < batch_size:
                        item = feed.get()
                        if item is _END:
                            done = True
                            break
                        batch.append(item)
                if not batch:
                    break
                with clock.working(len(batch)):
                    dets = self._run([b[1] for b in batch], [b[2] for b in batch])
                for (frame, _, _), det in zip(batch, dets):
                    yield frame, det
        self.last_stats = clock.stats()


def _nchw_float(batch: list[np.ndarray]) -> np.ndarray:
    """(H, W, C) uint8 (or float in [0, 1]) images -> C-contiguous float32 (N, C, H, W) in [0, 1],
    in one pass (same values as the PyTorch path's ``x.float() / 255``)."""
    x = np.stack(batch)
    out = np.empty((x.shape[0], x.shape[3], x.shape[1], x.shape[2]), np.float32)
    if x.dtype == np.uint8:
        np.divide(x.transpose(0, 3, 1, 2), np.float32(255.0), out=out)
    else:
        out[...] = x.transpose(0, 3, 1, 2)
    return out


class _Clock:
    """Wall time split into waiting-for-data and model work, for :class:`PipelineStats`."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.wait = self.model = 0.0
        self.images = self.batches = 0

    class _Span:
        def __init__(self, clock: "_Clock", attr: str, images: int) -> None:
            self.clock, self.attr, self.images = clock, attr, images

        def __enter__(self) -> None:
            self.t0 = time.perf_counter()

        def __exit__(self, *exc: object) -> None:
            setattr(self.clock, self.attr, getattr(self.clock, self.attr) + time.perf_counter() - self.t0)
            if self.attr == "model" and self.images:
                self.clock.images += self.images
                self.clock.batches += 1

    def waiting(self) -> "_Clock._Span":
        return _Clock._Span(self, "wait", 0)

    def working(self, images: int) -> "_Clock._Span":
        return _Clock._Span(self, "model", images)

    def stats(self) -> PipelineStats:
        return PipelineStats(self.images, self.batches, time.perf_counter() - self.start, self.wait, self.model)


_END = object()


class _Prefetcher:
    """Consume ``iterable`` in a daemon thread, apply ``fn`` to each item, hand results over in
    order through a bounded queue. ``get()`` returns the next result or ``_END``; an exception in
    the thread is re-raised by ``get()``. Leaving the ``with`` block stops the thread."""

    def __init__(self, iterable: Iterable[Any], fn: Callable[[Any], Any], depth: int) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(iterable, fn), daemon=True,
                                        name="detkit-prefetch")

    def __enter__(self) -> "_Prefetcher":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:  # unblock a producer waiting on a full queue
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()

    def _put(self, item: tuple[str, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, iterable: Iterable[Any], fn: Callable[[Any], Any]) -> None:
        try:
            for item in iterable:
                if not self._put(("item", fn(item))):
                    return
            self._put(("end", None))
        except BaseException as exc:  # handed to the consumer, re-raised there
            self._put(("error", exc))

    def get(self) -> Any:
        kind, value = self._queue.get()
        if kind == "error":
            raise value
        return _END if kind == "end" else value
