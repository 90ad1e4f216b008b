"""YoloDataset, collate_fn, make_loader (reproducibility, resume, workers), class balance, weighted sampler."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detkit.boxes import letterbox_params
from detkit.data.dataset import EpochSampler, YoloDataset, collate_fn, make_loader, sample_rng, set_loader_epoch
from detkit.data.sampling import (ClassBalance, class_balance, class_weighted_sampler, format_class_balance,
                                  image_weights, rare_classes)
from detkit.data.transforms import build_eval_transforms, build_train_transforms
from detkit.errors import AnnotationError

SIZE = (64, 64)


def _write(root: Path, name: str, wh: tuple[int, int], boxes: list[tuple[int, int, int, int, int]] | None,
           label_text: str | None = None) -> Path:
    """Black image with a white filled rectangle per box (class, x1, y1, x2, y2 pixels); YOLO label file."""
    w, h = wh
    img = np.zeros((h, w, 3), np.uint8)
    lines = []
    for c, x1, y1, x2, y2 in boxes or []:
        img[y1:y2, x1:x2] = 255
        lines.append(f"{c} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}")
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    p = root / "images" / f"{name}.png"
    Image.fromarray(img).save(p)
    if label_text is not None:
        (root / "labels" / f"{name}.txt").write_text(label_text)
    elif boxes is not None:
        (root / "labels" / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return p


@pytest.fixture()
def data(tmp_path: Path) -> list[Path]:
    paths = [
        _write(tmp_path, "a", (120, 80), [(0, 10, 10, 40, 30), (1, 60, 40, 100, 70)]),
        _write(tmp_path, "b", (80, 120), [(1, 20, 30, 60, 90)]),
        _write(tmp_path, "empty", (100, 100), [], label_text=""),   # empty label file
        _write(tmp_path, "nolabel", (90, 60), None),                 # no label file at all
        _write(tmp_path, "c", (64, 64), [(0, 5, 5, 25, 25), (0, 30, 30, 60, 50), (2, 40, 2, 60, 20)]),
        _write(tmp_path, "d", (150, 100), [(1, 70, 20, 120, 80)]),
    ]
    return paths


def _white_extent(image: torch.Tensor) -> np.ndarray:
    m = (image.numpy() > 0.5).all(axis=0)
    ys, xs = np.nonzero(m)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def test_item_eval_matches_letterbox_of_labels(data):
    ds = YoloDataset(data, 3, SIZE, build_eval_transforms(SIZE))
    image, targets, info = ds[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert targets.shape == (2, 6) and targets.dtype == torch.float32
    scale, px, py = letterbox_params(120, 80, 64, 64)
    assert info["orig_size"] == (120, 80) and info["scale"] == scale and info["pad"] == (px, py)
    assert info["path"] == str(data[0])
    # expected targets computed by hand from the pixel boxes
    exp = []
    for c, x1, y1, x2, y2 in [(0, 10, 10, 40, 30), (1, 60, 40, 100, 70)]:
        X1, Y1, X2, Y2 = x1 * scale + px, y1 * scale + py, x2 * scale + px, y2 * scale + py
        exp.append([0, c, (X1 + X2) / 128, (Y1 + Y2) / 128, (X2 - X1) / 64, (Y2 - Y1) / 64])
    np.testing.assert_allclose(targets.numpy(), np.array(exp), atol=1e-4)


def test_empty_and_missing_labels_give_no_targets(data):
    ds = YoloDataset(data, 3, SIZE, build_train_transforms(SIZE))
    for i in (2, 3):
        image, targets, _ = ds[i]
        assert image.shape == (3, 64, 64) and targets.shape == (0, 6)


def test_bad_label_raises_with_file_and_line(tmp_path):
    p = _write(tmp_path, "bad", (50, 50), [], label_text="0 0.5 0.5 0.2 0.2\n3 0.5 0.5 0.2 0.2\n")
    with pytest.raises(AnnotationError) as exc:
        YoloDataset([p], 2, SIZE, build_eval_transforms(SIZE))
    assert f"{tmp_path / 'labels' / 'bad.txt'}:2" in str(exc.value)


def test_collate_fills_batch_index_with_empty_images(data):
    ds = YoloDataset(data, 3, SIZE, build_eval_transforms(SIZE))
    batch = [ds[i] for i in (2, 0, 3, 4)]   # empty, 2 objects, no label file, 3 objects
    images, targets, infos = collate_fn(batch)
    assert images.shape == (4, 3, 64, 64)
    assert targets.shape == (5, 6)
    assert targets[:, 0].tolist() == [1, 1, 3, 3, 3]
    torch.testing.assert_close(targets[:2, 1:], batch[1][1][:, 1:])
    assert batch[1][1][:, 0].tolist() == [0, 0]   # collate did not modify the samples
    assert [i["index"] for i in infos] == [2, 0, 3, 4]
    images, targets, _ = collate_fn([ds[2], ds[3]])
    assert targets.shape == (0, 6)


def test_train_targets_follow_pixels(data):
    ds = YoloDataset(data[1:2], 3, SIZE, build_train_transforms(SIZE, hsv=(0, 1, 1)), seed=7)
    for epoch in range(8):
        image, targets, _ = ds[(epoch, 0)]
        if len(targets) == 0:
            continue
        cx, cy, w, h = targets[0, 2:].tolist()
        box = np.array([(cx - w / 2) * 64, (cy - h / 2) * 64, (cx + w / 2) * 64, (cy + h / 2) * 64])
        np.testing.assert_allclose(box, _white_extent(image), atol=2.0)


def test_same_seed_epoch_index_identical_and_epoch_changes(data):
    t = build_train_transforms(SIZE)
    ds = YoloDataset(data, 3, SIZE, t, seed=11)
    a = ds[(3, 4)]
    _ = ds[(0, 1)]   # other samples in between must not matter
    b = ds[(3, 4)]
    # a fresh dataset (as built by a resumed run) gives the same sample
    c = YoloDataset(data, 3, SIZE, build_train_transforms(SIZE), seed=11)[(3, 4)]
    for other in (b, c):
        torch.testing.assert_close(a[0], other[0], rtol=0, atol=0)
        torch.testing.assert_close(a[1], other[1], rtol=0, atol=0)
    d = ds[(4, 4)]
    assert not torch.equal(a[0], d[0])
    e = YoloDataset(data, 3, SIZE, build_train_transforms(SIZE), seed=12)[(3, 4)]
    assert not torch.equal(a[0], e[0])


def test_sample_rng_independent_streams():
    g1, p1 = sample_rng(0, 1, 2)
    g2, p2 = sample_rng(0, 1, 2)
    assert g1.random() == g2.random() and p1.random() == p2.random()
    assert sample_rng(0, 1, 2)[0].random() != sample_rng(0, 2, 1)[0].random()


def _epoch_batches(loader):
    return [(imgs.clone(), t.clone(), [i["index"] for i in info]) for imgs, t, info in loader]


def _assert_same(run_a, run_b):
    assert len(run_a) == len(run_b)
    for (ia, ta, xa), (ib, tb, xb) in zip(run_a, run_b):
        assert xa == xb
        torch.testing.assert_close(ia, ib, rtol=0, atol=0)
        torch.testing.assert_close(ta, tb, rtol=0, atol=0)


def test_loader_resume_and_workers_reproduce(data):
    ds = YoloDataset(data, 3, SIZE, build_train_transforms(SIZE), seed=5)
    loader = make_loader(ds, batch_size=4, shuffle=True, workers=0, seed=9)
    runs = []
    for epoch in range(2):
        set_loader_epoch(loader, epoch)
        runs.append(_epoch_batches(loader))
    assert sorted(sum((b[2] for b in runs[0]), [])) == list(range(6))
    assert [b[2] for b in runs[0]] != [b[2] for b in runs[1]]  # reshuffled
    # resumed run: a new dataset + loader that starts at epoch 1, with 2 persistent workers
    ds2 = YoloDataset(data, 3, SIZE, build_train_transforms(SIZE), seed=5)
    resumed = make_loader(ds2, batch_size=4, shuffle=True, workers=2, seed=9, epoch=1)
    _assert_same(runs[1], _epoch_batches(resumed))
    set_loader_epoch(resumed, 0)   # persistent workers follow the epoch change
    _assert_same(runs[0], _epoch_batches(resumed))
    # mid-epoch resume: skip the first batch of epoch 1
    set_loader_epoch(resumed, 1, skip_batches=1)
    _assert_same(runs[1][1:], _epoch_batches(resumed))


def test_epoch_sampler_shards_cover_everything():
    shards = [list(EpochSampler(10, shuffle=True, seed=1, epoch=2, rank=r, num_replicas=3)) for r in range(3)]
    assert all(len(s) == 4 for s in shards)
    assert all(e == 2 for s in shards for e, _ in s)
    seen = [i for s in shards for _, i in s]
    assert set(seen) == set(range(10)) and len(seen) == 12
    assert len(EpochSampler(10, True, 1, rank=0, num_replicas=3)) == 4


def test_epoch_sampler_with_distributed_and_weighted_bases():
    from torch.utils.data import DistributedSampler
    items = list(range(10))

    def shards(epoch, base_for_rank, kw):
        out = []
        for r in range(2):
            s = EpochSampler(10, shuffle=True, seed=3, base=base_for_rank(r), **kw(r))
            s.set_epoch(epoch)   # forwarded to the base
            out.append([i for e, i in s])
        return out

    dist = lambda r: DistributedSampler(items, num_replicas=2, rank=r, shuffle=True, seed=3)  # noqa: E731
    e0, e1 = shards(0, dist, lambda r: {}), shards(1, dist, lambda r: {})
    assert sorted(e0[0] + e0[1]) == items and sorted(e1[0] + e1[1]) == items
    assert e0 != e1
    # a weighted sampler's draws are split between ranks (each rank sees every other draw)
    labels = [np.array([[i % 2, .5, .5, .1, .1]]) for i in range(10)]
    full = [i for _, i in EpochSampler(10, True, 3, epoch=1, base=class_weighted_sampler(labels, 2, 5))]
    w = shards(1, lambda r: class_weighted_sampler(labels, 2, 5), lambda r: {"rank": r, "num_replicas": 2})
    assert w[0] == full[0::2] and w[1] == full[1::2]


def test_mosaic_boxes_on_pixels(data):
    ds = YoloDataset(data, 3, SIZE, build_train_transforms(SIZE, hsv=(0, 1, 1), jitter=0.0), mosaic=True, seed=3)
    n_boxes = 0
    for epoch in range(4):
        for i in range(len(ds)):
            image, targets, info = ds[(epoch, i)]
            assert image.shape == (3, 64, 64) and info["mosaic"] and info["orig_size"] == (128, 128)
            white = (image.numpy() > 0.5).all(axis=0)
            for cx, cy, w, h in targets[:, 2:].tolist():
                x1, y1 = int(round((cx - w / 2) * 64)), int(round((cy - h / 2) * 64))
                x2, y2 = int(round((cx + w / 2) * 64)), int(round((cy + h / 2) * 64))
                inner = white[y1 + 1:y2 - 1, x1 + 1:x2 - 1]
                if inner.size:
                    assert inner.mean() > 0.9
                n_boxes += 1
    assert n_boxes > 20
    a, b = ds[(1, 2)], ds[(1, 2)]
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)


# ---- class balance and sampler ---------------------------------------------------------------

LABELS = [np.array([[0, .5, .5, .1, .1], [0, .2, .2, .1, .1], [1, .3, .3, .1, .1]]),
          np.zeros((0, 5)),
          np.array([[0, .5, .5, .1, .1]]),
          np.array([[2, .5, .5, .1, .1]])]


def test_class_balance_counts(data):
    b = class_balance(LABELS, 4)
    assert b == ClassBalance(objects=(3, 1, 1, 0), images=(2, 1, 1, 0), num_images=4, empty_images=1)
    assert b.total_objects == 5
    ds = YoloDataset(data, 3, SIZE, build_eval_transforms(SIZE))
    from_ds = class_balance(ds, 3)
    from_paths = class_balance(ds.label_paths, 3)
    assert from_ds == from_paths == ClassBalance((3, 3, 1), (2, 3, 1), 6, 2)


def test_rare_class_warning():
    # dog: 4 < 10 instances; bird: 30 instances but 30/3534 = 0.85% < 1%; cat 14%, car 85%
    b = ClassBalance(objects=(500, 4, 30, 3000), images=(100, 4, 30, 800), num_images=900, empty_images=5)
    assert rare_classes(b) == [1, 2]
    table, warnings = format_class_balance(b, ["cat", "dog", "bird", "car"])
    assert "dog" in table and "3534" in table and "(5 without objects)" in table
    assert len(warnings) == 2 and "'dog'" in warnings[0] and "4 objects" in warnings[0]
    assert "'bird'" in warnings[1]
    b2 = ClassBalance(objects=(5000, 90, 3000), images=(1, 1, 1), num_images=3, empty_images=0)
    assert rare_classes(b2) == []      # 90 instances = 1.1% of objects: not rare
    assert rare_classes(b2, min_fraction=0.02) == [1]
    assert rare_classes(b2, min_count=100) == [1]
    assert rare_classes(ClassBalance((50, 50), (1, 1), 1, 0)) == []


def test_image_weights_inverse_frequency():
    w = image_weights(LABELS, 4)
    # counts 3, 1, 1 over 3 present classes, 5 objects: class weights 5/9, 5/3, 5/3
    raw = np.array([5 / 3, 5 / 9, 5 / 9, 5 / 3])   # image 0 max(0, 1); empty -> min; image 2 class 0; image 3 class 2
    np.testing.assert_allclose(w, raw / raw.mean())
    np.testing.assert_allclose(image_weights(LABELS, 4, power=0.0), np.ones(4))


def test_class_weighted_sampler_seeded_and_favours_rare():
    labels = [np.array([[0, .5, .5, .1, .1]])] * 18 + [np.array([[1, .5, .5, .1, .1]])] * 2
    s = class_weighted_sampler(labels, 2, seed=4, num_samples=2000)
    first = list(s)
    s.set_epoch(0)
    assert list(s) == first
    s.set_epoch(1)
    second = list(s)
    assert second != first
    s2 = class_weighted_sampler(labels, 2, seed=4, num_samples=2000)
    s2.set_epoch(1)
    assert list(s2) == second
    rare_share = np.isin(np.array(first), [18, 19]).mean()
    assert 0.4 < rare_share < 0.6    # balanced: half the draws hit the 2 rare images (10% uniform)
    assert len(s) == 2000


def test_loader_with_weighted_sampler_reproducible(data):
    ds = YoloDataset(data, 3, SIZE, build_eval_transforms(SIZE))
    runs = []
    for _ in range(2):
        loader = make_loader(ds, 3, shuffle=False, workers=0, seed=1, epoch=2,
                             sampler=class_weighted_sampler(ds, 3, seed=8, num_samples=9))
        runs.append(_epoch_batches(loader))
    _assert_same(runs[0], runs[1])
    assert sum(len(b[2]) for b in runs[0]) == 9
