"""Plots and CSV of an evaluation: PR curves (per class and all classes), confusion matrix.

matplotlib is imported lazily and switched to the non-interactive Agg backend here only (never at
import time of detkit). Files are written atomically (temp file in the same folder, then replace).
"""
from __future__ import annotations

import csv
import io
import math
import os
import re
from pathlib import Path

import numpy as np

from detkit.fileio import write_bytes_atomic
from detkit.metrics.report import EvalReport


def _atomic_bytes(path: Path, data: bytes) -> None:
    write_bytes_atomic(path, data, fsync=False, make_parents=True)


def _safe(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return s or "class"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _atomic_bytes(path, buf.getvalue())


def write_pr_csv(report: EvalReport, path: Path) -> None:
    """CSV with columns class, point, recall, precision, score (score empty for COCO)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["class", "point", "recall", "precision", "score"])
    for c in report.pr_curves:
        for i in range(c.recall.size):
            sc = "" if c.scores.size == 0 else repr(float(c.scores[i]))
            w.writerow([c.name, i, repr(float(c.recall[i])), repr(float(c.precision[i])), sc])
    _atomic_bytes(path, buf.getvalue().encode("utf-8"))


def write_plots(report: EvalReport, out_dir: str | os.PathLike, confusion: np.ndarray | None = None) -> list[Path]:
    """Write ``pr_<class>.png`` per class, ``pr_all.png``, ``confusion_matrix.png`` (when given) and
    ``pr_points.csv`` into ``out_dir``; return the written paths."""
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    iou_lbl = f"IoU {report.iou_threshold:g}"
    used_names: set[str] = set()
    fig_all, ax_all = plt.subplots(figsize=(7, 6))
    for cls, curve in zip(report.classes, report.pr_curves):
        fname = _safe(curve.name)
        while fname in used_names:
            fname += "_"
        used_names.add(fname)
        ap_txt = "n/a" if math.isnan(cls.ap) else f"{cls.ap:.4f}"
        fig, ax = plt.subplots(figsize=(5, 4.5))
        if curve.recall.size and not np.all(np.isnan(curve.recall)):
            drawstyle = "steps-post" if report.metric == "coco" else "default"
            ax.plot(curve.recall, curve.precision, drawstyle=drawstyle)
            ax_all.plot(curve.recall, curve.precision, linewidth=1, label=f"{curve.name} {ap_txt}")
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
               title=f"{curve.name}: AP {ap_txt} ({report.metric}, {iou_lbl})")
        ax.grid(alpha=0.3)
        p = out / f"pr_{fname}.png"
        _save(fig, p)
        plt.close(fig)
        written.append(p)
    ax_all.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
               title=f"all classes: mAP {report.map:.4f} ({report.metric}, {iou_lbl})")
    ax_all.grid(alpha=0.3)
    if len(report.classes) <= 30 and ax_all.get_legend_handles_labels()[0]:  # no curves: no legend
        ax_all.legend(fontsize=7, loc="lower left")
    p = out / "pr_all.png"
    _save(fig_all, p)
    plt.close(fig_all)
    written.append(p)
    if confusion is not None:
        names = [c.name for c in report.classes] + ["background"]
        n = len(names)
        fig, ax = plt.subplots(figsize=(max(5, 0.45 * n + 2), max(4.5, 0.45 * n + 1.5)))
        im = ax.imshow(confusion, cmap="Blues")
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
        ax.set_xticklabels(names, rotation=90, fontsize=7)
        ax.set_yticklabels(names, fontsize=7)
        ax.set(xlabel="predicted", ylabel="ground truth", title="confusion matrix (counts)")
        if n <= 25:
            for i in range(n):
                for j in range(n):
                    if confusion[i, j]:
                        ax.text(j, i, str(int(confusion[i, j])), ha="center", va="center", fontsize=6)
        fig.colorbar(im, ax=ax)
        p = out / "confusion_matrix.png"
        _save(fig, p)
        plt.close(fig)
        written.append(p)
    p = out / "pr_points.csv"
    write_pr_csv(report, p)
    written.append(p)
    return written
