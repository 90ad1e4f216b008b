"""What ``detkit eval --errors / --per-image OUT / --report DIR`` computes and writes for a scored run:
the analysis of :func:`detkit.metrics.analysis.analyze` (TIDE errors, best F1 and curves, per-image
results), its text for the terminal, the per-image file and the HTML report.

Gallery images: ``images_dir`` (indexed recursively by file stem; an integer COCO image id also
matches a zero-padded stem such as ``000000397133``), else the image files the ground-truth
reader knew (YOLO lists, VOC roots).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from detkit.errors import EvalError
from detkit.evaluate.html_report import ReportFile, write_html_report
from detkit.evaluate.run import EvalRun
from detkit.metrics.analysis import Analysis, analyze
from detkit.metrics.per_image import PER_IMAGE_FORMATS

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class AnalysisRequest:
    """Which analysis outputs to make (all off: nothing is computed)."""

    errors: bool = False
    report_dir: str | os.PathLike | None = None
    per_image: str | os.PathLike | None = None
    images_dir: str | os.PathLike | None = None

    @property
    def wanted(self) -> bool:
        return bool(self.errors or self.report_dir or self.per_image)


@dataclass(frozen=True)
class AnalysisOutputs:
    """The analysis, its terminal text, and the files written."""

    analysis: Analysis
    text: str
    report: ReportFile | None
    per_image: Path | None


def image_paths(run: EvalRun, images_dir: str | os.PathLike | None) -> dict:
    """Image id -> file for the galleries (module docstring).

    Raises:
        EvalError: ``images_dir`` is not a folder.
    """
    ids = run.gt.image_ids
    if images_dir is None:
        return {i: Path(p) for i, p in zip(ids, run.image_files) if p is not None}
    root = Path(images_dir)
    if not root.is_dir():
        raise EvalError(f"--images {root}: not a folder")
    by_stem: dict = {}
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in IMAGE_EXTS and p.is_file():
            by_stem.setdefault(p.stem, p)
            if p.stem.isdigit():
                by_stem.setdefault(int(p.stem), p)
    out = {}
    for i in ids:
        p = by_stem.get(str(i)) or (by_stem.get(i) if isinstance(i, int) else None)
        if p is not None:
            out[i] = p
    return out


def run_analysis(run: EvalRun, request: AnalysisRequest) -> AnalysisOutputs:
    """Analyse ``run`` and write the requested files.

    Raises:
        EvalError: a per-image path with another extension than .csv / .jsonl, a bad images folder.
    """
    if request.per_image is not None:
        pi = Path(request.per_image)
        if pi.suffix.lower() not in PER_IMAGE_FORMATS:
            raise EvalError(f"--per-image {pi}: must end in {' or '.join(PER_IMAGE_FORMATS)}")
        if pi.is_dir() or any(q.exists() and not q.is_dir() for q in pi.parents):
            raise EvalError(f"--per-image {pi}: not a file path (a folder there, or a file in the way)")
    if request.report_dir is not None:
        rd = Path(request.report_dir)
        if any(q.exists() and not q.is_dir() for q in (rd, *rd.parents)):
            raise EvalError(f"--report {rd}: must be a folder (a file is in the way)")
    paths = image_paths(run, request.images_dir) if request.report_dir else {}
    an = analyze(run.report, run.gt, run.dt, run.class_names, plus_one=run.plus_one)
    per_image = an.per_image.write(request.per_image) if request.per_image is not None else None
    report = None
    if request.report_dir is not None:
        report = write_html_report(request.report_dir, run.report, an, run.gt, run.dt, run.class_names,
                                   image_paths=paths, plus_one=run.plus_one)
    return AnalysisOutputs(analysis=an, text=an.format_errors() + "\n" + an.thresholds.format_table(), report=report,
                           per_image=per_image)
