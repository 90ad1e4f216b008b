"""Source-tree discovery for ``detkit convert-voc``: walk SRC, find each annotation's image.

Layouts recognised under SRC without flags (they may be mixed):

* a VOC year folder ``Annotations/`` + ``JPEGImages/`` (+ optional ``ImageSets/Main/*.txt``),
  SRC itself or any folder below it (so a ``VOCdevkit/`` with several years works);
* any other XML: labelImg's layout, the image sits in the XML's own folder.

How an XML's image is found (``<path>`` is never used), strongest first:

1. *exact*: a file named exactly ``<filename>``; ``<filename>`` without an image extension +
   ``.jpg .jpeg .png .bmp`` (any case); the XML's stem + those extensions. A file named exactly
   by ``<filename>`` without an image extension is used when its content is a JPEG, PNG or BMP.
2. *Unicode-normalised*: the same names compared after NFC normalisation (macOS writes NFD).
3. *case-insensitive*: the same names compared case-insensitively.

Tiers 2-3 are fallbacks: they are used only when they name one file, and never a file that
another XML names exactly (an exact match always wins; two annotations are never merged into
one image). A ``<filename>`` that is absolute or contains ``..`` is ignored and reported; only
files found by walking SRC (symlinks leading outside SRC excluded) can ever be read.
"""
from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from detkit.convert.headers import sniff_image
from detkit.convert.records import ReportLog
from detkit.data.datafiles import IMAGE_EXTENSIONS
from detkit.data.records import ImageRecord


@dataclass
class SourceTree:
    """What the walk of SRC found (paths relative to SRC, ``/``-separated, sorted)."""

    xmls: list[str]
    images: list[str]  # files with an image extension
    files: dict[str, list[str]]  # rel folder -> names of every file in it that is not an XML
    year_roots: set[str]
    _tables: dict = field(default_factory=dict, repr=False)  # lookup tables per folder, built lazily

    def tables(self, folder: str) -> "FolderTables":
        t = self._tables.get(folder)
        if t is None:
            t = self._tables[folder] = FolderTables.build(self.files.get(folder, []))
        return t


def _ext_order(name: str, base: str) -> tuple:
    ext = name[len(base):]
    return IMAGE_EXTENSIONS.index(ext.lower()), ext != ext.lower(), name


@dataclass(frozen=True)
class FolderTables:
    """Name lookups of one folder: exact names, image files by exact stem, and names keyed by
    their NFC form and by their case-folded NFC form."""

    names: frozenset
    by_stem: dict  # exact stem -> image names (any extension case)
    by_nfc: dict
    by_fold: dict

    @classmethod
    def build(cls, names: list[str]) -> "FolderTables":
        by_stem: dict[str, list[str]] = {}
        by_nfc: dict[str, list[str]] = {}
        by_fold: dict[str, list[str]] = {}
        for n in names:
            stem, ext = os.path.splitext(n)
            if ext.lower() in IMAGE_EXTENSIONS:
                by_stem.setdefault(stem, []).append(n)
            k = unicodedata.normalize("NFC", n)
            by_nfc.setdefault(k, []).append(n)
            by_fold.setdefault(k.casefold(), []).append(n)
        for stem, v in by_stem.items():
            v.sort(key=lambda n, s=stem: _ext_order(n, s))
        return cls(frozenset(names), by_stem, by_nfc, by_fold)


@dataclass(frozen=True)
class ImageMatch:
    """The image an annotation names: ``path`` (relative to SRC), how it was found
    (``tier`` 0 exact ``<filename>``, 1 exact stem, 2 Unicode-normalised, 3 case-insensitive),
    ``kind`` (``.jpg``/``.png``/``.bmp`` from the content when the name has no image extension, else
    None) and the warning to give when it is used (``filename_mismatch``)."""

    path: str
    tier: int
    kind: str | None = None
    note: str | None = None


def _rel(p: str) -> str:
    return p.replace(os.sep, "/")


def inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def walk_source(src: Path, logs: ReportLog) -> SourceTree:
    """List SRC (sorted, symlinked folders not followed, symlinks leading outside SRC skipped)."""
    real_src = src.resolve()
    xmls, images = [], []
    index: dict[str, list[str]] = {}
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
        folder = index.setdefault(rel_dir, [])
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
                continue
            if suffix in IMAGE_EXTENSIONS:
                images.append(rel)
            folder.append(e.name)
        stack.extend(f"{rel_dir}/{d}" if rel_dir else d for d in reversed(dirs))
    xmls.sort()
    images.sort()
    return SourceTree(xmls, images, index, year_roots)


