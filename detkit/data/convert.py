"""``detkit convert-voc``: Pascal VOC XML datasets -> a YOLO/darknet dataset folder.

Layouts recognised under SRC without flags (they may be mixed):

* a VOC year folder ``Annotations/`` + ``JPEGImages/`` (+ optional ``ImageSets/Main/*.txt``),
  SRC itself or any folder below it (so a ``VOCdevkit/`` with several years works);
* any other XML: labelImg's layout, the image sits in the XML's own folder.

The image is found by the XML's ``<filename>`` (case-insensitively, extension optional), then by
the XML's stem with ``.jpg .jpeg .png .bmp`` in any case; ``<path>`` is never used. A
``<filename>`` that is absolute or contains ``..`` is ignored and reported; only files found by
walking SRC (symlinks leading outside SRC excluded) can ever be read.

Box rule: VOC ``xmin..xmax`` are 1-based inclusive pixels, so the continuous box is
``x1 = xmin - 1, x2 = xmax`` (width ``xmax - xmin + 1``); YOLO values are ``cx = (x1 + x2) / 2 / W``,
``w = (x2 - x1) / W`` with W, H the real image size (EXIF orientation applied).
``legacy_offset`` reproduces darknet's ``voc_label.py`` instead: ``cx = ((xmin + xmax) / 2 - 1) / W``,
``w = (xmax - xmin) / W``.

OUT is built in a hidden sibling folder and renamed into place at the end, so OUT is either the
previous complete result or the new complete result, never a half-written one; SRC is only read.
See docs/convert.md for the OUT layout and the report fields.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import random
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

import yaml

from detkit.data.datafiles import IMAGE_EXTENSIONS, format_yolo_labels
from detkit.data.images import read_image, read_image_size
from detkit.data.records import ImageRecord
from detkit.data.sanitize import sanitize_paths
from detkit.data.voc import read_voc_annotation
from detkit.errors import AnnotationError, DataError, ImageError

log = logging.getLogger(__name__)

TOOL = "detkit convert-voc"
REPORT_NAME = "convert_report.json"
SPLIT_FILES = ("train", "val", "trainval", "test")
#: Top-level entries of OUT written by convert-voc (anything else in an old OUT needs --force).
OUT_ENTRIES = {"images", "labels", "backup", "train.txt", "val.txt", "test.txt", "obj.names", "obj.data",
               "data.yaml", "rename_map.csv", REPORT_NAME}
#: Boxes sticking out of the image by at most this many pixels are clipped without a warning
#: (0-based annotators write ``xmin = 0``; VOC's 1-based rule then puts x1 at -1).
CLIP_SILENT_PX = 1.0
#: Output extensions: ``.jpeg`` is renamed ``.jpg`` (same bytes); BMP is re-encoded as lossless PNG,
#: because pjreddie's darknet derives label paths only from ``.jpg``/``.png``/``.JPG``/``.JPEG``.
EXT_ALIASES = {".jpeg": ".jpg", ".bmp": ".png"}


@dataclass(frozen=True)
class ConvertOptions:
    """Settings of one conversion (the CLI flags).

    Attributes:
        names: fixed class order; objects of other classes are skipped and counted. None: the
            sorted set of class names found.
        val_fraction: share of images drawn for ``val.txt`` when SRC has no ImageSets split.
        seed: seed of that draw.
        difficult: ``"skip"`` leaves difficult objects out of the labels, ``"keep"`` writes them.
        link: ``"link"`` hard-links images (copies where the file system refuses), ``"copy"`` copies.
        legacy_offset: darknet ``voc_label.py`` arithmetic (see module docstring).
        strict: any warning is an error (nothing is written).
        force: replace an existing OUT even when it is not an earlier detkit output.
        progress: show a tqdm progress bar.
    """

    names: tuple[str, ...] | None = None
    val_fraction: float = 0.2
    seed: int = 0
    difficult: Literal["skip", "keep"] = "skip"
    link: Literal["link", "copy"] = "link"
    legacy_offset: bool = False
    strict: bool = False
    force: bool = False
    progress: bool = False


@dataclass(frozen=True)
class ClassStats:
    """Per-class counts: images with at least one written object, written objects, difficult objects."""

    images: int
    objects: int
    difficult: int


@dataclass(frozen=True)
class ConvertResult:
    """What a conversion produced (the full detail is in ``report``, also written to OUT)."""

    out: Path
    class_names: tuple[str, ...]
    per_class: dict[str, ClassStats]
    images: int
    splits: dict[str, int]
    warnings: tuple[dict, ...]
    skipped: tuple[dict, ...]
    report: dict = field(repr=False)

    @property
    def report_path(self) -> Path:
        return self.out / REPORT_NAME


@dataclass
class _Item:
    """One converted image (internal, mutable while building)."""

    xml_rel: str
    image_rel: str
    logical: str  # path used for the output name
    group: str | None  # VOC year root (relative), None for labelImg layout
    split_id: str  # ImageSets id (the XML stem)
    width: int
    height: int
    objects: list[tuple[str, float, float, float, float]]  # class name, cx, cy, w, h (normalised)
    difficult_names: list[str]


class _Log:
    """Collects warnings and skipped files for the report (paths relative to SRC)."""

    def __init__(self) -> None:
        self.warnings: list[dict] = []
        self.skipped: list[dict] = []

    def warn(self, file: str, code: str, message: str, line: int | None = None) -> None:
        entry = {"file": file, "code": code, "message": message}
        if line is not None:
            entry["line"] = line
        self.warnings.append(entry)
        log.debug("%s: %s", file, message)

    def skip(self, file: str, code: str, reason: str) -> None:
        self.skipped.append({"file": file, "code": code, "reason": reason})
        log.debug("skipped %s: %s", file, reason)


# --------------------------------------------------------------------------- discovery

@dataclass
class _Tree:
    xmls: list[str]
    images: list[str]
    folder_index: dict[str, dict[str, str]]  # rel folder -> {lower-case name: real name}
    year_roots: set[str]


def _rel(p: str) -> str:
    return p.replace(os.sep, "/")


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def _walk(src: Path, logs: _Log) -> _Tree:
    """List SRC (sorted, symlinked folders not followed, symlinks leading outside SRC skipped)."""
    real_src = src.resolve()
    xmls, images = [], []
    index: dict[str, dict[str, str]] = {}
    year_roots: set[str] = set()
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        try:
            entries = sorted(os.scandir(os.path.join(src, rel_dir) if rel_dir else src), key=lambda e: e.name)
        except OSError as exc:
            logs.skip(rel_dir, "unreadable_folder", f"cannot list folder: {exc.strerror or exc}")
            continue
        dirs = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
        if "Annotations" in dirs and "JPEGImages" in dirs:
            year_roots.add(rel_dir)
        folder = index.setdefault(rel_dir, {})
        for e in entries:
            rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
            if e.is_dir(follow_symlinks=False):
                continue
            if e.is_symlink():
                try:
                    target = Path(e.path).resolve()
                except (OSError, RuntimeError):  # a symlink loop (RuntimeError before Python 3.13)
                    logs.skip(rel, "symlink_loop", "symbolic link loop (not followed)")
                    continue
                if not _inside(target, real_src):
                    logs.skip(rel, "symlink_outside", "symbolic link leading outside SRC (not followed)")
                    continue
                if not os.path.isfile(e.path):
                    continue
            suffix = os.path.splitext(e.name)[1].lower()
            if suffix == ".xml":
                xmls.append(rel)
            elif suffix in IMAGE_EXTENSIONS:
                images.append(rel)
                folder[e.name.lower()] = e.name
        stack.extend(f"{rel_dir}/{d}" if rel_dir else d for d in reversed(dirs))
    xmls.sort()
    images.sort()
    return _Tree(xmls, images, index, year_roots)


def _in_year_folder_outside_jpegimages(rel: str, year_roots: set[str]) -> bool:
    """True for e.g. ``VOC2012/SegmentationClass/x.png``: part of a year folder, not a detection image."""
    for root in year_roots:
        prefix = f"{root}/" if root else ""
        if rel.startswith(prefix) and not rel.startswith(f"{prefix}JPEGImages/"):
            return True
    return False


def _unsafe_filename(fname: str) -> bool:
    f = fname.replace("\\", "/")
    if f.startswith("/") or (len(f) > 1 and f[1] == ":") or f.startswith("~"):
        return True
    return ".." in PurePosixPath(f).parts


def _lookup(tree: _Tree, folder: str, name: str) -> str | None:
    """Case-insensitive file lookup of ``folder/name`` (name may hold sub-folders) in the walk."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts:
        return None
    sub = "/".join([folder] + parts[:-1]) if folder else "/".join(parts[:-1])
    real = tree.folder_index.get(sub, {}).get(parts[-1].lower())
    if real is None:
        return None
    return f"{sub}/{real}" if sub else real


