"""The files ``detkit eval`` writes: the report as JSON (``--json``) and the plots (``--plots``:
PR curves, confusion matrix, PR points as CSV)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from detkit.evaluate.run import EvalRun
from detkit.fileio import write_bytes_atomic
from detkit.metrics.confusion import confusion_matrix
from detkit.metrics.plots import write_plots


def write_report_json(run: EvalRun, path: str | os.PathLike, sources: dict, extra: dict | None = None) -> None:
    """``report.to_dict()`` plus ``sources`` (the input paths) and ``extra`` keys (the analysis:
    ``errors``, ``best_f1``), written atomically (strict JSON)."""
    d = run.report.to_dict()
    d["sources"] = sources
    d.update(extra or {})
    write_bytes_atomic(Path(path), (json.dumps(d, indent=1, allow_nan=False) + "\n").encode("utf-8"), fsync=False,
                       make_parents=True)


def write_report_plots(run: EvalRun, folder: str | os.PathLike, iou_threshold: float,
                       conf_threshold: float) -> list[Path]:
    """PR curves (per class and all classes), the confusion matrix at ``conf_threshold`` and the PR
    points as CSV into ``folder``; returns the files written."""
    cm = confusion_matrix(run.gt, run.dt, len(run.class_names), iou_threshold=iou_threshold,
                          conf_threshold=conf_threshold, plus_one=run.plus_one)
    return write_plots(run.report, folder, confusion=cm)
