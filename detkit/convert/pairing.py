"""Pairing each VOC XML of SRC with its image (the rules are in :mod:`detkit.convert.discovery`).

Two passes: every XML is read and its candidate images listed first, so that an exact match
always wins over another XML's case-insensitive or Unicode-normalised fallback whatever the
sorted order; then the XMLs are paired in sorted order, each problem reported once
(``bad_xml``, ``unsafe_filename``, ``no_image``, ``filename_mismatch``, ``duplicate_annotation``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from detkit.convert.discovery import (
    ImageMatch,
    SourceTree,
    choose_image,
    clean_filename,
    image_candidates,
    in_year_folder_outside_jpegimages,
    unsafe_filename,
)
from detkit.convert.records import ReportLog
from detkit.data.datafiles import IMAGE_EXTENSIONS
from detkit.data.records import ImageRecord
from detkit.data.voc import read_voc_annotation
from detkit.errors import AnnotationError


@dataclass(frozen=True)
class VocPair:
    """One XML and the image it annotates (paths relative to SRC)."""

    xml_rel: str
    xml_stem: str
    group: str | None  # VOC year root (relative), None for the labelImg layout
    image_dir: str
    record: ImageRecord
    match: ImageMatch

    @property
    def image_rel(self) -> str:
        return self.match.path

    @property
    def logical(self) -> str:
        """The path the output name comes from: a year folder's image without ``JPEGImages/``
        (``VOC2012/x.jpg``); the content's extension added to a name without an image extension."""
        logical = self.match.path
        if self.group is not None:
            inner = logical[len(self.image_dir) + 1:]
            logical = f"{self.group}/{inner}" if self.group else inner
        return logical + (self.match.kind or "")


def report_unannotated(tree: SourceTree, claimed: dict[str, str], logs: ReportLog) -> int:
    """Report every image no XML claimed (``no_annotation``); returns how many images of year folders
    lie outside ``JPEGImages/`` (``SegmentationClass/`` ...: not detection images, not reported)."""
    year_other = 0
    for rel in tree.images:
        if rel not in claimed:
            if in_year_folder_outside_jpegimages(rel, tree.year_roots):
                year_other += 1
                continue
            logs.skip(rel, "no_annotation", "image without an XML annotation")
    return year_other


def _place(xml_rel: str, year_roots: set[str]) -> tuple[str, str | None, str]:
    parent = xml_rel.rsplit("/", 1)[0] if "/" in xml_rel else ""
    xml_stem = os.path.splitext(xml_rel.rsplit("/", 1)[-1])[0]
    group = None
    if parent == "Annotations" or parent.endswith("/Annotations"):
        g = parent[: -len("Annotations")].rstrip("/")
        if g in year_roots:
            group = g
    image_dir = (f"{group}/JPEGImages" if group else "JPEGImages") if group is not None else parent
    return xml_stem, group, image_dir


def voc_pairs(src: Path, tree: SourceTree, logs: ReportLog, claimed: dict[str, str],
              progress: bool = False, desc: str = "convert-voc") -> Iterator[VocPair]:
    """Yield each usable (XML, image) pair in sorted XML order; ``claimed`` (image -> XML) is
    filled as images are paired."""
    parsed = []
    exact_owner: dict[str, str] = {}
    for xml_rel in tree.xmls:
        xml_stem, group, image_dir = _place(xml_rel, tree.year_roots)
        try:
            rec = read_voc_annotation(os.path.join(src, xml_rel))
        except AnnotationError as exc:
            parsed.append((xml_rel, xml_stem, group, image_dir, exc, []))
            continue
        fname = rec.filename.strip()
        cands = image_candidates(tree, src, image_dir, "" if unsafe_filename(fname) else fname, xml_stem)
        if cands and cands[0].tier <= 1:
            exact_owner.setdefault(cands[0].path, xml_rel)
        parsed.append((xml_rel, xml_stem, group, image_dir, rec, cands))

    iterator = parsed
    if progress:
        from tqdm import tqdm
        iterator = tqdm(parsed, desc=desc, unit="xml")
    for xml_rel, xml_stem, group, image_dir, rec, cands in iterator:
        if isinstance(rec, AnnotationError):
            logs.skip(xml_rel, "bad_xml", rec.message + (f" (line {rec.line})" if rec.line else ""))
            continue
        fname = clean_filename(rec, xml_rel, logs)
        match, refused = choose_image(cands, fname, xml_rel, exact_owner)
        if match is None:
            why = f"; {refused}" if refused else ""
            logs.skip(xml_rel, "no_image", f"no image for this annotation in {image_dir or '.'}/ "
                      f"(<filename> {rec.filename!r}, or the XML's stem with {', '.join(IMAGE_EXTENSIONS)}){why}")
            continue
        if match.note:
            logs.warn(xml_rel, "filename_mismatch", match.note)
        if match.path in claimed:
            logs.skip(xml_rel, "duplicate_annotation",
                      f"image {match.path!r} is already annotated by {claimed[match.path]!r}")
            continue
        claimed[match.path] = xml_rel
        yield VocPair(xml_rel, xml_stem, group, image_dir, rec, match)