def _find_image(tree: _Tree, image_dir: str, rec: ImageRecord, xml_rel: str, logs: _Log) -> str | None:
    fname = rec.filename.strip()
    if fname and _unsafe_filename(fname):
        logs.warn(xml_rel, "unsafe_filename",
                  f"<filename> {fname!r} points outside the annotation's folder; ignored")
        fname = ""
    if fname:
        hit = _lookup(tree, image_dir, fname)
        if hit is None and os.path.splitext(fname)[1].lower() not in IMAGE_EXTENSIONS:
            for ext in IMAGE_EXTENSIONS:
                hit = _lookup(tree, image_dir, fname + ext)
                if hit:
                    break
        if hit:
            return hit
    stem = PurePosixPath(xml_rel).stem
    for ext in IMAGE_EXTENSIONS:
        hit = _lookup(tree, image_dir, stem + ext)
        if hit:
            if fname:
                logs.warn(xml_rel, "filename_mismatch",
                          f"<filename> {fname!r} not found; using {PurePosixPath(hit).name!r} (the XML's stem)")
            return hit
    return None


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


def _fast_size(head: bytes) -> tuple[int, int] | None:
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


def _check_image(path: str) -> tuple[int, int]:
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
    size = _fast_size(head)
    if size is None:
        size = read_image_size(path)
    if head[:2] == b"\xff\xd8":
        sos = tail.rfind(b"\xff\xda")
        eoi = tail.rfind(b"\xff\xd9")
        complete = eoi >= 0 and eoi > sos
    elif head[:8] == b"\x89PNG\r\n\x1a\n":
        complete = b"IEND" in tail[-64:]
    else:
        complete = True
    if not complete:
        read_image(path)  # raises ImageError("truncated ...") when the data really is cut short
    return size


