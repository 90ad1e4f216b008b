"""``detkit eval --report DIR``: one self-contained HTML file of an evaluation.

Everything is inside ``DIR/report.html`` (inline CSS, a few lines of inline JavaScript, inline SVG
charts, images as base64 JPEG thumbnails); it opens from the file system and loads nothing from
the network. Contents: the convention header, the per-class table (counts at ``--conf``, P/R/F1, AP,
the F1-optimal confidence, error counts; sortable), PR and F1-confidence curves (overall and per
class), the confusion matrix, the error-breakdown bars, the worst images, and per class a gallery
of its worst images (TP green, FP red with its error type, FN blue) when the image files are
reachable. Sizes stay bounded at any dataset size: galleries are capped (``per_class`` images per
class, ``max_images`` in all), the worst-image table at ``worst_rows`` rows, curves at 200 points;
the page states its own size and the caps.
"""
from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from detkit.boxes import iou_matrix
from detkit.errors import DetkitError
from detkit.evaluate.html_svg import PALETTE, bar_chart, boxes_over_image, esc, line_chart
from detkit.fileio import write_bytes_atomic
from detkit.metrics.analysis import Analysis
from detkit.metrics.confusion import confusion_matrix
from detkit.metrics.records import DetTable, GTTable
from detkit.metrics.report import EvalReport
from detkit.metrics.tide import ERROR_TYPES, SPECIAL_TYPES

TYPE_NAMES = ("", "Cls", "Loc", "Both", "Dupe", "Bkg")
CSS = """body{font-family:system-ui,sans-serif;margin:1.2em;color:#222;max-width:1400px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
pre.conv{background:#f6f6f6;padding:.6em;white-space:pre-wrap;font-size:.85em}
table{border-collapse:collapse;font-size:.82em}td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
th{background:#f0f0f0;cursor:pointer}td.n,th.n{text-align:left}.plots{display:flex;flex-wrap:wrap;gap:12px}
.gallery{display:flex;flex-wrap:wrap;gap:8px}.card{font-size:.75em}.note{color:#666;font-size:.85em}
table.cm td{min-width:1.6em;text-align:center}"""
JS = """(function(){
document.querySelectorAll('table.sortable').forEach(function(t){
 t.querySelectorAll('th').forEach(function(th,i){th.addEventListener('click',function(){
  var tb=t.tBodies[0],rows=Array.prototype.slice.call(tb.rows),asc=th.getAttribute('data-asc')!=='1';
  th.setAttribute('data-asc',asc?'1':'0');
  rows.sort(function(a,b){var x=a.cells[i].textContent,y=b.cells[i].textContent,fx=parseFloat(x),fy=parseFloat(y);
   var r=(isNaN(fx)||isNaN(fy))?x.localeCompare(y):fx-fy;return asc?r:-r;});
  rows.forEach(function(r){tb.appendChild(r);});});});});
var sel=document.getElementById('cls-select');
if(sel){sel.addEventListener('change',function(){document.querySelectorAll('.cls-curves').forEach(function(d){
 d.style.display=(d.getAttribute('data-k')===sel.value)?'flex':'none';});});}
document.body.setAttribute('data-ready','1');})();"""


@dataclass(frozen=True)
class ReportFile:
    """What was written: the file, its size, thumbnails embedded, gallery images not reachable."""

    path: Path
    size_bytes: int
    thumbnails: int
    unreachable: int


