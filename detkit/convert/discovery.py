"""Source-tree discovery for ``detkit convert-voc``: walk SRC, find each annotation's image.

Layouts recognised under SRC without flags (they may be mixed):

* a VOC year folder ``Annotations/`` + ``JPEGImages/`` (+ optional ``ImageSets/Main/*.txt``),
  SRC itself or any folder below it (so a ``VOCdevkit/`` with several years works);
* any other XML: labelImg's layout, the image sits in the XML's own folder.

The image is found by the XML's ``<filename>`` (case-insensitively, extension optional), then by
the XML's stem with ``.jpg .jpeg .png .bmp`` in any case; ``<path>`` is never used. A
``<filename>`` that is absolute or contains ``..`` is ignored and reported; only files found by
walking SRC (symlinks leading outside SRC excluded) can ever be read.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from detkit.convert.records import ReportLog
from detkit.data.datafiles import IMAGE_EXTENSIONS
from detkit.data.records import ImageRecord


@dataclass
class _Tree:
    xmls: list[str]
    images: list[str]
    folder_index: dict[str, dict[str, str]]  # rel folder -> {lower-case name: real name}
    year_roots: set[str]


def _rel(p: str) -> str:
    return p.replace(os.sep, "/")


def inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def walk_source(src: Path, logs: ReportLog) -> _Tree:
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
                if not inside(target, real_src):
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


def in_year_folder_outside_jpegimages(rel: str, year_roots: set[str]) -> bool:
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


def find_image(tree: _Tree, image_dir: str, rec: ImageRecord, xml_rel: str, logs: ReportLog) -> str | None:
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
