"""The self-contained HTML report: content, caps, no network references, and a real browser
(headless Chromium) that opens it from disk: table, images and plots present, no console errors."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from detkit.evaluate.html_report import write_html_report
from detkit.metrics.analysis import analyze
from detkit.metrics.evaluator import evaluate
from detkit.metrics.records import DetTable, GTTable


def _dataset(tmp_path: Path, n_img: int = 10, C: int = 3, seed: int = 0):
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    ids, paths, g_img, g_box, g_lab, d_img, d_box, d_sc, d_lab = [], {}, [], [], [], [], [], [], []
    for i in range(n_img):
        iid = f"img{i:02d}"
        im = Image.new("RGB", (320, 240), (int(rng.integers(60, 200)),) * 3)
        dr = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(1, 4))):
            x, y = rng.uniform(0, 240), rng.uniform(0, 170)
            w, h = rng.uniform(20, 80), rng.uniform(20, 70)
            c = int(rng.integers(C))
            dr.rectangle([x, y, x + w, y + h], fill=((c * 90) % 255, 120, 200))
            g_img.append(i); g_box.append([x, y, x + w, y + h]); g_lab.append(c)
            for _ in range(int(rng.integers(0, 3))):
                j = rng.normal(0, 6, 4)
                d_img.append(i); d_box.append([x + j[0], y + j[1], x + w + j[2], y + h + j[3]])
                d_sc.append(round(float(rng.uniform(0.1, 1)), 2)); d_lab.append(c if rng.random() < 0.8 else int(rng.integers(C)))
        d_img.append(i); d_box.append([250, 180, 300, 230]); d_sc.append(0.4); d_lab.append(int(rng.integers(C)))
        p = tmp_path / "images" / f"{iid}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        im.save(p)
        ids.append(iid); paths[iid] = p
    gt = GTTable(image_ids=tuple(ids), image_index=np.array(g_img), boxes=np.array(g_box), labels=np.array(g_lab),
                 difficult=np.zeros(len(g_img), bool), iscrowd=np.zeros(len(g_img), bool))
    dt = DetTable(image_index=np.array(d_img), boxes=np.array(d_box), scores=np.array(d_sc), labels=np.array(d_lab))
    return gt, dt, [f"class {c}" for c in range(C)], paths


def _report(tmp_path, metric="voc", **kw):
    gt, dt, names, paths = _dataset(tmp_path)
    rep = evaluate(gt, dt, names, metric=metric, conf_threshold=0.3)
    an = analyze(rep, gt, dt, names)
    return write_html_report(tmp_path / "report", rep, an, gt, dt, names, image_paths=paths, **kw)


@pytest.mark.parametrize("metric", ["voc", "coco"])
def test_report_is_self_contained(tmp_path, metric):
    rf = _report(tmp_path, metric)
    text = rf.path.read_text(encoding="utf-8")
    assert rf.path.name == "report.html" and rf.size_bytes == rf.path.stat().st_size
    for needle in ('id="class-table"', 'id="convention"', 'id="error-bars"', 'id="confusion"', 'id="worst-images"',
                   "data:image/jpeg;base64,", "<polyline", "dAP by error type"):
        assert needle in text, needle
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)  # nothing from the network
    assert "<link" not in text and "@import" not in text
    assert rf.thumbnails > 0 and rf.unreachable == 0
    assert re.search(r"This file: \d+ kB", text)  # the page states its size


def test_galleries_are_capped_and_missing_images_are_counted(tmp_path):
    rf = _report(tmp_path, per_class=1, max_images=2)
    assert rf.thumbnails <= 2
    gt, dt, names, paths = _dataset(tmp_path / "b")
    rep = evaluate(gt, dt, names, metric="voc", conf_threshold=0.3)
    an = analyze(rep, gt, dt, names)
    broken = {k: Path(v).with_suffix(".missing") for k, v in paths.items()}
    rf2 = write_html_report(tmp_path / "r2", rep, an, gt, dt, names, image_paths=broken)
    assert rf2.thumbnails == 0 and rf2.unreachable > 0
    assert "not reachable" in rf2.path.read_text(encoding="utf-8")


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def _open(browser: str, page: Path, tmp: Path, extra: list[str]) -> subprocess.CompletedProcess:
    args = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp / 'profile'}",
            "--enable-logging=stderr", "--v=0", *extra, page.resolve().as_uri()]
    # Its own session: Chromium's helpers (zygote, crashpad) stay out of pytest's process group.
    return subprocess.run(args, capture_output=True, text=True, timeout=120, start_new_session=True)


def _console(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ":CONSOLE" in ln]


def test_report_in_a_real_browser(tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium/Chrome on PATH (Debian: apt-get install chromium)")
    # the console check itself works: a page with an error is caught
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>console.error('x'); notDefined();</script></body></html>")
    assert _console(_open(browser, bad, tmp_path, ["--dump-dom"]).stderr), "console messages not visible"
    rf = _report(tmp_path)
    res = _open(browser, rf.path, tmp_path, ["--dump-dom"])
    dom = res.stdout
    assert res.returncode == 0, res.stderr[-2000:]
    assert 'data-ready="1"' in dom  # the page's script ran to its end
    assert dom.count("<tr>") > 5 and 'id="class-table"' in dom
    assert dom.count("<image ") == rf.thumbnails > 0 and dom.count("<polyline") >= 4
    assert _console(res.stderr) == []
    # the page's controls work: sort the table by GT (twice: descending), switch the class curves
    probe = tmp_path / "probe.html"
    probe.write_text(rf.path.read_text(encoding="utf-8").replace("</body>", """<script>
function col(){return Array.prototype.map.call(document.querySelectorAll('#class-table tbody tr'),
 function(r){return r.cells[1].textContent;}).join(',');}
var th=document.querySelectorAll('#class-table th')[1]; th.click(); var up=col(); th.click(); var v=[up, col()];
var sel=document.getElementById('cls-select'); sel.value='2'; sel.dispatchEvent(new Event('change'));
var shown=Array.prototype.filter.call(document.querySelectorAll('.cls-curves'),function(d){return d.style.display!=='none';});
document.body.setAttribute('data-probe', v.join('/')+'|'+shown.map(function(d){return d.getAttribute('data-k');}).join(','));
</script></body>"""), encoding="utf-8")
    res = _open(browser, probe, tmp_path, ["--dump-dom"])
    assert _console(res.stderr) == []
    gts, shown = re.search(r'data-probe="([^"]*)"', res.stdout).group(1).split("|")
    up, down = ([int(x) for x in part.split(",")] for part in gts.split("/"))
    assert up == sorted(up) and down == sorted(up, reverse=True) and up != down and shown == "2"
    png = tmp_path / "shot.png"
    shot = _open(browser, rf.path, tmp_path, [f"--screenshot={png}", "--window-size=1280,1600", "--hide-scrollbars"])
    assert shot.returncode == 0 and png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    assert _console(shot.stderr) == []