def _f(x, d=3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"


def _class_table(report: EvalReport, an: Analysis) -> str:
    cols = ["class", "GT", "dets", "TP", "FP", "FN", "P", "R", "F1", "AP", "best conf", "best F1", "TP@best",
            "FP@best", "FN@best"] + list(ERROR_TYPES)
    out = ['<table id="class-table" class="sortable"><thead><tr>' +
           "".join(f'<th class="{"n" if i == 0 else ""}">{esc(c)}</th>' for i, c in enumerate(cols)) +
           "</tr></thead><tbody>"]
    cc = an.errors.class_counts
    for k, (c, b) in enumerate(zip(report.classes, an.thresholds.best)):
        cells = [c.n_gt, c.n_det, c.tp, c.fp, c.fn, _f(c.precision), _f(c.recall), _f(c.f1), _f(c.ap, 4),
                 _f(b.conf, 4), _f(b.f1), b.tp, b.fp, b.fn] + [int(v) for v in cc[k]]
        out.append(f'<tr><td class="n">{esc(c.name)}</td>' + "".join(f"<td>{v}</td>" for v in cells) + "</tr>")
    o = an.thresholds.overall
    out.append("</tbody><tfoot><tr><td class=\"n\">all (best F1: pooled)</td>" +
               "".join(f"<td>{v}</td>" for v in [sum(c.n_gt for c in report.classes), sum(c.n_det for c in report.classes),
                                                  sum(c.tp for c in report.classes), sum(c.fp for c in report.classes),
                                                  sum(c.fn for c in report.classes), "", "", "", _f(report.map, 4),
                                                  _f(o.conf, 4), _f(o.f1), o.tp, o.fp, o.fn]
                                                 + [int(v) for v in cc.sum(axis=0)]) + "</tr></tfoot></table>")
    return "".join(out)


def _curves(report: EvalReport, an: Analysis) -> str:
    C = len(report.classes)
    grid = np.linspace(0, 1, 101)
    prs = []
    for c in report.pr_curves:  # mean over classes of the envelope at 101 recall points
        if c.recall.size == 0 or not np.isfinite(c.recall).any():
            continue
        env = np.maximum.accumulate(np.nan_to_num(c.precision)[::-1])[::-1]
        idx = np.searchsorted(np.nan_to_num(c.recall), grid, side="left")
        prs.append(np.where(idx < env.size, env[np.minimum(idx, env.size - 1)], 0.0))
    mean_pr = np.mean(prs, axis=0) if prs else np.full(101, np.nan)
    oc, ob = an.thresholds.overall_curve, an.thresholds.overall
    lo, hi = float(oc.conf[0]), float(oc.conf[-1])
    light = [(c.name, c.recall, c.precision, "#ccc", 0.8) for c in report.pr_curves[:C]]
    parts = ['<div class="plots" id="overall-plots">',
             line_chart(light + [("mean over classes", grid, mean_pr, "#1f77b4", 2.5)], "PR curves (grey: classes)",
                        "recall", "precision"),
             line_chart([(c.name, c.conf, c.f1, "#ccc", 0.8) for c in an.thresholds.curves] +
                        [("overall F1", oc.conf, oc.f1, "#d62728", 2.5), ("overall P", oc.conf, oc.precision, "#1f77b4", 1.5),
                         ("overall R", oc.conf, oc.recall, "#2ca02c", 1.5)],
                        "F1 (red), P (blue), R (green) vs confidence", "confidence", "value", x_lim=(lo, hi),
                        marker=None if ob.conf is None else (ob.conf, ob.f1)), "</div>"]
    opts = "".join(f'<option value="{k}">{esc(c.name)}</option>' for k, c in enumerate(report.classes))
    parts.append(f'<p><label>class: <select id="cls-select">{opts}</select></label></p>')
    for k, (pc, tc, b) in enumerate(zip(report.pr_curves, an.thresholds.curves, an.thresholds.best)):
        col = PALETTE[k % len(PALETTE)]
        parts.append(f'<div class="plots cls-curves" data-k="{k}" style="display:{"flex" if k == 0 else "none"}">' +
                     line_chart([(pc.name, pc.recall, pc.precision, col, 2)], f"PR: {pc.name}", "recall", "precision") +
                     line_chart([("F1", tc.conf, tc.f1, "#d62728", 2), ("P", tc.conf, tc.precision, "#1f77b4", 1.2),
                                 ("R", tc.conf, tc.recall, "#2ca02c", 1.2)], f"F1 / P / R vs confidence: {tc.name}",
                                "confidence", "value", x_lim=(lo, hi),
                                marker=None if b.conf is None else (b.conf, b.f1)) + "</div>")
    return "".join(parts)


def _confusion(cm: np.ndarray, names: list[str]) -> str:
    labels = list(names) + ["background"]
    rows = ['<table class="cm" id="confusion"><thead><tr><th class="n">GT \\ predicted</th>' +
            "".join(f"<th>{esc(n)}</th>" for n in labels) + "</tr></thead><tbody>"]
    for i, n in enumerate(labels):
        tot = max(int(cm[i].sum()), 1)
        cells = []
        for j in range(len(labels)):
            v = int(cm[i, j])
            a = 0.0 if v == 0 else 0.15 + 0.85 * v / tot
            cells.append(f'<td style="background:rgba(31,119,180,{a:.2f})">{v if v else ""}</td>')
        rows.append(f'<tr><th class="n">{esc(n)}</th>{"".join(cells)}</tr>')
    table = "".join(rows) + "</tbody></table>"
    if len(names) > 25:
        return f"<details><summary>{len(names)} classes: show the matrix</summary>{table}</details>"
    return table


def _thumb(path: Path, size: int) -> tuple[str, int, int, float] | None:
    from PIL import Image

    from detkit.data.images import read_image
    try:
        img = read_image(path)
    except (DetkitError, OSError):
        return None
    h, w = img.shape[:2]
    s = min(1.0, size / max(w, h))
    im = Image.fromarray(img)
    if s < 1.0:
        im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=72)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), w, h, s


