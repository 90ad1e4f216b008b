"""detkit stats: exact counts on a generated dataset (labelled, unlabelled, empty-label images),
box-size distributions against values computed here from what was written, imbalance warnings,
plots, JSON and the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from detkit.cli import main
from detkit.data.datafiles import load_data_config
from detkit.data.stats import QUANTILES, compute_stats, imbalance_warnings
from detkit.errors import DataError

NAMES = ["car", "person", "dog"]


def _write_image(path: Path, w: int, h: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.zeros((h, w, 3), dtype=np.uint8))


def _dataset(root: Path, train, val=(), names=NAMES) -> Path:
    """train/val: lists of (stem, w, h, rows | None | []); None = no label file, [] = empty file."""
    for split, items in (("train", train), ("val", val)):
        for stem, w, h, rows in items:
            img = root / "images" / f"{stem}.png"
            if not img.exists():
                _write_image(img, w, h)
            if rows is not None:
                lab = root / "labels" / f"{stem}.txt"
                lab.parent.mkdir(parents=True, exist_ok=True)
                lab.write_text("".join(f"{c} {x} {y} {bw} {bh}\n" for c, x, y, bw, bh in rows))
        (root / f"{split}.txt").write_text("".join(f"images/{s}.png\n" for s, *_ in items))
    (root / "obj.names").write_text("".join(f"{n}\n" for n in names))
    (root / "obj.data").write_text(f"classes = {len(names)}\ntrain = train.txt\nvalid = val.txt\n"
                                   "names = obj.names\nbackup = backup/\n")
    return root / "obj.data"


def _train_items(rng: np.random.Generator):
    """8 labelled images (car-heavy, 1 rare person, no dog), 2 without label files, 1 empty label file."""
    items = []
    sizes = [(640, 480), (320, 480), (800, 600), (416, 416), (500, 250), (640, 480), (300, 600), (1000, 500)]
    for i, (w, h) in enumerate(sizes):
        n = [5, 3, 4, 2, 6, 1, 4, 2][i]
        rows = [[0, *np.round(rng.uniform(0.3, 0.7, 2), 4), *np.round(rng.uniform(0.05, 0.5, 2), 4)] for _ in range(n)]
        if i == 2:
            rows.append([1, 0.5, 0.5, 0.1, 0.2])
        items.append((f"t{i}", w, h, rows))
    items += [("nolab0", 64, 64, None), ("nolab1", 64, 32, None), ("empty0", 32, 32, [])]
    return items


@pytest.fixture()
def ds(tmp_path):
    rng = np.random.default_rng(0)
    train = _train_items(rng)
    val = [("v0", 200, 100, [[2, 0.5, 0.5, 0.2, 0.4]]), ("t0", 640, 480, None)]  # t0 also in train (5 cars)
    return _dataset(tmp_path / "ds", train, val), train, val


def _expected(items, img_size=(416, 416)):
    """Counts and per-box measures straight from what the test wrote (plain loops)."""
    obj = [0, 0, 0]
    imgs = [0, 0, 0]
    rel_w, rel_h, area, aspect = [], [], [], []
    missing = empty = 0
    for _, w, h, rows in items:
        if rows is None:
            missing += 1
            continue
        if not rows:
            empty += 1
            continue
        seen = set()
        scale = min(img_size[0] / w, img_size[1] / h)
        for c, _x, _y, bw, bh in rows:
            obj[c] += 1
            seen.add(c)
            rel_w.append(bw)
            rel_h.append(bh)
            area.append((bw * w * scale) * (bh * h * scale))
            aspect.append((bw * w) / (bh * h))
        for c in seen:
            imgs[c] += 1
    return obj, imgs, missing, empty, [np.array(v) for v in (rel_w, rel_h, area, aspect)]


def test_exact_counts_and_distributions_train(ds):
    data, train, _ = ds
    st = compute_stats(load_data_config(data), "train", (416, 416))
    obj, imgs, missing, empty, (rw, rh, area, aspect) = _expected(train)
    assert st.images == 11 and st.duplicates == 0
    assert list(st.objects_per_class) == obj == [27, 1, 0]
    assert list(st.images_per_class) == imgs == [8, 1, 0]
    assert (st.missing_label, st.empty_label, st.unreadable) == (missing, empty, 0) == (2, 1, 0)
    assert st.objects == 28 and st.labelled_images == 8
    np.testing.assert_allclose(np.sort(st.rel_w), np.sort(rw))
    np.testing.assert_allclose(np.sort(st.rel_h), np.sort(rh))
    np.testing.assert_allclose(np.sort(st.area_px), np.sort(area))
    np.testing.assert_allclose(np.sort(st.aspect), np.sort(aspect))
    d = st.distributions()["area_px"]
    np.testing.assert_allclose(d.quantiles, np.quantile(area, QUANTILES))
    assert d.mean == pytest.approx(area.mean()) and d.count == 28
    assert sorted(Path(p).name for p in st.missing_examples) == ["nolab0.png", "nolab1.png"]
    assert [Path(p).name for p in st.empty_examples] == ["empty0.png"]
    w = "\n".join(st.warnings)
    assert "class(es) without objects: dog" in w
    assert "class imbalance: 'car' has 27 objects, 'person' 1" in w
    assert "2 image(s) have no label file" in w and "1 image(s) have an empty label file" in w


def test_area_is_letterboxed_at_the_network_size(tmp_path):
    data = _dataset(tmp_path, [("a", 800, 400, [[0, 0.5, 0.5, 0.5, 0.5]])])
    st = compute_stats(load_data_config(data), "train", (320, 256))
    # scale = min(320/800, 256/400) = 0.4 -> 160 x 80 px
    assert st.area_px.tolist() == pytest.approx([160 * 80])
    assert st.aspect.tolist() == pytest.approx([2.0])


def test_val_and_all_splits_count_overlap_once(ds):
    data, train, val = ds
    cfg = load_data_config(data)
    v = compute_stats(cfg, "val")
    assert (v.images, list(v.objects_per_class), v.missing_label) == (2, [5, 0, 1], 0)  # t0: train's labels
    a = compute_stats(cfg, "all")
    assert a.images == 12 and a.overlap == 1  # t0 listed in both, counted once
    assert list(a.objects_per_class) == [27, 1, 1]
    assert any("both train and val" in w for w in a.warnings)


def test_duplicate_list_entries_counted_once(tmp_path):
    data = _dataset(tmp_path, [("a", 64, 64, [[0, 0.5, 0.5, 0.2, 0.2]]), ("b", 64, 64, [[1, 0.5, 0.5, 0.2, 0.2]])])
    (tmp_path / "train.txt").write_text("images/a.png\nimages/b.png\n./images/a.png\n")
    st = compute_stats(load_data_config(data), "train")
    assert (st.images, st.duplicates, list(st.objects_per_class)) == (2, 1, [1, 1, 0])


def test_imbalance_warnings_thresholds():
    assert imbalance_warnings(["a", "b"], [100, 10]) == []  # ratio exactly 10: no warning
    w = imbalance_warnings(["a", "b"], [101, 10])
    assert len(w) == 1 and "ratio 10.1 > 10" in w[0]
    w = imbalance_warnings(["a", "b", "c"], [500, 60, 5])
    assert any("rare class(es) below 1% of all objects: c" in x for x in w) and any("'c' 5" in x for x in w)
    assert imbalance_warnings(["a"], [0]) == ["1 class(es) without objects: a"]


def test_balanced_dataset_has_no_warnings(tmp_path):
    data = _dataset(tmp_path, [(f"i{i}", 64, 48, [[i % 3, 0.5, 0.5, 0.3, 0.3]]) for i in range(9)])
    st = compute_stats(load_data_config(data), "train")
    assert st.warnings == () and list(st.objects_per_class) == [3, 3, 3]


def test_empty_split_is_an_error(tmp_path):
    data = _dataset(tmp_path, [("a", 64, 64, [[0, 0.5, 0.5, 0.2, 0.2]])])
    with pytest.raises(DataError, match="val split lists no images"):
        compute_stats(load_data_config(data), "val")


def test_cli_stats_table_plots_json(ds, tmp_path, capsys):
    data, *_ = ds
    plots, js = tmp_path / "plots", tmp_path / "stats.json"
    assert main(["stats", "--data", str(data), "--plots", str(plots), "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "split train: 11 images, 28 objects, 8 labelled, 2 without a label file, 1 with an empty label file" in out
    assert any(ln.split() == ["0", "car", "27", "96.4%", "8"] for ln in out.splitlines())
    assert "warning: class imbalance" in out
    for name in ("classes.png", "box_wh.png", "box_area.png", "box_aspect.png"):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = cv2.imread(str(plots / name))
        assert img is not None and img.shape[0] > 100
    doc = json.loads(js.read_text())
    assert doc["images"] == 11 and doc["objects"] == 28
    assert [c["objects"] for c in doc["classes"]] == [27, 1, 0]
    assert doc["images_missing_label_file"] == 2 and doc["images_empty_label_file"] == 1
    assert doc["box"]["area_px"]["count"] == 28
    assert not list(tmp_path.glob("*.tmp")) and not list(plots.glob(".*"))


def test_cli_stats_errors(ds, tmp_path, capsys):
    data, *_ = ds
    assert main(["stats", "--data", str(tmp_path / "nope.data")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("detkit: error: ") and "nope.data" in err and err.count("\n") == 1
    assert main(["stats", "--data", str(data), "--img-size", "100"]) == 1
    assert "--img-size" in capsys.readouterr().err
    assert main(["stats", "--data", str(data), "--json", str(tmp_path / "missing" / "s.json")]) == 1
    assert "output folder does not exist" in capsys.readouterr().err
    (data.parent / "labels" / "t3.txt").write_text("0 0.5 0.5 0.1\n")
    assert main(["stats", "--data", str(data)]) == 1
    err = capsys.readouterr().err
    assert "t3.txt:1" in err and "5 fields" in err and err.count("\n") == 1
