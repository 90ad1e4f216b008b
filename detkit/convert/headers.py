"""Fast image header checks for ``detkit convert-voc``: each image's real size without decoding it.

A JPEG's markers (the first ``Exif`` APP1 segment for the orientation, the first SOFn frame for
the size) or a PNG's IHDR chunk give (width, height) after EXIF orientation -- the same answer as
:func:`detkit.data.images.read_image_size`. Anything else goes to PIL, and a file whose end is
missing is decoded in full, so unreadable or truncated images raise :class:`~detkit.errors.ImageError`.
"""
from __future__ import annotations

import os
from collections import Counter

from detkit.convert.records import ReportLog
from detkit.data.images import read_image, read_image_size


def _exif_orientation(tiff: bytes) -> int:
    """EXIF orientation tag (0x0112) of IFD0 in a TIFF-structured EXIF block; 1 when absent/odd."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    e = "little" if tiff[:2] == b"II" else "big"
    off = int.from_bytes(tiff[4:8], e)
    if off + 2 > len(tiff):
        return 1
    for k in range(int.from_bytes(tiff[off:off + 2], e)):
        p = off + 2 + 12 * k
        if p + 12 > len(tiff):
            break
        if int.from_bytes(tiff[p:p + 2], e) == 0x0112:
            typ = int.from_bytes(tiff[p + 2:p + 4], e)
            if typ == 3:  # SHORT
                v = int.from_bytes(tiff[p + 8:p + 10], e)
            elif typ == 4:  # LONG
                v = int.from_bytes(tiff[p + 8:p + 12], e)
            else:
                return 1
            return v if 1 <= v <= 8 else 1
    return 1


def fast_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) after EXIF orientation from a JPEG's markers or a PNG's IHDR; None: ask PIL.

    Same answer as :func:`detkit.data.images.read_image_size` (tested), without building a PIL
    image: the first ``Exif`` APP1 segment gives the orientation, the first SOFn frame the size.
    """
    if head[:2] == b"\xff\xd8":
        i, n, orientation = 2, len(head), 1
        seen_exif = False
        while i + 4 <= n:
            if head[i] != 0xFF:
                return None
            marker = head[i + 1]
            if marker == 0xFF:
                i += 1
                continue
            if marker == 0x01 or 0xD0 <= marker <= 0xD8:
                i += 2
                continue
            seglen = int.from_bytes(head[i + 2:i + 4], "big")
            if seglen < 2:
                return None
            if marker == 0xE1 and not seen_exif and head[i + 4:i + 10] == b"Exif\x00\x00":
                seen_exif = True
                if i + 2 + seglen > n:
                    return None
                orientation = _exif_orientation(head[i + 10:i + 2 + seglen])
            elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                if i + 9 > n:
                    return None
                h = int.from_bytes(head[i + 5:i + 7], "big")
                w = int.from_bytes(head[i + 7:i + 9], "big")
                if w == 0 or h == 0:
                    return None
                return (h, w) if orientation in (5, 6, 7, 8) else (w, h)
            elif marker == 0xDA:
                return None
            i += 2 + seglen
        return None
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and b"eXIf" not in head:
        w, h = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        return (w, h) if w > 0 and h > 0 else None
    return None


_HEAD_BYTES = 128 * 1024


def image_kind(head: bytes) -> str | None:
    """``.jpg``, ``.png`` or ``.bmp`` from a file's first bytes (its content, not its name); None otherwise."""
    if head[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if head[:2] == b"BM" and len(head) >= 26:
        return ".bmp"
    return None


def sniff_image(path: str) -> str | None:
    """:func:`image_kind` of a file on disk; None when it cannot be read or is not such an image."""
    try:
        with open(path, "rb") as fh:
            return image_kind(fh.read(32))
    except OSError:
        return None


def check_image(path: str) -> tuple[int, int]:
    """Real (width, height) after EXIF orientation; raises ImageError for unreadable/truncated files.

    The header gives the size (fast marker parser, PIL for anything else); a JPEG without an
    end-of-image marker after its last scan, or a PNG without its IEND chunk, is decoded in full
    (which raises for a file cut short).
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(_HEAD_BYTES)
            if len(head) == _HEAD_BYTES:
                fh.seek(-min(64 * 1024, max(0, os.fstat(fh.fileno()).st_size - _HEAD_BYTES)), os.SEEK_END)
                tail = fh.read() or head
            else:
                tail = head
    except OSError:
        return read_image_size(path)  # raises ImageError with the reason
    size = fast_size(head)
    if size is None:
        size = read_image_size(path)
    if head[:2] == b"\xff\xd8":
        eoi = tail.rfind(b"\xff\xd9")  # complete: an end-of-image marker after the last start-of-scan
        complete = eoi >= 0 and tail.find(b"\xff\xda", eoi + 1) < 0  # (no scan after it; found from the end)
    elif head[:8] == b"\x89PNG\r\n\x1a\n":
        complete = b"IEND" in tail[-64:]
    else:
        complete = True
    if not complete:
        read_image(path)  # raises ImageError("truncated ...") when the data really is cut short
    return size


def check_claimed_size(claimed_w, claimed_h, w: int, h: int, file: str, logs: ReportLog, counters: Counter,
                       what: str = "<size>") -> None:
    """Compare the size an annotation claims with the image's real size (the real one is used)."""
    if claimed_w is None or claimed_h is None:
        counters["size_missing"] += 1
    elif (claimed_w, claimed_h) != (w, h):
        hint = " (width and height swapped: EXIF rotation?)" if (claimed_w, claimed_h) == (h, w) else ""
        cw, ch = (int(v) if float(v).is_integer() else v for v in (claimed_w, claimed_h))
        logs.warn(file, "size_mismatch", f"{what} {cw}x{ch} disagrees with the image's "
                  f"real size {w}x{h}{hint}; boxes normalised by the real size")
