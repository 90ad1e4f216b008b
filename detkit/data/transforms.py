"""Albumentations pipelines for training and validation, built from darknet ``[net]`` settings.

Boxes travel through the pipelines as albumentations ``pascal_voc`` boxes, which are detkit's
internal convention (absolute-pixel continuous ``xyxy``, see :mod:`detkit.boxes`), with the class
ids in the label field ``class_labels``. Every pipeline ends with :class:`Letterbox`, which calls
:func:`detkit.data.images.letterbox` itself, so training, validation and ``detect`` share one
letterbox geometry (a source point ``(x, y)`` lands at ``(x * scale + pad_x, y * scale + pad_y)``).

Mapping of darknet's colour options (``[net] hue, saturation, exposure``) — :class:`DarknetHSV`:

* the image is converted to HSV (float, OpenCV: H in degrees [0, 360), S and V in [0, 1]);
* ``saturation=s``: S is multiplied by a factor drawn like darknet's ``rand_scale(s)``: ``x`` uniform
  in ``[1, s]``, then ``x`` or ``1/x`` with probability 1/2 each, so the factor lies in
  ``[1/s, s]`` and is symmetric in log scale (median 1);
* ``exposure=e``: V is multiplied by a factor drawn the same way from ``[1/e, e]``;
* ``hue=h``: H is shifted by ``u * 360`` degrees, ``u`` uniform in ``[-h, h]`` (a fraction of the
  full colour circle, wrapping around), as darknet's ``hue`` is a fraction of the circle;
* S and V are clipped to [0, 1] (darknet clamps the same way).

albumentations' own ``HueSaturationValue`` takes additive shifts and ``ColorJitter`` blends with
the grey image for saturation, neither of which is darknet's multiplicative HSV scaling; hence the
small explicit transform here.

darknet's ``jitter`` (from the ``[yolo]`` sections) crops or pads each side of the image
independently by up to ``jitter`` times the image width (left/right) or height (top/bottom);
that is exactly albumentations' ``CropAndPad(percent=(-jitter, jitter), sample_independently=True,
keep_size=False)``, which therefore changes scale, aspect ratio and position at once. The result is
then letterboxed to the network size.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

# albumentations (>= 1.4) asks PyPI for a newer version on import unless this is set; detkit
# never touches the network. setdefault: a user's explicit setting wins. It must precede the
# first ``import albumentations`` anywhere in detkit, so every detkit module imports it via here.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from detkit.boxes import letterbox_params
from detkit.data.images import letterbox
from detkit.errors import TrainError

log = logging.getLogger(__name__)

#: label field that carries class ids through albumentations
LABEL_FIELD = "class_labels"
#: grey level of letterbox / jitter padding (darknet and OpenCV DNN use 0.5 ≈ 127; YOLO ports 114)
PAD_FILL = 114


def darknet_rand_scale(s: float, rng: np.random.Generator) -> float:
    """darknet's ``rand_scale(s)``: ``x ~ U[1, s]``, return ``x`` or ``1/x`` with probability 1/2.

    The factor lies in ``[1/s, s]`` (for ``s >= 1``), log-symmetric around 1.
    """
    x = float(rng.uniform(1.0, s)) if s != 1.0 else 1.0
    return x if rng.random() < 0.5 else 1.0 / x


def apply_hsv(img: np.ndarray, hue_shift: float, sat_scale: float, val_scale: float) -> np.ndarray:
    """Shift hue and scale saturation/value of an RGB uint8 image (see module docstring).

    Args:
        img: RGB uint8 ``(H, W, 3)``.
        hue_shift: fraction of the full hue circle added to H (wraps around).
        sat_scale: factor applied to S (clipped to [0, 1] afterwards).
        val_scale: factor applied to V (clipped to [0, 1] afterwards).
    Returns:
        new RGB uint8 ``(H, W, 3)`` (the input is not modified).
    """
    if hue_shift == 0.0 and sat_scale == 1.0 and val_scale == 1.0:
        return img.copy()
    # one float32 buffer, modified in place with OpenCV per-channel ops (numpy broadcasting over
    # the channel axis and np.mod were 5x slower, which matters in the data loader)
    hsv = img.astype(np.float32)
    cv2.multiply(hsv, (1.0 / 255.0,) * 3, dst=hsv)
    cv2.cvtColor(hsv, cv2.COLOR_RGB2HSV, dst=hsv)  # H degrees [0, 360), S and V in [0, 1]
    if sat_scale != 1.0 or val_scale != 1.0:
        cv2.multiply(hsv, (1.0, float(sat_scale), float(val_scale)), dst=hsv)
        cv2.min(hsv, (360.0, 1.0, 1.0), dst=hsv)
    if hue_shift != 0.0:
        h = cv2.extractChannel(hsv, 0)
        cv2.add(h, float((hue_shift * 360.0) % 360.0), dst=h)  # now in [0, 720)
        cv2.subtract(h, 360.0, dst=h, mask=cv2.compare(h, 360.0, cv2.CMP_GE))
        cv2.insertChannel(h, hsv, 0)
    cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB, dst=hsv)
    return cv2.convertScaleAbs(hsv, alpha=255.0)  # x 255, rounded, saturated to uint8


class DarknetHSV(A.ImageOnlyTransform):
    """darknet's colour jitter (``hue``, ``saturation``, ``exposure`` of ``[net]``) as a transform.

    Args:
        hue: maximal hue shift as a fraction of the circle, 0 <= hue <= 0.5.
        saturation: saturation factor bound (>= 1; 1 disables), factor in ``[1/s, s]``.
        exposure: value (brightness) factor bound (>= 1; 1 disables), factor in ``[1/e, e]``.
    """

    def __init__(self, hue: float = 0.0, saturation: float = 1.0, exposure: float = 1.0, p: float = 1.0):
        super().__init__(p=p)
        self.hue = float(hue)
        self.saturation = float(saturation)
        self.exposure = float(exposure)

    def get_params(self) -> dict[str, Any]:
        rng = self.random_generator
        hue_shift = float(rng.uniform(-self.hue, self.hue)) if self.hue > 0 else 0.0
        return {"hue_shift": hue_shift,
                "sat_scale": darknet_rand_scale(self.saturation, rng),
                "val_scale": darknet_rand_scale(self.exposure, rng)}

    def apply(self, img: np.ndarray, hue_shift: float = 0.0, sat_scale: float = 1.0,
              val_scale: float = 1.0, **params: Any) -> np.ndarray:
        return apply_hsv(img, hue_shift, sat_scale, val_scale)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("hue", "saturation", "exposure")


class Letterbox(A.DualTransform):
    """Letterbox to the network size with :func:`detkit.data.images.letterbox` (image and boxes).

    Deterministic. After a call, ``self.params`` holds ``scale``, ``pad_x``, ``pad_y`` of the
    mapping ``x' = x * scale + pad_x`` (input pixels of this transform -> network pixels).

    Args:
        width, height: network input size in pixels.
        fill: grey level of the padding.
    """

    def __init__(self, width: int, height: int, fill: int = PAD_FILL, p: float = 1.0):
        super().__init__(p=p)
        self.width = int(width)
        self.height = int(height)
        self.fill_value = int(fill)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        src_h, src_w = params["shape"][:2]
        scale, pad_x, pad_y = letterbox_params(src_w, src_h, self.width, self.height)
        return {"scale": scale, "pad_x": pad_x, "pad_y": pad_y}

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        out, _, _, _ = letterbox(img, (self.width, self.height), fill=self.fill_value)
        return out

    def apply_to_bboxes(self, bboxes: np.ndarray, scale: float = 1.0, pad_x: float = 0.0,
                        pad_y: float = 0.0, **params: Any) -> np.ndarray:
        # albumentations hands boxes normalised to this transform's input; return them
        # normalised to its output (the network size).
        src_h, src_w = params["shape"][:2]
        out = np.array(bboxes, dtype=np.float32, copy=True)
        if out.size:
            out[:, [0, 2]] = (out[:, [0, 2]] * src_w * scale + pad_x) / self.width
            out[:, [1, 3]] = (out[:, [1, 3]] * src_h * scale + pad_y) / self.height
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("width", "height", "fill_value")


def _bbox_params(min_visibility: float, min_area: float, min_size: float) -> A.BboxParams:
    # clip: label files may overshoot [0, 1] by rounding; filter_invalid_bboxes: zero-area input
    # boxes are dropped before any transform instead of raising.
    return A.BboxParams(format="pascal_voc", label_fields=[LABEL_FIELD], min_visibility=min_visibility,
                        min_area=min_area, min_width=min_size, min_height=min_size,
                        clip=True, filter_invalid_bboxes=True)


def _check_size(img_size: Sequence[int]) -> tuple[int, int]:
    if len(img_size) != 2 or any(int(v) <= 0 or int(v) != v for v in img_size):
        raise TrainError(f"image size must be two positive integers (W, H), got {tuple(img_size)}")
    return int(img_size[0]), int(img_size[1])


def build_train_transforms(img_size: tuple[int, int], hsv: tuple[float, float, float] = (0.1, 1.5, 1.5),
                           flip: bool = True, jitter: float = 0.3, fill: int = PAD_FILL,
                           min_visibility: float = 0.2, min_area: float = 4.0, min_size: float = 2.0
                           ) -> A.Compose:
    """Training pipeline: darknet HSV jitter, horizontal flip, crop/pad jitter, letterbox.

    Args:
        img_size: network input ``(W, H)`` in pixels.
        hsv: darknet ``(hue, saturation, exposure)`` from ``[net]`` (see module docstring);
            ``(0, 1, 1)`` disables colour jitter.
        flip: darknet ``flip=1``: horizontal flip with probability 0.5.
        jitter: darknet ``jitter`` (0 <= jitter < 0.5): each side cropped/padded by up to this
            fraction of the image side.
        fill: padding grey level.
        min_visibility: boxes keeping less than this fraction of their area after a crop are dropped.
        min_area: boxes smaller than this many network pixels are dropped.
        min_size: boxes narrower or lower than this many pixels are dropped.
    Returns:
        ``albumentations.Compose``; call as ``t(image=rgb_uint8, bboxes=(N, 4) xyxy pixels,
        class_labels=(N,))``; output boxes are ``xyxy`` in network pixels. Seed it per sample with
        ``t.set_random_state(np_generator, python_random)`` (see :mod:`detkit.data.dataset`).
    Raises:
        TrainError: for out-of-range settings (named with their value).
    """
    width, height = _check_size(img_size)
    hue, saturation, exposure = (float(v) for v in hsv)
    if not 0.0 <= hue <= 0.5:
        raise TrainError(f"hue must be in [0, 0.5] (fraction of the colour circle), got {hue}")
    for name, value in (("saturation", saturation), ("exposure", exposure)):
        if value < 1.0:
            raise TrainError(f"{name} must be >= 1 (darknet factor bound, 1 = off), got {value}")
    if not 0.0 <= jitter < 0.5:
        raise TrainError(f"jitter must be in [0, 0.5), got {jitter}")
    steps: list[A.BasicTransform] = []
    if hue > 0 or saturation > 1 or exposure > 1:
        # colour first, so that padding added later stays the neutral fill grey
        steps.append(DarknetHSV(hue=hue, saturation=saturation, exposure=exposure, p=1.0))
    if flip:
        steps.append(A.HorizontalFlip(p=0.5))
    if jitter > 0:
        steps.append(A.CropAndPad(percent=(-jitter, jitter), sample_independently=True, keep_size=False,
                                  border_mode=cv2.BORDER_CONSTANT, fill=fill, p=1.0))
    steps.append(Letterbox(width, height, fill=fill))
    return A.Compose(steps, bbox_params=_bbox_params(min_visibility, min_area, min_size), seed=0)


def build_eval_transforms(img_size: tuple[int, int], fill: int = PAD_FILL) -> A.Compose:
    """Validation pipeline: letterbox only (deterministic, same pixels as ``images.letterbox``).

    Boxes are kept unless degenerate (zero width or height after clipping to the image).
    """
    width, height = _check_size(img_size)
    return A.Compose([Letterbox(width, height, fill=fill)],
                     bbox_params=_bbox_params(0.0, 0.0, 0.0), seed=0)


def find_letterbox(transforms: A.Compose) -> Letterbox | None:
    """The last :class:`Letterbox` of a pipeline (its ``params`` describe the last call)."""
    found = None
    for t in transforms.transforms:
        if isinstance(t, Letterbox):
            found = t
        elif isinstance(t, A.BaseCompose):
            found = find_letterbox(t) or found  # type: ignore[arg-type]
    return found