def _gallery(k: int, imgs: np.ndarray, report: EvalReport, an: Analysis, gt: GTTable, dt: DetTable,
             paths: Mapping, size: int, cache: dict) -> tuple[str, int, int]:
    conf = report.conf_threshold
    gxy, dxy = gt.xyxy(), dt.xyxy()
    counted = ~(gt.iscrowd | gt.difficult)
    cards, n_thumb, n_missing = [], 0, 0
    for i in imgs:
        iid = gt.image_ids[int(i)]
        p = paths.get(iid)
        if p is not None and iid not in cache:
            cache[iid] = _thumb(Path(p), size)
        if p is None or cache[iid] is None:
            n_missing += 1
            continue
        uri, w, h, s = cache[iid]
        d = np.flatnonzero((dt.image_index == i) & (dt.labels == k) & (dt.scores >= conf))
        g = np.flatnonzero((gt.image_index == i) & (gt.labels == k) & counted)
        tpd = d[an.det_tp[d]]
        boxes = [(dxy[j], "#2ca02c", f"TP {dt.scores[j]:.2f}") for j in tpd]
        for j in d[an.det_fp[d]]:
            boxes.append((dxy[j], "#d62728", f"{TYPE_NAMES[int(an.errors.det_type[j])] or 'FP'} {dt.scores[j]:.2f}"))
        n_fn = max(0, g.size - tpd.size)
        if n_fn:  # the objects least covered by a TP are the FN (count = the table's)
            cover = iou_matrix(gxy[g], dxy[tpd]).max(axis=1) if tpd.size else np.zeros(g.size)
            for j in g[np.argsort(cover, kind="stable")[:n_fn]]:
                boxes.append((gxy[j], "#1f77b4", "FN"))
        n_fp = int(np.count_nonzero(an.det_fp[d]))
        cards.append(f'<div class="card">{boxes_over_image(uri, w, h, s, boxes, str(iid))}<br>{esc(iid)}: '
                     f"TP {tpd.size} FP {n_fp} FN {n_fn}</div>")
        n_thumb += 1
    return '<div class="gallery">' + "".join(cards) + "</div>", n_thumb, n_missing


