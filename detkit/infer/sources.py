"""What ``detkit detect`` can read: an image, a folder of images (recursive), a ``.txt`` list of
image paths, or a video file."""
from __future__ import annotations

import os
from pathlib import Path

from detkit.data.datafiles import read_list_file
from detkit.errors import DataError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jpe", ".pgm", ".ppm"}
VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv", ".flv",
                    ".mjpeg", ".mjpg", ".ts", ".3gp", ".ogv"}


def is_video(source: str | os.PathLike) -> bool:
    """True for an existing file with a video extension."""
    src = Path(source)
    return src.is_file() and src.suffix.lower() in VIDEO_EXTENSIONS


def collect_sources(source: str | os.PathLike) -> list[Path]:
    """An image file, a folder (recursive, sorted) or a list file (``.txt``) -> image paths."""
    src = Path(source)
    if src.is_dir():
        found = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not found:
            raise DataError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in folder", path=src)
        return found
    if not src.exists():
        raise DataError("source not found (expected an image, a folder or a .txt list)", path=src)
    if src.suffix.lower() == ".txt":
        paths = read_list_file(src, extra_bases=[Path.cwd()])
        if not paths:
            raise DataError("list file names no images", path=src)
        return paths
    return [src]
