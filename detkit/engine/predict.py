"""Batched prediction: images -> letterbox/resize -> model -> threshold + NMS -> original pixels.

Decoding and resizing of the next batch run in a small thread pool while the model works on the
current one (OpenCV releases the GIL while decoding and resizing).
"""
from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from detkit.data.images import letterbox as letterbox_image
from detkit.data.images import read_image, resize_darknet
from detkit.errors import ImageError
from detkit.yolo.postprocess import Detections, postprocess, unletterbox_detections, unresize_detections

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


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> cuda when available else cpu; anything else as given (cuda must exist)."""
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
class PathResult:
    """Outcome for one image file: ``detections`` (original pixels) or ``error`` (why it was skipped).

    ``image`` is the decoded RGB image when requested (``keep_images=True``), else None.
    """

    path: str | os.PathLike
    detections: Detections | None
    error: ImageError | None = None
    image: np.ndarray | None = None


class Predictor:
    """Run a detkit model (``detkit.build_model``) on RGB images.

    Args:
        model: eval forward ``(N, 3, H, W)`` in [0, 1] -> ``(N, R, 5 + C)`` (see docs/ARCHITECTURE.md).
            It is moved to ``device`` and put in eval mode.
        img_size: network input, ``416``, ``"WxH"`` or ``(W, H)``; multiples of 32. None: the
            cfg's ``[net] width/height``.
        conf: score threshold (objectness * class probability, strict ``>``).
        nms: per-class NMS IoU threshold.
        letterbox: True: aspect-preserving letterbox (grey 114 padding); False: darknet's plain
            stretch to the input size, with darknet's own resize arithmetic.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``.
        max_det: at most this many detections per image.
    """

    def __init__(self, model: nn.Module, img_size: int | str | Sequence[int] | None = None,
                 conf: float = 0.25, nms: float = 0.45, letterbox: bool = True,
                 device: str | torch.device = "cpu", max_det: int = 300) -> None:
        if img_size is None:
            net = getattr(model, "net", None)
            width = getattr(net, "width", None) if not isinstance(net, dict) else net.get("width")
            height = getattr(net, "height", None) if not isinstance(net, dict) else net.get("height")
            img_size = (int(width), int(height)) if width and height else 416
        self.input_size = parse_img_size(img_size)
        if not 0.0 <= conf < 1.0:
            raise ValueError(f"confidence threshold must be in [0, 1), got {conf}")
        if not 0.0 < nms <= 1.0:
            raise ValueError(f"NMS threshold must be in (0, 1], got {nms}")
        self.conf, self.nms, self.letterbox, self.max_det = conf, nms, letterbox, max_det
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()

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

    @torch.inference_mode()
    def _run(self, batch: list[np.ndarray], transforms: list[InputTransform]) -> list[Detections]:
        x = torch.from_numpy(np.stack(batch)).to(self.device)  # (N, H, W, 3) uint8 or float [0, 1]
        x = x.permute(0, 3, 1, 2)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()  # (N, 3, H, W) in [0, 1]
        pred = self.model(x)  # (N, R, 5 + C), network-input pixels
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
            img = read_image(path)
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
                loaded = [(p, f.result()) for p, f in items]
                ok = [(p, r) for p, r in loaded if not isinstance(r, ImageError)]
                dets = self._run([r[1] for _, r in ok], [r[2] for _, r in ok]) if ok else []
                by_path = {id(r): d for (_, r), d in zip(ok, dets)}
                for p, r in loaded:
                    if isinstance(r, ImageError):
                        yield PathResult(p, None, r)
                    else:
                        yield PathResult(p, by_path[id(r)], None, r[0] if keep_images else None)
