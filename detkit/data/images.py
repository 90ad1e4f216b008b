"""Robust image reading and network-input resizing.

Everything here returns RGB ``uint8`` arrays of shape ``(H, W, 3)``:

* EXIF orientation is applied (like darknet's ``load_image_cv`` and ``cv2.imread`` do), so boxes
  annotated on the image as a viewer shows it line up;
* greyscale, palette, CMYK, 16-bit and alpha images become 8-bit RGB (alpha is dropped, as darknet
  and OpenCV do; 16-bit is scaled by 1/256);
* paths with non-ASCII characters work (bytes are read by Python, decoded from memory);
* missing, empty, truncated, undecodable and oversized ("decompression bomb") files raise
  :class:`~detkit.errors.ImageError` naming the path and the reason. A JPEG cut short is reported,
  never silently decoded to a half-grey picture.

Decoding uses OpenCV (fast) with PIL as the header reader and fallback decoder. Resizing uses
``cv2.resize`` with ``INTER_LINEAR`` (bilinear, no antialiasing), close to darknet's own bilinear
``resize_image``.
"""
from __future__ import annotations

import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from detkit.boxes import letterbox_params
from detkit.errors import ImageError

log = logging.getLogger(__name__)

#: Largest image accepted, in pixels (width * height), checked from the header before decoding.
MAX_PIXELS = 100_000_000

_EXIF_ORIENTATION = 0x0112
_JPEG_EOI = b"\xff\xd9"
_JPEG_SOS = b"\xff\xda"


@dataclass(frozen=True)
class ImageHeader:
    """What the file header says, before any pixel is decoded.

    ``width``/``height`` are as stored (before EXIF orientation); ``orientation`` is the EXIF
    orientation tag 1..8 (1 = as stored).
    """

    format: str
    width: int
    height: int
    orientation: int

    @property
    def oriented_size(self) -> tuple[int, int]:
        """(width, height) as displayed, i.e. after applying the EXIF orientation."""
        if self.orientation in (5, 6, 7, 8):  # the four orientations that swap the axes
            return self.height, self.width
        return self.width, self.height


def _read_bytes(path: str | os.PathLike) -> bytes:
    p = Path(path)
    if not p.exists():
        raise ImageError("image file not found", path=path)
    if p.is_dir():
        raise ImageError("is a directory, not an image file", path=path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read image file: {exc.strerror or exc}", path=path) from exc
    if not data:
        raise ImageError("image file is empty (0 bytes)", path=path)
    return data


def _orientation_of(img: Image.Image) -> int:
    try:
        value = int(img.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception as exc:  # a malformed EXIF block must not make a good image unreadable
        log.debug("ignoring unreadable EXIF data: %s", exc)
        return 1
    return value if 1 <= value <= 8 else 1


def _open_header(source, path: str | os.PathLike) -> ImageHeader:
    """Parse the header with PIL (lazy: no pixel data is decoded)."""
    try:
        with warnings.catch_warnings():
            # PIL warns above its own (global) bomb limit; we apply MAX_PIXELS ourselves.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                if img.width * img.height > MAX_PIXELS:  # PIL's PNG getexif() decodes every pixel: skip it
                    return ImageHeader(img.format or "?", int(img.width), int(img.height), 1)
                return ImageHeader(img.format or "?", int(img.width), int(img.height), _orientation_of(img))
    except UnidentifiedImageError as exc:
        raise ImageError("not a recognised image format", path=path) from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image too large to decode safely ({exc})", path=path) from exc
    except (OSError, ValueError, SyntaxError) as exc:  # PIL raises these for corrupt headers
        raise ImageError(f"corrupt image header: {exc}", path=path) from exc


def _check_pixels(width: int, height: int, path) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"image header gives an empty size {width}x{height}", path=path)
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"image is {width}x{height} = {width * height / 1e6:.0f} megapixels, above the "
            f"{MAX_PIXELS / 1e6:.0f} megapixel limit (possible decompression bomb)", path=path)