def write_html_report(out_dir: str | Path, report: EvalReport, analysis: Analysis, gt: GTTable, dt: DetTable,
                      class_names: list[str], image_paths: Mapping | None = None, plus_one: bool = False,
                      per_class: int = 4, max_images: int = 240, thumb: int = 320, worst_rows: int = 50) -> ReportFile:
    """Write ``out_dir/report.html`` (module docstring) and return what was written.

    Args:
        image_paths: image id -> image file, for the galleries (None or missing ids: no thumbnail).
    """
    an, C = analysis, len(class_names)
    paths = dict(image_paths or {})
    head = (f"{report.metric} map = {_f(report.map, 4)} &middot; {report.n_images} images &middot; "
            f"{report.n_detections} detections &middot; counts at conf {report.conf_threshold:g}")
    e = an.errors
    bars = bar_chart([(t, 100 * e.dap[t], PALETTE[j]) for j, t in enumerate(ERROR_TYPES)],
                     "dAP by error type (AP points)") + \
        bar_chart([(t, 100 * e.special[t], "#7f7f7f") for t in SPECIAL_TYPES], "oracles: dAP (AP points)")
    cm = confusion_matrix(gt, dt, C, report.iou_threshold, report.conf_threshold, plus_one)
    pi = an.per_image
    worst = [int(i) for i in pi.worst_first()[:worst_rows] if pi.fp[i] + pi.fn[i] > 0]
    wrows = "".join(f'<tr><td class="n">{esc(gt.image_ids[i])}</td><td>{pi.n_gt[i]}</td><td>{pi.n_det[i]}</td>'
                    f"<td>{pi.tp[i]}</td><td>{pi.fp[i]}</td><td>{pi.fn[i]}</td>" +
                    "".join(f"<td>{v}</td>" for v in pi.errors[i]) + "</tr>" for i in worst)
    whead = "".join(f"<th>{h}</th>" for h in ["GT", "dets", "TP", "FP", "FN"] + list(ERROR_TYPES))
    # per-class worst images: FP + FN of that class at conf
    n_img = len(gt.image_ids)
    above = dt.scores >= report.conf_threshold
    key = dt.image_index * C + dt.labels
    fp_ic = np.bincount(key[above & an.det_fp], minlength=n_img * C).reshape(n_img, C)
    tp_ic = np.bincount(key[above & an.det_tp], minlength=n_img * C).reshape(n_img, C)
    counted = ~(gt.iscrowd | gt.difficult)
    ng_ic = np.bincount((gt.image_index * C + gt.labels)[counted], minlength=n_img * C).reshape(n_img, C)
    bad_ic = fp_ic + np.maximum(ng_ic - tp_ic, 0)
    cache: dict = {}
    gal, n_thumb, n_missing = [], 0, 0
    for k in range(C):
        room = min(per_class, max_images - n_thumb)
        cand = np.argsort(-bad_ic[:, k], kind="stable")[:room]
        cand = cand[bad_ic[cand, k] > 0]
        if room <= 0 or cand.size == 0:
            continue
        html_k, nt, nm = _gallery(k, cand, report, an, gt, dt, paths, thumb, cache)
        n_thumb += nt
        n_missing += nm
        gal.append(f'<details{" open" if k < 3 else ""}><summary>{esc(class_names[k])}: worst {cand.size} '
                   f"images (FP + FN of the class)</summary>{html_k}</details>")
    gal_note = (f"{n_thumb} thumbnails (at most {per_class} per class, {max_images} in all, {thumb} px)"
                + (f"; {n_missing} images not reachable, not shown" if n_missing else "")
                + ("" if paths else "; no image files given: galleries need the images"))
    doc = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>detkit evaluation report</title>",
           f"<style>{CSS}</style></head><body><h1>detkit evaluation report</h1><p>{head}</p>",
           f'<p class="note" id="size-note">This file: @@SIZE@@. {esc(gal_note)}.</p>',
           f'<pre class="conv" id="convention">{esc(report.convention)}</pre>',
           "<h2>Per class</h2>", _class_table(report, an),
           f'<p class="note">TP/FP/FN, P, R, F1 at conf {report.conf_threshold:g}; best conf: the threshold that '
           "maximises F1 (TP/FP/FN there); Cls ... Miss: TIDE error types over every evaluated detection. "
           "Click a column to sort.</p>",
           f'<h2>Error breakdown (TIDE)</h2><pre class="conv">{esc(an.format_errors())}</pre>'
           f'<div class="plots" id="error-bars">{bars}</div>',
           "<h2>Curves</h2>", _curves(report, an),
           "<h2>Confusion matrix</h2><p class=\"note\">rows: ground truth, columns: prediction; class-agnostic "
           f"one-to-one matching at IoU {report.iou_threshold:g}, conf {report.conf_threshold:g}</p>",
           _confusion(cm, class_names),
           "<h2>Galleries</h2><p class=\"note\">TP green, FP red (with its error type), FN blue</p>", "".join(gal),
           f"<h2>Worst images</h2><p class=\"note\">by FP + FN at conf {report.conf_threshold:g}, first "
           f"{len(worst)} of {n_img} (all: --per-image)</p>"
           f'<table id="worst-images" class="sortable"><thead><tr><th class="n">image</th>{whead}</tr></thead>'
           f"<tbody>{wrows}</tbody></table>",
           f"<script>{JS}</script></body></html>"]
    text = "".join(doc)
    size = len(text.encode("utf-8"))
    label = f"{size / 1e6:.2f} MB" if size >= 1e5 else f"{size / 1e3:.0f} kB"
    data = text.replace("@@SIZE@@", label, 1).encode("utf-8")
    out = Path(out_dir) / "report.html"
    write_bytes_atomic(out, data, fsync=False, make_parents=True)
    return ReportFile(path=out, size_bytes=len(data), thumbnails=n_thumb, unreachable=n_missing)
