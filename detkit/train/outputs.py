"""What a training run writes besides checkpoints: the run folder (:func:`next_run_dir`),
``results.csv`` (one row per epoch), ``results.png`` (loss and mAP curves) and the memory figure
shown on the progress bar.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import torch

from detkit.data.datafiles import write_text_atomic

RESULT_COLUMNS = ("epoch", "step", "box", "obj", "cls", "loss", "lr", "mAP50", "images", "img_per_s",
                  "data_wait", "time_s")


def next_run_dir(out: str | os.PathLike) -> Path:
    """``out`` if it is new or empty, else ``out2``, ``out3``, ... (never overwrites a run)."""
    base = Path(out)
    if not base.exists() or (base.is_dir() and not any(base.iterdir())):
        return base
    n = 2
    while True:
        cand = base.with_name(f"{base.name}{n}")
        if not cand.exists():
            return cand
        n += 1



def memory_text(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2 ** 30:.1f}G"
    try:
        import resource  # not on Windows
    except ImportError:
        return "n/a"
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # peak resident set, KiB on Linux
    return f"{rss_kb / 2 ** 20:.1f}G"


def write_results_csv(path: Path, history: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(RESULT_COLUMNS), lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items() if k in RESULT_COLUMNS})
    write_text_atomic(path, buf.getvalue())


def save_plots(run_dir: Path, history: list[dict[str, Any]]) -> Path | None:
    """``results.png``: loss components and validation mAP per epoch (matplotlib, Agg canvas)."""
    if not history:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ep = [r["epoch"] for r in history]
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    for key in ("loss", "box", "obj", "cls"):
        ax1.plot(ep, [r[key] for r in history], marker="o", label=key)
    ax1.set_xlabel("epoch"), ax1.set_ylabel("training loss (per image)"), ax1.set_yscale("log"), ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.plot(ep, [r["mAP50"] for r in history], marker="o", color="C4")
    ax2.set_xlabel("epoch"), ax2.set_ylabel("validation mAP@0.5 (VOC all-point, EMA)"), ax2.set_ylim(0, 1)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    path = run_dir / "results.png"
    tmp = run_dir / ".results.png.tmp"
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path