def _jpeg_looks_complete(data: bytes) -> bool:
    """True when an end-of-image marker follows the last start-of-scan marker.

    Entropy-coded scan data never contains 0xFFD9 (0xFF bytes are stuffed with 0x00), so a JPEG cut
    inside its scan data has no EOI after its last SOS. Files failing this check are not rejected
    outright: they get a strict PIL decode, which also accepts oddities such as trailers.
    """
    last_sos = data.rfind(_JPEG_SOS)
    return last_sos >= 0 and data.rfind(_JPEG_EOI) > last_sos


def _decode_pil_strict(data: bytes, path) -> np.ndarray:
    """Full decode with PIL, which raises on truncated data (LOAD_TRUNCATED_IMAGES is left False)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                if img.mode.startswith("I;16"):  # PIL's convert("RGB") would clip, not scale
                    grey = (np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8)
                    return np.repeat(grey[..., None], 3, axis=2)
                return np.asarray(img.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        msg = str(exc)
        if "truncated" in msg:
            raise ImageError(f"image file is truncated ({msg})", path=path) from exc
        raise ImageError(f"cannot decode image: {msg}", path=path) from exc


def _to_rgb8(arr: np.ndarray) -> np.ndarray:
    """OpenCV decode result (BGR/BGRA/grey, 8 or 16 bit) -> RGB uint8."""
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif arr.dtype != np.uint8:  # float TIFF/EXR: assume [0, 1]
        arr = (np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if arr.ndim == 2:
        return cv2.cvtColor(arr, cv2.COLOR_GRAY2RGB)
    if arr.shape[2] == 4:
        return cv2.cvtColor(arr, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation tag (1..8) to an (H, W, C) array, as PIL's ``exif_transpose`` does."""
    if orientation == 2:
        out = img[:, ::-1]
    elif orientation == 3:
        out = img[::-1, ::-1]
    elif orientation == 4:
        out = img[::-1]
    elif orientation == 5:
        out = img.swapaxes(0, 1)
    elif orientation == 6:
        out = np.rot90(img, k=-1)  # 90 degrees clockwise
    elif orientation == 7:
        out = np.rot90(img, k=-1)[::-1]  # transverse (transpose across the anti-diagonal)
    elif orientation == 8:
        out = np.rot90(img, k=1)  # 90 degrees counter-clockwise
    else:
        return img
    return np.ascontiguousarray(out)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as RGB uint8 ``(H, W, 3)``, EXIF orientation applied.

    Raises:
        ImageError: missing, empty, truncated, undecodable, or larger than :data:`MAX_PIXELS`.
    """
    data = _read_bytes(path)
    header = _open_header(io.BytesIO(data), path)
    _check_pixels(header.width, header.height, path)
    if header.format in ("JPEG", "MPO") and not _jpeg_looks_complete(data):
        arr = _decode_pil_strict(data, path)  # raises "truncated" for a file cut short
    else:
        # IMREAD_COLOR: 3-channel 8-bit BGR (grey, palette, CMYK, 16-bit converted; alpha dropped);
        # orientation is applied below from the same header read_image_size uses.
        raw = cv2.imdecode(np.frombuffer(data, dtype=np.uint8),
                           cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if raw is None or raw.size == 0:
            arr = _decode_pil_strict(data, path)
        else:
            arr = _to_rgb8(raw)
    if arr.shape[:2] != (header.height, header.width):
        raise ImageError(
            f"decoded size {arr.shape[1]}x{arr.shape[0]} differs from the header's "
            f"{header.width}x{header.height}", path=path)
    return apply_orientation(arr, header.orientation)


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file after EXIF orientation, from its header only.

    Raises:
        ImageError: missing, empty or not a recognised image.
    """
    p = Path(path)
    if not p.is_file():
        raise ImageError("image file not found" if not p.exists() else "not a regular file", path=path)
    if p.stat().st_size == 0:
        raise ImageError("image file is empty (0 bytes)", path=path)
    try:
        with open(p, "rb") as fh:
            header = _open_header(fh, path)
    except OSError as exc:
        raise ImageError(f"cannot read image file: {exc.strerror or exc}", path=path) from exc
    if header.width <= 0 or header.height <= 0:
        raise ImageError(f"image header gives an empty size {header.width}x{header.height}", path=path)
    return header.oriented_size


