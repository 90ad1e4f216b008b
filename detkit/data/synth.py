"""Synthetic 2-class detection dataset in Pascal VOC form (the data behind ``detkit demo``).

Each image is a textured, noisy background (low-frequency colour waves, pixel noise, thin
distractor lines) with 0..``max_objects`` solid shapes of two classes, ``circle`` and ``square``,
of varied size, colour and position. Shapes never touch each other and lie fully inside the
image, so every annotated box is exactly the drawn pixels' extent: for a shape covering 0-based
pixel columns ``c0..c1`` (inclusive), the XML holds ``xmin = c0 + 1``, ``xmax = c1 + 1`` (VOC is
1-based inclusive; see :mod:`detkit.data.voc`).

Two on-disk layouts, both recognised by ``detkit convert-voc`` without flags:

* ``"voc"``: a VOC year folder ``ROOT/{Annotations,JPEGImages,ImageSets/Main}`` with
  ``train.txt``, ``val.txt``, ``trainval.txt`` (the held-out split is ``val``).
* ``"labelimg"``: labelImg's output, each XML beside its image, spread over sub-folders (no split
  files; the converter draws the split).

Some file and folder names are Chinese (``图片_0001.jpg``, folder ``场景_甲``) so that the
converter's ASCII-safe renaming is exercised. The same arguments always give byte-identical
files. Files are written atomically (temporary file in the same folder, then ``os.replace``).
"""
from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from detkit.errors import DataError
from detkit.fileio import write_bytes_atomic

CLASS_NAMES: tuple[str, str] = ("circle", "square")
DEFAULT_ROOT_NAME = "数据集"  # "dataset": a non-ASCII root folder
_SUBFOLDERS = ("场景_甲", "scene_b")  # labelImg layout: one Chinese, one ASCII sub-folder
# Objects-per-image distribution for max_objects=4: 10% empty, then 1..4 objects.
_COUNT_WEIGHTS = (0.10, 0.25, 0.30, 0.22, 0.13)

Layout = Literal["voc", "labelimg"]


@dataclass(frozen=True)
class SynthObject:
    """One drawn shape.

    Attributes:
        name: class name (``"circle"`` or ``"square"``).
        xmin, ymin, xmax, ymax: VOC 1-based inclusive pixel box of the drawn pixels.
        color: RGB fill colour, 0..255.
    """

    name: str
    xmin: int
    ymin: int
    xmax: int
    ymax: int
    color: tuple[int, int, int]


