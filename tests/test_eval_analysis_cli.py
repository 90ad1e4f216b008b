"""``detkit eval --errors / --per-image / --report / --images``: printed breakdown and best F1, JSON
keys, per-image file, HTML report with galleries; unchanged output without the new flags."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from detkit.cli import main
from tide_cases import make_case


def _write_coco(tmp_path: Path, with_images: bool = False) -> tuple[Path, Path]:
    n_img, C, gts, dets = make_case(3, n_img=12, C=3, crowd_p=0.05)
    images = [{"id": i + 1, "width": 640, "height": 640, "file_name": f"{i + 1:012d}.jpg"} for i in range(n_img)]
    anns = [{"id": k + 1, "image_id": g[0] + 1, "category_id": g[1] + 1, "bbox": g[2], "area": g[2][2] * g[2][3],
             "iscrowd": int(g[3])} for k, g in enumerate(gts)]
    cats = [{"id": c + 1, "name": f"thing{c}"} for c in range(C)]
    (tmp_path / "gt.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    res = [{"image_id": d[0] + 1, "category_id": d[1] + 1, "score": d[2], "bbox": d[3]} for d in dets]
    (tmp_path / "dt.json").write_text(json.dumps(res))
    if with_images:
        (tmp_path / "imgs").mkdir()
        for im in images:
            Image.new("RGB", (640, 640), (90, 120, 150)).save(tmp_path / "imgs" / im["file_name"])
    return tmp_path / "gt.json", tmp_path / "dt.json"


def test_new_flags_leave_the_old_output_unchanged(tmp_path, capsys):
    gt, dt = _write_coco(tmp_path)
    base = ["eval", "--metric", "coco", "--gt", str(gt), "--pred", str(dt), "--conf", "0.3"]
    assert main(base + ["--json", str(tmp_path / "a.json")]) == 0
    plain = capsys.readouterr().out
    assert main(base + ["--json", str(tmp_path / "b.json"), "--errors"]) == 0
    more = capsys.readouterr().out
    assert more.startswith(plain) and "TIDE AP" in more[len(plain):] and "best F1" in more[len(plain):]
    a, b = json.loads((tmp_path / "a.json").read_text()), json.loads((tmp_path / "b.json").read_text())
    assert {k: v for k, v in b.items() if k not in ("errors", "best_f1")} == a
    assert set(b["errors"]["dap"]) == {"Cls", "Loc", "Both", "Dupe", "Bkg", "Miss"}
    assert set(b["errors"]["special"]) == {"FalsePos", "FalseNeg"}
    assert len(b["errors"]["classes"]) == 3 and len(b["best_f1"]["curves"]) == 3
    assert b["best_f1"]["overall"]["tp"] + b["best_f1"]["overall"]["fn"] == sum(c["n_gt"] for c in a["classes"])


def test_per_image_and_report_with_images(tmp_path, capsys):
    gt, dt = _write_coco(tmp_path, with_images=True)
    out_csv = tmp_path / "per_image.csv"
    assert main(["eval", "--metric", "coco", "--gt", str(gt), "--pred", str(dt), "--per-image", str(out_csv),
                 "--report", str(tmp_path / "rep"), "--images", str(tmp_path / "imgs"),
                 "--json", str(tmp_path / "r.json")]) == 0
    capsys.readouterr()
    rows = list(csv.DictReader(out_csv.open()))
    d = json.loads((tmp_path / "r.json").read_text())
    for col in ("tp", "fp", "fn"):
        assert sum(int(r[col]) for r in rows) == sum(c[col] for c in d["classes"])
    html = (tmp_path / "rep" / "report.html").read_text(encoding="utf-8")
    assert "data:image/jpeg;base64," in html and 'id="class-table"' in html


@pytest.mark.parametrize("args,msg", [
    (["--per-image", "x.txt"], "must end in .csv or .jsonl"),
    (["--report", "rep", "--images", "no_such_dir"], "not a folder"),
    (["--report", "afile"], "must be a folder"),
    (["--per-image", "afile/x.csv"], "not a file path"),
])
def test_bad_analysis_arguments_are_one_line_errors(tmp_path, capsys, args, msg):
    gt, dt = _write_coco(tmp_path)
    (tmp_path / "afile").write_text("")
    args = [str(tmp_path / a) if a in ("x.txt", "rep", "no_such_dir", "afile", "afile/x.csv") else a for a in args]
    assert main(["eval", "--metric", "coco", "--gt", str(gt), "--pred", str(dt), *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("detkit: error: ") and err.count("\n") == 1 and msg in err