def _check_rgb(img: np.ndarray) -> None:
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        desc = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise ValueError(f"expected an RGB uint8 array of shape (H, W, 3), got {desc}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"image has an empty size {img.shape[1]}x{img.shape[0]}")


def letterbox(img: np.ndarray, size: tuple[int, int], fill: int = 114
              ) -> tuple[np.ndarray, float, float, float]:
    """Aspect-preserving resize into ``size`` = (W, H), centred on a ``fill`` grey background.

    Args:
        img: RGB uint8 ``(h, w, 3)``.
        size: network input (W, H) in pixels.
        fill: padding grey level 0..255.
    Returns:
        ``(out (H, W, 3) uint8, scale, pad_x, pad_y)``: a source point (x, y) lands at
        ``(x * scale + pad_x, y * scale + pad_y)`` (see :func:`detkit.boxes.letterbox_params`;
        inverse: :func:`detkit.boxes.unletterbox_xyxy`).
    """
    _check_rgb(img)
    dst_w, dst_h = int(size[0]), int(size[1])
    src_h, src_w = img.shape[:2]
    scale, pad_x, pad_y = letterbox_params(src_w, src_h, dst_w, dst_h)
    # same rounding as letterbox_params; at least one pixel for extreme aspect ratios
    new_w, new_h = max(1, round(src_w * scale)), max(1, round(src_h * scale))
    out = np.full((dst_h, dst_w, 3), fill, dtype=np.uint8)
    resized = img if (new_w, new_h) == (src_w, src_h) else cv2.resize(
        img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    px, py = int(pad_x), int(pad_y)
    out[py:py + new_h, px:px + new_w] = resized
    return out, scale, pad_x, pad_y


def resize_plain(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Stretch to ``size`` = (W, H) ignoring aspect ratio (darknet's default, non-letterbox mode).

    A source point (x, y) lands at ``(x * W / w, y * H / h)``.
    """
    _check_rgb(img)
    dst_w, dst_h = int(size[0]), int(size[1])
    if (dst_w, dst_h) == (img.shape[1], img.shape[0]):
        return img.copy()
    return cv2.resize(img, (dst_w, dst_h), interpolation=cv2.INTER_LINEAR)


def _darknet_axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (i0, i1) and weights of i1 for darknet's corner-aligned bilinear resize."""
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    pos = np.arange(n_out, dtype=np.float32) * np.float32(scale)
    i0 = np.minimum(pos.astype(np.int64), n_in - 1)
    frac = (pos - i0).astype(np.float32)
    frac[-1] = 0.0  # darknet copies the last column/row (`if (c == w-1) val = get_pixel(im, im.w-1, ...)`)
    i0[-1] = n_in - 1
    return i0, np.minimum(i0 + 1, n_in - 1), frac


def resize_darknet(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Stretch to ``size`` = (W, H) exactly as darknet's ``resize_image`` does; float32 in [0, 1].

    darknet (``detector test`` without letter_box) scales pixels to [0, 1] and resizes with
    separable bilinear interpolation whose corner pixels are aligned (source x = c * (w - 1) /
    (W - 1)), keeping floats. Reproducing it makes scores match darknet's to about 0.005, where
    ``cv2.resize`` (half-pixel centres, uint8) moves them by a few hundredths.

    Returns:
        (H, W, 3) float32 in [0, 1].
    """
    _check_rgb(img)
    dst_w, dst_h = int(size[0]), int(size[1])
    src_h, src_w = img.shape[:2]
    x0, x1, fx = _darknet_axis(src_w, dst_w)
    y0, y1, fy = _darknet_axis(src_h, dst_h)
    f = img.astype(np.float32) * np.float32(1.0 / 255.0)
    fx, fy = fx[None, :, None], fy[:, None, None]
    part = f[:, x0] * (1 - fx) + f[:, x1] * fx  # (h, W, 3): horizontal pass first, as darknet
    return np.ascontiguousarray(part[y0] * (1 - fy) + part[y1] * fy, dtype=np.float32)