# --------------------------------------------------------------------------- per annotation

def _convert_boxes(rec: ImageRecord, w: int, h: int, xml_rel: str, opts: ConvertOptions,
                   known: set[str] | None, unknown: Counter, logs: _Log, counters: Counter
                   ) -> tuple[list[tuple[str, float, float, float, float]], list[str]]:
    rows, difficult_names = [], []
    for i, o in enumerate(rec.objects, 1):
        where = f"object {i} ({o.name})"
        if known is not None and o.name not in known:
            unknown[o.name] += 1
            continue
        if o.difficult:
            difficult_names.append(o.name)
            counters["difficult"] += 1
            if opts.difficult == "skip":
                counters["difficult_skipped"] += 1
                continue
        xmin, ymin, xmax, ymax = o.voc()
        if xmin > xmax or ymin > ymax:
            logs.warn(xml_rel, "inverted_box", f"{where}: inverted box {o.voc()} swapped")
            xmin, xmax = min(xmin, xmax), max(xmin, xmax)
            ymin, ymax = min(ymin, ymax), max(ymin, ymax)
            counters["inverted_swapped"] += 1
        if xmin == xmax or ymin == ymax:
            logs.warn(xml_rel, "degenerate_box", f"{where}: zero-area box {o.voc()} dropped")
            counters["degenerate_dropped"] += 1
            continue
        x1, y1, x2, y2 = xmin - 1.0, ymin - 1.0, xmax, ymax  # VOC 1-based inclusive -> continuous
        out_by = max(-x1, -y1, x2 - w, y2 - h)
        cx1, cy1 = min(max(x1, 0.0), w), min(max(y1, 0.0), h)
        cx2, cy2 = min(max(x2, 0.0), w), min(max(y2, 0.0), h)
        if cx2 - cx1 <= 0 or cy2 - cy1 <= 0:
            logs.warn(xml_rel, "outside_image", f"{where}: box {o.voc()} lies outside the {w}x{h} image; dropped")
            counters["outside_dropped"] += 1
            continue
        if out_by > CLIP_SILENT_PX:
            logs.warn(xml_rel, "clipped_box", f"{where}: box {o.voc()} extends {out_by:g} px outside the "
                      f"{w}x{h} image; clipped")
            counters["clipped"] += 1
        elif out_by > 0:
            counters["clipped_1px"] += 1
        if opts.legacy_offset:  # darknet voc_label.py: centre - 1 px, width without the +1
            vx1, vx2, vy1, vy2 = cx1 + 1.0, cx2, cy1 + 1.0, cy2
            cx, cy, bw, bh = (vx1 + vx2) / 2 - 1, (vy1 + vy2) / 2 - 1, vx2 - vx1, vy2 - vy1
        else:
            cx, cy, bw, bh = (cx1 + cx2) / 2, (cy1 + cy2) / 2, cx2 - cx1, cy2 - cy1
        rows.append((o.name, cx / w, cy / h, bw / w, bh / h))
    return rows, difficult_names