def in_year_folder_outside_jpegimages(rel: str, year_roots: set[str]) -> bool:
    """True for e.g. ``VOC2012/SegmentationClass/x.png``: part of a year folder, not a detection image."""
    for root in year_roots:
        prefix = f"{root}/" if root else ""
        if rel.startswith(prefix) and not rel.startswith(f"{prefix}JPEGImages/"):
            return True
    return False


def unsafe_filename(fname: str) -> bool:
    """True for a ``<filename>`` that is absolute, starts with ``~`` or a drive letter, or holds ``..``."""
    f = fname.replace("\\", "/")
    if f.startswith("/") or (len(f) > 1 and f[1] == ":") or f.startswith("~"):
        return True
    return ".." in PurePosixPath(f).parts


def _split(folder: str, name: str) -> tuple[str, str] | None:
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts:
        return None
    sub = "/".join([folder] + parts[:-1]) if folder else "/".join(parts[:-1])
    return sub, parts[-1]


def _join(sub: str, name: str) -> str:
    return f"{sub}/{name}" if sub else name


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def image_candidates(tree: SourceTree, src: Path, image_dir: str, fname: str, xml_stem: str) -> list[ImageMatch]:
    """Every image ``<filename>`` / the XML's stem can name, strongest first (module docstring).

    Fallback tiers (2, 3) contribute only names that match exactly one image file.
    """
    targets: list[tuple[int, str, str, bool]] = []  # (tier, folder, name, is <filename>)
    if fname:
        sp = _split(image_dir, fname)
        if sp is not None:
            targets.append((0, sp[0], sp[1], True))
    targets.append((1, image_dir, xml_stem, False))
    out: list[ImageMatch] = []
    for tier, sub, name, is_fname in targets:  # exact names
        t = tree.tables(sub)
        if is_fname and _is_image_name(name):
            if name in t.names:
                out.append(ImageMatch(_join(sub, name), tier))
            continue
        if is_fname and name in t.names:
            kind = sniff_image(os.path.join(src, _join(sub, name)))
            if kind is not None:
                out.append(ImageMatch(_join(sub, name), tier, kind=kind))
        out.extend(ImageMatch(_join(sub, n), tier) for n in t.by_stem.get(name, []))
    for tier, norm in ((2, _nfc), (3, _folded)):  # fallbacks
        for _, sub, name, is_fname in targets:
            t = tree.tables(sub)
            table = t.by_nfc if tier == 2 else t.by_fold
            keys = [name] if is_fname and _is_image_name(name) else [name + e for e in IMAGE_EXTENSIONS]
            for key in keys:
                hits = [n for n in table.get(norm(key), []) if _is_image_name(n)]
                if len(hits) == 1:
                    out.append(ImageMatch(_join(sub, hits[0]), tier))
    seen: set[str] = set()
    unique = []
    for m in out:
        if m.path not in seen:
            seen.add(m.path)
            unique.append(m)
    return unique


def _nfc(s: str) -> str:
    return unicodedata.normalize("NFC", s)


def _folded(s: str) -> str:
    return unicodedata.normalize("NFC", s).casefold()


def choose_image(cands: list[ImageMatch], fname: str, xml_rel: str, exact_owner: dict[str, str]
                 ) -> tuple[ImageMatch | None, str | None]:
    """The candidate to use: the first exact one, else the first fallback that no other XML names
    exactly. Returns (match with its warning note, or None; why the fallbacks were refused)."""
    refused = None
    for m in cands:
        owner = exact_owner.get(m.path)
        if m.tier >= 2 and owner is not None and owner != xml_rel:
            refused = f"{m.path!r} matches only by case or Unicode form and is named exactly by {owner!r}"
            continue
        note = None
        stem_based = m.tier == 1 or (m.tier >= 2 and fname and not _names_fname(m.path, fname))
        if fname and stem_based:
            note = f"<filename> {fname!r} not found; using {PurePosixPath(m.path).name!r} (the XML's stem)"
        return ImageMatch(m.path, m.tier, m.kind, note), refused
    return None, refused


def _names_fname(path: str, fname: str) -> bool:
    a = _folded(PurePosixPath(path).name)
    b = _folded(fname.replace("\\", "/").rsplit("/", 1)[-1])
    return a == b or os.path.splitext(a)[0] == b


def clean_filename(rec: ImageRecord, xml_rel: str, logs: ReportLog) -> str:
    """``<filename>`` stripped; an unsafe one (absolute, ``..``) is reported and ignored."""
    fname = rec.filename.strip()
    if fname and unsafe_filename(fname):
        logs.warn(xml_rel, "unsafe_filename",
                  f"<filename> {fname!r} points outside the annotation's folder; ignored")
        fname = ""
    return fname
