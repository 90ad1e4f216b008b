"""TIDE error breakdown: hand-made cases for every error type, and tidecv itself on generated cases
and on the ../shared/evaldata COCO fixtures (same dAP per type within 1e-6 AP points)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from detkit.errors import EvalError
from detkit.metrics.records import DetTable, GTTable
from detkit.metrics.tide import BKG, BOTH, CLS, DUPE, ERROR_TYPES, LOC, tide_errors
from tide_cases import case_tables, make_case, run_tidecv, tidecv_numbers

EVALDATA = Path(__file__).resolve().parents[2] / "shared" / "evaldata"


def _tables(gts, dets, n_img=1):
    """gts: (img, cls, xywh[, crowd]); dets: (img, cls, score, xywh)."""
    gt = GTTable(image_ids=tuple(range(n_img)), image_index=np.array([g[0] for g in gts], np.int64),
                 boxes=np.array([g[2] for g in gts], float).reshape(-1, 4), labels=np.array([g[1] for g in gts], np.int64),
                 difficult=np.zeros(len(gts), bool), iscrowd=np.array([len(g) > 3 and g[3] for g in gts], bool),
                 box_format="xywh")
    dt = DetTable(image_index=np.array([d[0] for d in dets], np.int64), boxes=np.array([d[3] for d in dets], float).reshape(-1, 4),
                  scores=np.array([d[2] for d in dets], float), labels=np.array([d[1] for d in dets], np.int64),
                  box_format="xywh")
    return gt, dt


def test_every_type_is_recognised():
    gts = [(0, 0, [0, 0, 10, 10]), (0, 0, [100, 0, 10, 10]), (0, 1, [200, 0, 10, 10]), (0, 1, [300, 0, 10, 10]),
           (0, 1, [500, 0, 10, 10])]
    dets = [(0, 0, .9, [0, 0, 10, 10]),      # TP
            (0, 0, .8, [0, 0, 10, 10]),      # Dupe (object taken)
            (0, 0, .7, [105, 0, 10, 10]),    # Loc: IoU 1/3 with its class
            (0, 0, .6, [200, 0, 10, 10]),    # Cls: IoU 1 with a class-1 object
            (0, 0, .5, [305, 0, 10, 10]),    # Both: IoU 1/3 with another class only
            (0, 0, .4, [400, 400, 10, 10])]  # Bkg
    r = tide_errors(*_tables(gts, dets), 2)
    assert r.det_type.tolist() == [0, DUPE, LOC, CLS, BOTH, BKG]
    assert r.det_tp.tolist() == [True] + [False] * 5
    # Loc/Cls targets are not missed; the object under the Both box (IoU 1/3) and the lone one are
    assert r.gt_missed.tolist() == [False, False, False, True, True]
    assert r.counts == {"Cls": 1, "Loc": 1, "Both": 1, "Dupe": 1, "Bkg": 1, "Miss": 2}


def test_loc_fix_and_oracles_by_hand():
    # two objects; a TP (.9) and a badly placed box on the other one (.8): base P [1, .5], R [.5, .5]
    gts = [(0, 0, [0, 0, 10, 10]), (0, 0, [100, 0, 10, 10])]
    dets = [(0, 0, .9, [0, 0, 10, 10]), (0, 0, .8, [105, 0, 10, 10])]
    r = tide_errors(*_tables(gts, dets), 1)
    assert r.ap == pytest.approx(51 / 101, abs=1e-15)  # recall points 0 .. .50 read precision 1
    assert r.dap["Loc"] == pytest.approx(50 / 101, abs=1e-15)  # fixed: P = R = 1 everywhere
    assert r.dap["Miss"] == 0 and r.counts["Miss"] == 0
    assert r.special["FalseNeg"] == pytest.approx(50 / 101, abs=1e-15)
    assert r.special["FalsePos"] == pytest.approx(0.0, abs=1e-15)


def test_dupe_and_bkg_fix_by_hand():
    # T (.9), F (.8), T (.7) over 2 objects: P [1, .5, 2/3], R [.5, .5, 1] -> (51 + 50 * 2/3) / 101
    gts = [(0, 0, [0, 0, 10, 10]), (0, 0, [100, 0, 10, 10])]
    base = (51 + 50 * 2 / 3) / 101
    for fp_box, kind in (([0, 0, 10, 10], "Dupe"), ([400, 400, 10, 10], "Bkg")):
        dets = [(0, 0, .9, [0, 0, 10, 10]), (0, 0, .8, fp_box), (0, 0, .7, [100, 0, 10, 10])]
        r = tide_errors(*_tables(gts, dets), 1)
        assert r.ap == pytest.approx(base, abs=1e-15)
        assert r.dap[kind] == pytest.approx(1 - base, abs=1e-15)
        assert all(r.dap[k] == 0 for k in ERROR_TYPES if k != kind)


def test_cls_and_miss_by_hand():
    # a class-1 detection on a class-0 object already found: fixing Cls removes it, class 1 (no
    # objects, AP 0 in tidecv's mean) drops out: mAP 0.5 -> 1
    gts = [(0, 0, [0, 0, 10, 10])]
    dets = [(0, 0, .9, [0, 0, 10, 10]), (0, 1, .8, [0, 0, 10, 10])]
    r = tide_errors(*_tables(gts, dets), 2)
    assert r.ap == pytest.approx(0.5) and r.dap["Cls"] == pytest.approx(0.5)
    # one of two objects found: fixing Miss drops the missed one from the positives
    gts = [(0, 0, [0, 0, 10, 10]), (0, 0, [100, 0, 10, 10])]
    r = tide_errors(*_tables(gts, [(0, 0, .9, [0, 0, 10, 10])]), 1)
    assert r.ap == pytest.approx(51 / 101) and r.dap["Miss"] == pytest.approx(50 / 101)
    assert r.gt_missed.tolist() == [False, True]


def test_both_by_hand_and_crowd_ignore():
    # class 0: F (.9, Both) then T (.7): P [0, .5], R [0, 1] -> AP .5; class 1: missed -> AP 0
    gts = [(0, 0, [0, 0, 10, 10]), (0, 1, [300, 0, 10, 10])]
    dets = [(0, 0, .9, [305, 0, 10, 10]), (0, 0, .7, [0, 0, 10, 10])]
    r = tide_errors(*_tables(gts, dets), 2)
    assert r.ap == pytest.approx(0.25) and r.dap["Both"] == pytest.approx(0.25) and r.dap["Miss"] == pytest.approx(0.25)
    # a detection inside a crowd region of its class is ignored (not in AP) but still typed
    gts = [(0, 0, [0, 0, 10, 10]), (0, 0, [100, 0, 50, 50], True)]
    dets = [(0, 0, .9, [0, 0, 10, 10]), (0, 0, .95, [110, 10, 20, 20])]
    r = tide_errors(*_tables(gts, dets), 1)
    assert r.det_ignored.tolist() == [False, True] and r.ap == pytest.approx(1.0)
    assert r.det_type[1] == BKG


def test_max_dets_cuts_per_image_over_all_classes():
    gts = [(0, 0, [0, 0, 10, 10])]
    dets = [(0, 1, .9, [50, 50, 10, 10]), (0, 0, .5, [0, 0, 10, 10])]
    r = tide_errors(*_tables(gts, dets), 2, max_dets=1)
    assert r.det_kept.tolist() == [True, False] and r.gt_missed.tolist() == [True]


def test_bad_settings_are_one_line_errors():
    gt, dt = _tables([(0, 0, [0, 0, 1, 1])], [])
    for kw in ({"bg_thresh": 0.6}, {"pos_thresh": 0.0}, {"interpolation": "x"}, {"max_dets": 0}):
        with pytest.raises(EvalError):
            tide_errors(gt, dt, 1, **kw)


def test_voc_interpolation_and_plus_one():
    gts = [(0, 0, [0, 0, 10, 10]), (0, 0, [100, 0, 10, 10])]
    dets = [(0, 0, .9, [0, 0, 10, 10]), (0, 0, .8, [105, 0, 10, 10])]
    r = tide_errors(*_tables(gts, dets), 1, interpolation="voc")
    assert r.ap == pytest.approx(0.5) and r.dap["Loc"] == pytest.approx(0.5)
    r = tide_errors(*_tables(gts, dets), 1, interpolation="voc07", plus_one=True)
    assert r.ap == pytest.approx(6 / 11)


# ----------------------------------------------------------------------------- against tidecv

def _close(ours, theirs):
    ap, main, special, counts = theirs
    assert abs(100 * ours.ap - ap) <= 1e-6
    for k, v in main.items():
        assert abs(100 * ours.dap[k] - v) <= 1e-6, (k, 100 * ours.dap[k], v)
    for k, v in special.items():
        assert abs(100 * ours.special[k] - v) <= 1e-6, (k, 100 * ours.special[k], v)
    assert {k: ours.counts[k] for k in counts} == counts


@pytest.mark.parametrize("seed", range(40))
def test_same_as_tidecv_on_generated_cases(seed):
    pytest.importorskip("tidecv", reason="tidecv (test-only dependency) is not installed")
    rng = np.random.default_rng(1000 + seed)
    kw = dict(n_img=int(rng.integers(1, 40)), C=int(rng.integers(1, 6)), max_gt=int(rng.integers(1, 10)),
              n_bg=int(rng.integers(0, 6)), crowd_p=float(rng.choice([0, 0.05, 0.3])),
              score_decimals=int(rng.choice([1, 2, 6])), empty_p=float(rng.choice([0, 0.2, 0.5])))
    max_dets = int(rng.choice([100, 3, 7]))
    case = make_case(seed, **kw)
    if not case[3]:
        pytest.skip("generated case without detections (tidecv divides by zero)")
    gt, dt = case_tables(*case)
    _close(tide_errors(gt, dt, case[1], max_dets=max_dets), run_tidecv(*case, max_dets=max_dets))


FIXTURES = [
    ("faster_coco_eval/tests/dataset/cocoapi/instances_val2014_100.json",
     "faster_coco_eval/tests/dataset/cocoapi/instances_val2014_fakebbox100_results.json"),
    ("review_object_detection_metrics/tests/test_coco_eval/gts/sampled_gts_bbox_area.json",
     "review_object_detection_metrics/tests/test_coco_eval/dets/sampled_bbox_results.json"),
    ("extracted/detectron2_coco_small/gt.json", "extracted/detectron2_coco_small/dt.json"),
    ("extracted/faster_coco_eval_dummy4/gt.json", "extracted/faster_coco_eval_dummy4/dt.json"),
    ("extracted/torchmetrics_inputs4/coco_gt.json", "extracted/torchmetrics_inputs4/coco_dt.json"),
    ("faster_coco_eval/tests/dataset/gt_dataset.json", "faster_coco_eval/tests/dataset/dt_dataset.json"),
]


@pytest.mark.real
@pytest.mark.parametrize("gt_rel,dt_rel", FIXTURES, ids=[f[0].split("/")[-1] for f in FIXTURES])
def test_same_as_tidecv_on_evaldata(gt_rel, dt_rel):
    if not EVALDATA.is_dir():
        pytest.skip("../shared/evaldata is absent")
    pytest.importorskip("tidecv", reason="tidecv (test-only dependency) is not installed")
    from tidecv import Data

    from detkit.evaluate.ground_truth import load_ground_truth
    from detkit.evaluate.predictions import load_predictions
    from detkit.evaluate.run import prepare_tables

    gj = json.loads((EVALDATA / gt_rel).read_text())
    dj = json.loads((EVALDATA / dt_rel).read_text())
    dj = dj["annotations"] if isinstance(dj, dict) else dj
    g, p = Data("gt", max_dets=100), Data("pred")  # as tidecv.datasets.COCO / COCOResult, boxes only
    for im in gj["images"]:
        g.add_image(im["id"], str(im["id"]))
    for c in gj["categories"]:
        g.add_class(c["id"], c["name"])
    for a in gj["annotations"]:
        (g.add_ignore_region if a.get("iscrowd", 0) else g.add_ground_truth)(a["image_id"], a["category_id"], a["bbox"])
    for d in dj:
        p.add_detection(d["image_id"], d["category_id"], d["score"], d["bbox"])
    gt = load_ground_truth(EVALDATA / gt_rel)
    dt, dt_voc, names = load_predictions(EVALDATA / dt_rel, gt)
    G, D, _ = prepare_tables(gt, dt, dt_voc, "coco")
    _close(tide_errors(G, D, len(names)), tidecv_numbers(g, p))


def test_tidecv_tie_order_quirk_is_kept():
    # an FP tied with a TP: the unfixed AP ranks the TP first (earlier image), every recomputed AP
    # ranks error points first, so a fix that changes nothing scores lower: the FalseNeg oracle is
    # negative although every object is matched, and Dupe (no duplicates) is clipped to 0
    gts = [(0, 0, [0, 0, 10, 10]), (1, 0, [0, 0, 10, 10])]
    dets = [(0, 0, .5, [0, 0, 10, 10]), (1, 0, .5, [200, 200, 10, 10]), (1, 0, .4, [0, 0, 10, 10])]
    gt, dt = _tables(gts, dets, n_img=2)
    r = tide_errors(gt, dt, 1)
    base = (51 + 50 * 2 / 3) / 101  # T F T
    requeued = 2 / 3  # F T T: P [0, .5, 2/3], envelope 2/3 at every recall point
    assert r.ap == pytest.approx(base)
    assert r.special["FalseNeg"] == pytest.approx(requeued - base) and requeued < base
    assert r.counts["Miss"] == 0 and not r.gt_missed.any()
    assert r.dap["Dupe"] == 0.0 and r.counts["Dupe"] == 0
    assert r.dap["Bkg"] == pytest.approx(1 - base)
    if importlib.util.find_spec("tidecv") is not None:
        case = (2, 1, [(g[0], g[1], g[2], False) for g in gts], dets)
        _close(r, run_tidecv(*case))


def _read_txt_case(gt_dir: Path, dt_dir: Path, xywh: bool):
    """Per-image txt fixtures (``class [difficult] box`` / ``class conf box``) as a generic case;
    difficult objects become ignore regions on both sides."""
    names: dict = {}
    stems = sorted(p.stem for p in gt_dir.glob("*.txt"))
    gts, dets = [], []

    def box(v):
        v = [float(x) for x in v]
        return v if xywh else [v[0], v[1], v[2] - v[0], v[3] - v[1]]

    for i, stem in enumerate(stems):
        for ln in (gt_dir / f"{stem}.txt").read_text().split("\n"):
            t = ln.split()
            if t:
                diff = t[-1] == "difficult"
                gts.append((i, names.setdefault(t[0], len(names)), box(t[1:5]), diff))
        f = dt_dir / f"{stem}.txt"
        for ln in (f.read_text().split("\n") if f.exists() else []):
            t = ln.split()
            if t:
                dets.append((i, names.setdefault(t[0], len(names)), float(t[1]), box(t[2:6])))
    return len(stems), len(names), gts, dets


TXT_FIXTURES = [("Cartucho_mAP/input/ground-truth", "Cartucho_mAP/input/detection-results", False),
                ("Object-Detection-Metrics/groundtruths", "Object-Detection-Metrics/detections", True)]


@pytest.mark.real
@pytest.mark.parametrize("gt_rel,dt_rel,xywh", TXT_FIXTURES, ids=["cartucho", "object-detection-metrics"])
def test_same_as_tidecv_on_evaldata_txt(gt_rel, dt_rel, xywh):
    if not EVALDATA.is_dir():
        pytest.skip("../shared/evaldata is absent")
    pytest.importorskip("tidecv", reason="tidecv (test-only dependency) is not installed")
    case = _read_txt_case(EVALDATA / gt_rel, EVALDATA / dt_rel, xywh)
    gt, dt = case_tables(*case)
    _close(tide_errors(gt, dt, case[1]), run_tidecv(*case))