# --------------------------------------------------------------------------- splits

def _read_imagesets(src: Path, group: str) -> dict[str, list[str]]:
    main = src / group / "ImageSets" / "Main" if group else src / "ImageSets" / "Main"
    sets: dict[str, list[str]] = {}
    for name in SPLIT_FILES:
        f = main / f"{name}.txt"
        if f.is_file():
            ids = []
            for line in f.read_text(encoding="utf-8-sig", errors="replace").splitlines():
                tok = line.split()
                if tok:
                    ids.append(tok[0])
            sets[name] = ids
    return sets


def _assign_splits(items: list[_Item], new_paths: dict[str, str], src: Path, opts: ConvertOptions,
                   logs: _Log) -> tuple[dict[str, list[_Item]], dict]:
    """ImageSets/Main split where a year folder has one; a seeded random draw for the rest."""
    splits: dict[str, list[_Item]] = {"train": [], "val": [], "test": []}
    groups = sorted({it.group for it in items if it.group is not None})
    membership: dict[tuple[str, str], str] = {}
    info: dict = {"imagesets": {}, "random": 0}
    for g in groups:
        sets = _read_imagesets(src, g)
        if not sets:
            continue
        if "train" in sets:
            train, val = sets["train"], sets.get("val", sets.get("test", []))
            test = sets.get("test", []) if "val" in sets else []
        elif "trainval" in sets:
            val = sets.get("val", sets.get("test", []))
            train = [i for i in sets["trainval"] if i not in set(val)]
            test = sets.get("test", []) if "val" in sets else []
        else:
            train, val, test = [], sets.get("val", []), sets.get("test", [])
        for name, ids in (("test", test), ("train", train), ("val", val)):  # later wins: val over train
            for i in ids:
                prev = membership.get((g, i))
                if prev and prev != name:
                    logs.warn(f"{g}/ImageSets/Main" if g else "ImageSets/Main", "split_overlap",
                              f"{i!r} listed in both {prev} and {name}; used as {name}")
                membership[(g, i)] = name
        info["imagesets"][g or "."] = sorted(sets)
    rest = []
    for it in items:
        s = membership.get((it.group, it.split_id)) if it.group is not None else None
        if s is None and it.group is not None and (it.group or ".") in info["imagesets"]:
            logs.warn(it.xml_rel, "not_in_split", "not listed in any ImageSets/Main file; drawn at random")
        if s is None:
            rest.append(it)
        else:
            splits[s].append(it)
    rest.sort(key=lambda it: new_paths[it.image_rel])
    n = len(rest)
    n_val = 0
    if n and opts.val_fraction > 0:
        n_val = round(n * opts.val_fraction)
        if n >= 2:
            n_val = min(max(n_val, 1), n - 1)
    order = list(range(n))
    random.Random(opts.seed).shuffle(order)
    val_idx = set(order[:n_val])
    for k, it in enumerate(rest):
        splits["val" if k in val_idx else "train"].append(it)
    info["random"] = n
    for s in splits.values():
        s.sort(key=lambda it: new_paths[it.image_rel])
    return splits, info