@dataclass(frozen=True)
class SynthScene:
    """One rendered image before encoding: ``image`` is RGB uint8 (H, W, 3)."""

    image: np.ndarray
    objects: tuple[SynthObject, ...]


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`generate_voc_dataset` wrote.

    Attributes:
        root: the dataset folder (pass it to ``detkit convert-voc``).
        layout: ``"voc"`` or ``"labelimg"``.
        class_names: the classes, in the order used for ``obj.names``.
        num_images: images written. empty_images: images without any object.
        objects_per_class: object count per class name.
        train, val: image stems (relative paths without extension for ``labelimg``) per split;
            for ``labelimg`` these are the generator's suggestion only (no split files exist).
        image_size: (width, height) of every image, pixels.
    """

    root: Path
    layout: str
    class_names: tuple[str, ...]
    num_images: int
    empty_images: int
    objects_per_class: dict[str, int]
    train: tuple[str, ...]
    val: tuple[str, ...]
    image_size: tuple[int, int]


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Textured background: low-frequency colour waves + pixel noise + thin lines. (H, W, 3) uint8."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(60, 190, size=3).astype(np.float32)
    img = np.empty((height, width, 3), dtype=np.float32)
    img[:] = base
    for _ in range(3):  # a few plane waves per channel
        fx, fy = rng.uniform(-0.05, 0.05, size=2)
        phase = rng.uniform(0, 2 * math.pi)
        amp = rng.uniform(8, 30, size=3).astype(np.float32)
        wave = np.sin(xx * fx + yy * fy + phase)
        img += wave[..., None] * amp
    img += rng.normal(0.0, rng.uniform(4, 14), size=img.shape).astype(np.float32)
    out = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(0, 5))):  # distractor lines, thin and dim-ish
        p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        p2 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        col = tuple(int(c) for c in rng.integers(30, 226, size=3))
        cv2.line(out, p1, p2, col, 1, lineType=cv2.LINE_8)
    return out


def _object_color(rng: np.random.Generator, bg: np.ndarray) -> tuple[int, int, int]:
    """A fill colour that differs clearly from the local background mean (RGB)."""
    mean = bg.reshape(-1, 3).mean(axis=0)
    for _ in range(50):
        col = rng.integers(0, 256, size=3)
        if np.abs(col - mean).sum() > 150:
            return (int(col[0]), int(col[1]), int(col[2]))
    return tuple(int(c) for c in np.where(mean > 127, 20, 235))  # type: ignore[return-value]


def render_scene(rng: np.random.Generator, width: int, height: int, *, max_objects: int = 4,
                 min_size: float = 0.14, max_size: float = 0.42) -> SynthScene:
    """Draw one image with its objects.

    Args:
        rng: source of randomness (consumed; same state -> same scene).
        width, height: image size, pixels (each >= 32).
        max_objects: at most this many shapes (0..max_objects, about 10% of images empty).
        min_size, max_size: shape extent (diameter or side) as a fraction of ``min(width, height)``.
    Returns:
        the RGB image (H, W, 3) uint8 and its objects with 1-based inclusive pixel boxes.
    """
    if width < 32 or height < 32:
        raise DataError(f"synthetic image size must be at least 32x32, got {width}x{height}")
    if not 0 < min_size <= max_size < 1:
        raise DataError(f"need 0 < min_size <= max_size < 1, got {min_size}, {max_size}")
    img = _background(rng, width, height)
    weights = np.asarray(_COUNT_WEIGHTS[: max_objects + 1], dtype=np.float64)
    if max_objects + 1 > len(weights):
        weights = np.concatenate([weights, np.full(max_objects + 1 - len(weights), weights[-1])])
    n = int(rng.choice(len(weights), p=weights / weights.sum()))
    short = min(width, height)
    taken: list[tuple[int, int, int, int]] = []  # 0-based inclusive c0, r0, c1, r1
    objects: list[SynthObject] = []
    for _ in range(n):
        for _attempt in range(40):
            cls = int(rng.integers(0, 2))
            side = int(round(rng.uniform(min_size, max_size) * short))
            if cls == 0:  # circle: cv2 fills centre +- r, so the extent is 2r+1 pixels
                r = max(side // 2, 4)
                cx = int(rng.integers(r, width - r))
                cy = int(rng.integers(r, height - r))
                box = (cx - r, cy - r, cx + r, cy + r)
            else:  # axis-aligned square, corners inclusive
                s = max(side, 8)
                x0 = int(rng.integers(0, width - s))
                y0 = int(rng.integers(0, height - s))
                box = (x0, y0, x0 + s - 1, y0 + s - 1)
            gap = 3  # shapes never touch: every box is exactly its shape's pixels
            if all(box[2] + gap < t[0] or t[2] + gap < box[0] or box[3] + gap < t[1] or t[3] + gap < box[1]
                   for t in taken):
                break
        else:
            continue  # no free spot: fewer objects in this image
        c0, r0, c1, r1 = box
        color = _object_color(rng, img[r0:r1 + 1, c0:c1 + 1])
        if cls == 0:
            cv2.circle(img, ((c0 + c1) // 2, (r0 + r1) // 2), (c1 - c0) // 2, color, -1, lineType=cv2.LINE_8)
        else:
            cv2.rectangle(img, (c0, r0), (c1, r1), color, -1, lineType=cv2.LINE_8)
        taken.append(box)
        objects.append(SynthObject(CLASS_NAMES[cls], c0 + 1, r0 + 1, c1 + 1, r1 + 1, color))
    return SynthScene(image=img, objects=tuple(objects))


def _write(path: Path, data: bytes) -> None:
    write_bytes_atomic(path, data, fsync=False, make_parents=True)  # many small files: no fsync


def _encode_image(image: np.ndarray, ext: str, jpeg_quality: int) -> bytes:
    # imencode + our own write: cv2.imwrite cannot handle non-ASCII paths on every platform.
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if ext in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, bgr, params)
    if not ok:
        raise DataError(f"cannot encode image as {ext}")
    return buf.tobytes()


def voc_xml_bytes(filename: str, folder: str, width: int, height: int,
                  objects: Sequence[SynthObject]) -> bytes:
    """Pascal VOC XML for one image (UTF-8, 1-based inclusive integer boxes, difficult=0)."""
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = folder
    ET.SubElement(ann, "filename").text = filename
    src = ET.SubElement(ann, "source")
    ET.SubElement(src, "database").text = "detkit synthetic shapes"
    size = ET.SubElement(ann, "size")
    ET.SubElement(size, "width").text = str(width)
    ET.SubElement(size, "height").text = str(height)
    ET.SubElement(size, "depth").text = "3"
    ET.SubElement(ann, "segmented").text = "0"
    for o in objects:
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = o.name
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        bb = ET.SubElement(obj, "bndbox")
        for tag, v in (("xmin", o.xmin), ("ymin", o.ymin), ("xmax", o.xmax), ("ymax", o.ymax)):
            ET.SubElement(bb, tag).text = str(v)
    ET.indent(ann, space="  ")
    return ET.tostring(ann, encoding="utf-8", xml_declaration=True) + b"\n"


def _stem(i: int) -> str:
    # Every other image gets a Chinese name ("图片" = picture), the rest ASCII.
    return f"图片_{i:04d}" if i % 2 == 0 else f"img_{i:04d}"


def generate_voc_dataset(out_dir: str | os.PathLike, num_images: int, seed: int = 0, *,
                         img_size: tuple[int, int] = (256, 256), layout: Layout = "voc",
                         val_fraction: float = 0.25, max_objects: int = 4,
                         min_size: float = 0.14, max_size: float = 0.42,
                         image_ext: str = ".jpg", jpeg_quality: int = 92,
                         root_name: str = DEFAULT_ROOT_NAME) -> SynthSummary:
    """Write a synthetic 2-class VOC dataset under ``out_dir/root_name``.

    Args:
        out_dir: parent folder (created). The dataset goes to ``out_dir/root_name``, which must not
            exist yet or be empty (never overwrites anything).
        num_images: images to draw (>= 2: at least one per split).
        seed: all randomness comes from ``numpy.random.default_rng(seed)``; same seed, same bytes.
        img_size: (width, height) in pixels of every image.
        layout: ``"voc"`` (VOC year folder with ImageSets split files) or ``"labelimg"`` (XML beside
            image, in two sub-folders, one with a Chinese name).
        val_fraction: share of images in the held-out ``val`` split (at least one image).
        max_objects: most shapes per image. min_size, max_size: shape size range as a fraction
            of the image's shorter side.
        image_ext: ``".jpg"`` or ``".png"`` (PNG is lossless: pixels exactly as drawn).
        jpeg_quality: JPEG quality 1..100.
        root_name: name of the dataset folder (default Chinese ``数据集``, "dataset").
    Returns:
        a :class:`SynthSummary`.
    Raises:
        DataError: bad arguments, or the target folder exists and is not empty.
    """
    if num_images < 2:
        raise DataError(f"need at least 2 images (one per split), got num_images={num_images}")
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if layout not in ("voc", "labelimg"):
        raise DataError(f"unknown layout {layout!r}; valid: 'voc', 'labelimg'")
    image_ext = image_ext.lower()
    if image_ext not in (".jpg", ".jpeg", ".png"):
        raise DataError(f"image_ext must be .jpg, .jpeg or .png, got {image_ext!r}")
    width, height = int(img_size[0]), int(img_size[1])
    root = Path(out_dir) / root_name
    if root.exists() and any(root.iterdir()):
        raise DataError("synthetic dataset folder exists and is not empty; choose another folder",
                        path=root)
    rng = np.random.default_rng(seed)
    order = rng.permutation(num_images)
    n_val = min(max(1, int(round(num_images * val_fraction))), num_images - 1)
    val_ids = set(int(i) for i in order[:n_val])

    counts = {c: 0 for c in CLASS_NAMES}
    empty = 0
    train: list[str] = []
    val: list[str] = []
    every: list[str] = []
    for i in range(num_images):
        scene = render_scene(rng, width, height, max_objects=max_objects,
                             min_size=min_size, max_size=max_size)
        stem = _stem(i)
        if layout == "voc":
            img_path = root / "JPEGImages" / f"{stem}{image_ext}"
            xml_path = root / "Annotations" / f"{stem}.xml"
            folder, key = "JPEGImages", stem
        else:
            sub = _SUBFOLDERS[i % len(_SUBFOLDERS)]
            img_path = root / sub / f"{stem}{image_ext}"
            xml_path = root / sub / f"{stem}.xml"
            folder, key = sub, f"{sub}/{stem}"
        _write(img_path, _encode_image(scene.image, image_ext, jpeg_quality))
        _write(xml_path, voc_xml_bytes(img_path.name, folder, width, height, scene.objects))
        for o in scene.objects:
            counts[o.name] += 1
        empty += not scene.objects
        (val if i in val_ids else train).append(key)
        every.append(key)

    if layout == "voc":
        sets = root / "ImageSets" / "Main"
        for name, stems in (("train", train), ("val", val), ("trainval", every)):
            _write(sets / f"{name}.txt", "".join(s + "\n" for s in stems).encode("utf-8"))
    return SynthSummary(root=root, layout=layout, class_names=CLASS_NAMES, num_images=num_images,
                        empty_images=empty, objects_per_class=counts, train=tuple(train),
                        val=tuple(val), image_size=(width, height))