# --------------------------------------------------------------------------- output

def _is_detkit_output(out: Path) -> bool:
    try:
        doc = json.loads((out / REPORT_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("tool") == TOOL


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _has_files(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def _clean_stale(out: Path) -> None:
    """Tidy up after killed runs (their process is gone).

    A build folder (``.OUT.tmp-<pid>``) is deleted. A previous output moved aside
    (``.OUT.old-<pid>``, killed between the two renames) is put back when OUT is missing, else
    deleted -- unless it still holds darknet weights in ``backup/``, which are never deleted.
    """
    if not out.parent.is_dir():
        return
    for p in sorted(out.parent.iterdir()):
        for tag in (".tmp-", ".old-"):
            prefix = f".{out.name}{tag}"
            if not (p.name.startswith(prefix) and p.name[len(prefix):].isdigit()):
                continue
            if _pid_alive(int(p.name[len(prefix):])):
                continue
            if tag == ".old-" and not out.exists():
                os.replace(p, out)
                log.warning("restored %s from an interrupted run", out)
            elif _has_files(p / "backup"):
                log.warning("left %s in place: its backup/ holds files", p)
            else:
                shutil.rmtree(p, ignore_errors=True)


def _place_image(src: str, dst: str, mode: str) -> str:
    if os.path.splitext(src)[1].lower() == ".bmp":
        from PIL import Image  # BMP -> PNG, pixel-identical
        with Image.open(src) as im:
            buf = io.BytesIO()
            im.save(buf, "PNG")
        _write_new(dst, buf.getvalue())
        return "png"
    if mode == "link":
        try:
            os.link(src, dst)
            return "link"
        except OSError:
            pass
    shutil.copyfile(src, dst)
    return "copy"


def _write_new(path: str, data: str | bytes) -> None:
    """Create a new file inside the build folder (the folder as a whole is renamed into place)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data.encode("utf-8") if isinstance(data, str) else data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def _check_paths(src: Path, out: Path, force: bool) -> None:
    if not src.is_dir():
        raise DataError("SRC is not a folder", path=src)
    rs, ro = src.resolve(), out.resolve()
    if _inside(ro, rs):
        raise DataError(f"OUT must not be inside SRC ({src}): SRC is never modified", path=out)
    if _inside(rs, ro):
        raise DataError(f"OUT must not contain SRC ({src})", path=out)
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise DataError("OUT exists and is not a folder", path=out)
        if force or not any(out.iterdir()):
            return
        if not _is_detkit_output(out):
            raise DataError("OUT exists and is not an earlier detkit convert-voc output; "
                            "use --force to replace it", path=out)
        extra = sorted(p.name for p in out.iterdir() if p.name not in OUT_ENTRIES)
        if extra:
            raise DataError(f"OUT holds files convert-voc did not write ({', '.join(extra[:5])}); they would be "
                            "deleted: move them away or use --force", path=out)


def convert_voc(src: str | os.PathLike, out: str | os.PathLike, options: ConvertOptions = ConvertOptions()
                ) -> ConvertResult:
    """Convert the VOC dataset under ``src`` into a YOLO dataset folder ``out``.

    Returns:
        :class:`ConvertResult` (counts, warnings, skipped files; the same as OUT's report).
    Raises:
        DataError: bad SRC/OUT, nothing convertible, or (``strict``) any warning. OUT is then
        left as it was.
        AnnotationError: ``strict`` and a malformed annotation.
    """
    src, out = Path(src).absolute(), Path(out).absolute()
    opts = options
    if opts.difficult not in ("skip", "keep"):
        raise DataError(f"difficult must be 'skip' or 'keep', got {opts.difficult!r}")
    if not 0.0 <= opts.val_fraction < 1.0:
        raise DataError(f"val fraction must be in [0, 1), got {opts.val_fraction}")
    if opts.names is not None:
        dup = [n for n, c in Counter(opts.names).items() if c > 1]
        if dup or not opts.names:
            raise DataError(f"class names must be unique and non-empty, got duplicates {dup}")
    _check_paths(src, out, opts.force)

    logs = _Log()
    tree = _walk(src, logs)
    known = set(opts.names) if opts.names is not None else None
    unknown: Counter = Counter()
    counters: Counter = Counter()
    items: list[_Item] = []
    claimed: dict[str, str] = {}

    iterator = tree.xmls
    if opts.progress:
        from tqdm import tqdm
        iterator = tqdm(tree.xmls, desc="convert-voc", unit="xml")
    for xml_rel in iterator:
        parent = xml_rel.rsplit("/", 1)[0] if "/" in xml_rel else ""
        xml_stem = os.path.splitext(xml_rel.rsplit("/", 1)[-1])[0]
        group = None
        if parent == "Annotations" or parent.endswith("/Annotations"):
            g = parent[: -len("Annotations")].rstrip("/")
            if g in tree.year_roots:
                group = g
        image_dir = (f"{group}/JPEGImages" if group else "JPEGImages") if group is not None else parent
        try:
            rec = read_voc_annotation(os.path.join(src, xml_rel))
        except AnnotationError as exc:
            msg = exc.message + (f" (line {exc.line})" if exc.line else "")
            logs.skip(xml_rel, "bad_xml", msg)
            continue
        image_rel = _find_image(tree, image_dir, rec, xml_rel, logs)
        if image_rel is None:
            logs.skip(xml_rel, "no_image", f"no image for this annotation in {image_dir or '.'}/ "
                      f"(<filename> {rec.filename!r}, or the XML's stem with {', '.join(IMAGE_EXTENSIONS)})")
            continue
        if image_rel in claimed:
            logs.skip(xml_rel, "duplicate_annotation", f"image {image_rel!r} is already annotated by {claimed[image_rel]!r}")
            continue
        try:
            w, h = _check_image(os.path.join(src, image_rel))
        except ImageError as exc:
            claimed[image_rel] = xml_rel
            logs.skip(image_rel, "bad_image", exc.message)
            continue
        claimed[image_rel] = xml_rel
        if rec.width is None or rec.height is None:
            counters["size_missing"] += 1
        elif (rec.width, rec.height) != (w, h):
            hint = " (width and height swapped: EXIF rotation?)" if (rec.width, rec.height) == (h, w) else ""
            logs.warn(xml_rel, "size_mismatch", f"<size> {rec.width}x{rec.height} disagrees with the image's "
                      f"real size {w}x{h}{hint}; boxes normalised by the real size")
        rows, diff_names = _convert_boxes(rec, w, h, xml_rel, opts, known, unknown, logs, counters)
        counters["objects_read"] += len(rec.objects)
        if group is not None:
            inner = image_rel[len(image_dir) + 1:]
            logical = f"{group}/{inner}" if group else inner
        else:
            logical = image_rel
        items.append(_Item(xml_rel, image_rel, logical, group, xml_stem, w, h, rows, diff_names))

    for name, n in sorted(unknown.items()):
        logs.warn("", "unknown_class", f"class {name!r} is not in --names: {n} objects skipped")
    year_other = 0
    for rel in tree.images:
        if rel not in claimed:
            if _in_year_folder_outside_jpegimages(rel, tree.year_roots):
                year_other += 1  # SegmentationClass/, SegmentationObject/ ...: not detection images
                continue
            logs.skip(rel, "no_annotation", "image without an XML annotation")

    if opts.strict and (logs.warnings or logs.skipped):
        first = (logs.warnings + logs.skipped)[0]
        raise DataError(f"--strict: {len(logs.warnings)} warnings, {len(logs.skipped)} skipped files; "
                        f"first: {first['file'] or 'SRC'}: {first.get('message') or first.get('reason')}",
                        path=src)
    if not items:
        reasons = Counter(s["code"] for s in logs.skipped)
        raise DataError(f"nothing could be converted ({len(tree.xmls)} XML files; skipped: "
                        f"{dict(sorted(reasons.items())) or 'none'})", path=src)

    # classes
    if opts.names is not None:
        class_names = tuple(opts.names)
    else:
        seen = {r[0] for it in items for r in it.objects} | {n for it in items for n in it.difficult_names}
        class_names = tuple(sorted(seen))
    similar: dict[str, list[str]] = {}
    for n in class_names:
        similar.setdefault(" ".join(n.casefold().replace("_", " ").replace("-", " ").split()), []).append(n)
    for group in similar.values():
        if len(group) > 1:
            logs.warn("", "similar_class_names", f"classes {', '.join(repr(g) for g in group)} differ only in case, "
                      "spaces, '_' or '-': probably one class spelt differently (use --names to choose)")
    class_id = {n: i for i, n in enumerate(class_names)}

    # names, splits
    mapping = sanitize_paths((it.logical for it in items), ext_aliases=EXT_ALIASES)
    new_paths = {it.image_rel: mapping[it.logical] for it in items}
    splits, split_info = _assign_splits(items, new_paths, src, opts, logs)
    if opts.strict and logs.warnings:
        raise DataError(f"--strict: {logs.warnings[0]['file']}: {logs.warnings[0]['message']}", path=src)

    # build in a sibling folder, then swap it in
    _clean_stale(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        modes = Counter()
        per_class_img: Counter = Counter()
        per_class_obj: Counter = Counter()
        per_class_diff: Counter = Counter()
        (tmp / "images").mkdir(parents=True)
        (tmp / "labels").mkdir()
        (tmp / "backup").mkdir()
        rename_rows = []
        for d_src, d_new in sorted((k, v) for k, v in mapping.items() if k.endswith("/")):
            rename_rows.append(("folder", d_src.rstrip("/"), "images/" + d_new.rstrip("/")))
        made_dirs: set[str] = set()
        tmp_s = str(tmp)
        for it in sorted(items, key=lambda it: new_paths[it.image_rel]):
            new = new_paths[it.image_rel]
            stem = new.rsplit(".", 1)[0]
            folder = new.rsplit("/", 1)[0] if "/" in new else ""
            if folder not in made_dirs:
                os.makedirs(os.path.join(tmp_s, "images", folder), exist_ok=True)
                os.makedirs(os.path.join(tmp_s, "labels", folder), exist_ok=True)
                made_dirs.add(folder)
            modes[_place_image(os.path.join(src, it.image_rel), os.path.join(tmp_s, "images", new), opts.link)] += 1
            text = format_yolo_labels([(class_id[c], cx, cy, bw, bh) for c, cx, cy, bw, bh in it.objects])
            label = os.path.join(tmp_s, "labels", stem + ".txt")
            _write_new(label, text)
            side = os.path.join(tmp_s, "images", stem + ".txt")  # AlexeyAB's darknet looks beside the image
            try:
                os.link(label, side)
            except OSError:
                shutil.copyfile(label, side)
            for c in {r[0] for r in it.objects}:
                per_class_img[c] += 1
            for r in it.objects:
                per_class_obj[r[0]] += 1
            for c in it.difficult_names:
                per_class_diff[c] += 1
            rename_rows.append(("image", it.image_rel, f"images/{new}"))
            rename_rows.append(("annotation", it.xml_rel, f"labels/{stem}.txt"))

        split_names = ["train", "val"] + (["test"] if splits["test"] else [])
        for s in split_names:
            _write(tmp / f"{s}.txt", "".join(f"./images/{new_paths[it.image_rel]}\n" for it in splits[s]))
        _write(tmp / "obj.names", "".join(f"{n}\n" for n in class_names))
        _write(tmp / "obj.data", f"classes = {len(class_names)}\ntrain = train.txt\nvalid = val.txt\n"
                                 "names = obj.names\nbackup = backup/\n")
        doc = {"train": "train.txt", "val": "val.txt"}
        if splits["test"]:
            doc["test"] = "test.txt"
        doc["nc"] = len(class_names)
        doc["names"] = list(class_names)
        _write(tmp / "data.yaml", "# written by detkit convert-voc; paths are relative to this file's folder\n"
               + yaml.safe_dump(doc, allow_unicode=True, sort_keys=False))
        buf = io.StringIO()
        wr = csv.writer(buf, lineterminator="\n")
        wr.writerow(("source", "output", "kind"))
        wr.writerows((s, o, k) for k, s, o in rename_rows)
        _write(tmp / "rename_map.csv", buf.getvalue())

        per_class = {n: ClassStats(per_class_img[n], per_class_obj[n], per_class_diff[n]) for n in class_names}
        report = {
            "tool": TOOL,
            "src": str(src),
            "options": {"names": list(opts.names) if opts.names is not None else None,
                        "val_fraction": opts.val_fraction, "seed": opts.seed, "difficult": opts.difficult,
                        "link": opts.link, "legacy_offset": opts.legacy_offset, "strict": opts.strict},
            "classes": list(class_names),
            "images": len(items),
            "splits": {s: len(splits[s]) for s in split_names},
            "split_source": split_info,
            "objects_read": counters["objects_read"],
            "objects_written": sum(per_class_obj.values()),
            "per_class": {n: {"images": s.images, "objects": s.objects, "difficult": s.difficult}
                          for n, s in per_class.items()},
            "difficult": counters["difficult"],
            "difficult_skipped": counters["difficult_skipped"],
            "unknown_class_skipped": dict(sorted(unknown.items())),
            "boxes": {k: counters[k] for k in ("inverted_swapped", "degenerate_dropped", "outside_dropped",
                                                 "clipped", "clipped_1px")},
            "size_missing": counters["size_missing"],
            "empty_images": sum(1 for it in items if not it.objects),
            "image_files": dict(sorted(modes.items())),
            "xml_files": len(tree.xmls),
            "year_folder_other_images": year_other,
            "warnings": logs.warnings,
            "skipped": logs.skipped,
        }
        _write(tmp / REPORT_NAME, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        if _has_files(old / "backup"):  # darknet's weights from training on the previous output: keep them
            os.rmdir(out / "backup")
            os.replace(old / "backup", out / "backup")
        shutil.rmtree(old, ignore_errors=True)
    return ConvertResult(out=out, class_names=class_names, per_class=per_class, images=len(items),
                         splits=report["splits"], warnings=tuple(logs.warnings), skipped=tuple(logs.skipped),
                         report=report)


def imbalance_warning(per_class: dict[str, ClassStats], ratio: float = 0.1) -> str | None:
    """A warning when the smallest class has fewer than ``ratio`` x the objects of the largest."""
    counts = {n: s.objects for n, s in per_class.items()}
    if len(counts) < 2:
        return None
    lo = min(counts, key=lambda n: (counts[n], n))
    hi = max(counts, key=lambda n: (counts[n], n))
    if counts[lo] < ratio * counts[hi]:
        return (f"classes are badly imbalanced: {lo!r} has {counts[lo]} objects, {hi!r} has {counts[hi]} "
                f"(under 1/{round(1 / ratio)}); few-sample classes are the most common reason a custom "
                "detector fails: collect more examples of them")
    return None


def summary_table(result: ConvertResult) -> str:
    """Plain-text per-class table: class id, name, images, objects, difficult."""
    rows = [("id", "class", "images", "objects", "difficult")]
    for i, n in enumerate(result.class_names):
        s = result.per_class[n]
        rows.append((str(i), n, str(s.images), str(s.objects), str(s.difficult)))
    widths = [max(len(r[k]) for r in rows) for k in range(5)]
    lines = []
    for r in rows:
        lines.append("  ".join(v.ljust(widths[k]) if k == 1 else v.rjust(widths[k]) for k, v in enumerate(r)))
    return "\n".join(lines)
