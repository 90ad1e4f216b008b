"""Target assignment on hand-made cases: which head, anchor and cell learns each ground truth."""
from __future__ import annotations

import torch

from detkit.yolo.targets import HeadGeometry, assign_targets, shape_iou

# 6 anchors, two heads of 3 (like yolov3-tiny): head 0 = coarse (mask 3,4,5), head 1 = fine (0,1,2)
ANCHORS = torch.tensor([[4, 4], [8, 8], [12, 12], [20, 20], [30, 30], [50, 50]], dtype=torch.float32)


def _heads(in_w=64, in_h=64):
    coarse = HeadGeometry(mask=torch.tensor([3, 4, 5]), anchors=ANCHORS[[3, 4, 5]],
                          grid_hw=(in_h // 32, in_w // 32), stride_xy=(32.0, 32.0))
    fine = HeadGeometry(mask=torch.tensor([0, 1, 2]), anchors=ANCHORS[[0, 1, 2]],
                        grid_hw=(in_h // 16, in_w // 16), stride_xy=(16.0, 16.0))
    return [coarse, fine]


def test_shape_iou_by_hand():
    ious = shape_iou(torch.tensor([[10.0, 10.0]]), torch.tensor([[8.0, 8.0], [12.0, 12.0], [10.0, 5.0]]))
    assert torch.allclose(ious, torch.tensor([[64 / 100, 100 / 144, 50 / 100]]))


def test_best_anchor_head_and_cell():
    # box 10x10 px centred at (40, 20) in a 64x64 input: best anchor 12x12 (IoU .69 > .64 for 8x8)
    # -> fine head (mask 0,1,2), anchor 2 within it, cell (x=40//16=2, y=20//16=1)
    # box 40x40 px centred at (10, 50) in image 1 -> coarse head (see below)
    t = torch.tensor([[0, 1, 40 / 64, 20 / 64, 10 / 64, 10 / 64],
                      [1, 0, 10 / 64, 50 / 64, 40 / 64, 40 / 64]])
    coarse, fine = assign_targets(t, _heads(), ANCHORS, (64, 64))
    assert fine.count == 1 and coarse.count == 1
    assert (fine.b.item(), fine.a.item(), fine.gy.item(), fine.gx.item(), fine.cls.item()) == (0, 2, 1, 2, 1)
    assert torch.allclose(fine.cell_xy, torch.tensor([[40 / 16 - 2, 20 / 16 - 1]]))
    assert torch.allclose(fine.anchor_wh, torch.tensor([[12.0, 12.0]]))
    assert torch.allclose(fine.box, torch.tensor([[40.0, 20.0, 10.0, 10.0]]), atol=1e-5)
    # 40x40: IoU with 30x30 = 900/1600 = .5625, with 50x50 = 1600/2500 = .64 -> anchor 5 = index 2 on coarse
    assert (coarse.b.item(), coarse.a.item(), coarse.gy.item(), coarse.gx.item()) == (1, 2, 1, 0)
    assert coarse.gt_index.tolist() == [1] and fine.gt_index.tolist() == [0]


def test_extra_anchors_above_iou_thresh():
    t = torch.tensor([[0, 0, 0.5, 0.5, 10 / 64, 10 / 64]])
    # shape IoUs: 4x4 .16, 8x8 .64, 12x12 .694, 20x20 .25 -> with thresh .6: anchors 1 and 2
    coarse, fine = assign_targets(t, _heads(), ANCHORS, (64, 64), iou_thresh=0.6)
    assert coarse.count == 0
    assert sorted(fine.a.tolist()) == [1, 2]
    coarse, fine = assign_targets(t, _heads(), ANCHORS, (64, 64), iou_thresh=None)
    assert fine.a.tolist() == [2]


def test_anchor_in_no_mask_is_learnt_nowhere():
    # like yolov3-tiny's official weights (masks 1,2,3 and 3,4,5): anchor 0 belongs to no head
    heads = [HeadGeometry(mask=torch.tensor([3, 4, 5]), anchors=ANCHORS[[3, 4, 5]], grid_hw=(2, 2), stride_xy=(32.0, 32.0)),
             HeadGeometry(mask=torch.tensor([1, 2, 3]), anchors=ANCHORS[[1, 2, 3]], grid_hw=(4, 4), stride_xy=(16.0, 16.0))]
    t = torch.tensor([[0, 0, 0.5, 0.5, 4 / 64, 4 / 64],   # best anchor 0 -> nowhere
                      [0, 0, 0.5, 0.5, 20 / 64, 20 / 64]])  # best anchor 3 -> both heads
    coarse, fine = assign_targets(t, heads, ANCHORS, (64, 64))
    assert coarse.gt_index.tolist() == [1] and coarse.a.tolist() == [0]
    assert fine.gt_index.tolist() == [1] and fine.a.tolist() == [2]


def test_four_anchors_per_head_and_non_square_input():
    # 8 anchors, 2 heads of 4; input 96 wide x 64 high; strides measured (32, 32) and (16, 16)
    anchors = torch.tensor([[3, 3], [6, 6], [9, 9], [12, 12], [18, 18], [24, 24], [36, 36], [60, 60]],
                           dtype=torch.float32)
    heads = [HeadGeometry(mask=torch.tensor([4, 5, 6, 7]), anchors=anchors[4:], grid_hw=(2, 3), stride_xy=(32.0, 32.0)),
             HeadGeometry(mask=torch.tensor([0, 1, 2, 3]), anchors=anchors[:4], grid_hw=(4, 6), stride_xy=(16.0, 16.0))]
    # box 34x36 px at (90, 63): best anchor 36x36 (index 6 -> coarse, a=2), cell x=90//32=2, y=63//32=1
    t = torch.tensor([[0, 3, 90 / 96, 63 / 64, 34 / 96, 36 / 64]])
    coarse, fine = assign_targets(t, heads, anchors, (96, 64))
    assert fine.count == 0
    assert (coarse.a.item(), coarse.gy.item(), coarse.gx.item(), coarse.cls.item()) == (2, 1, 2, 3)


def test_centre_on_the_far_edge_is_clamped_into_the_grid():
    t = torch.tensor([[0, 0, 1.0, 1.0, 10 / 64, 10 / 64]])
    _, fine = assign_targets(t, _heads(), ANCHORS, (64, 64))
    assert (fine.gy.item(), fine.gx.item()) == (3, 3)


def test_no_targets():
    out = assign_targets(torch.zeros((0, 6)), _heads(), ANCHORS, (64, 64))
    assert [h.count for h in out] == [0, 0]


def test_vectorised_matches_loop():
    g = torch.Generator().manual_seed(0)
    k = 200
    t = torch.cat([torch.randint(0, 4, (k, 1), generator=g).float(), torch.randint(0, 3, (k, 1), generator=g).float(),
                   torch.rand(k, 2, generator=g), torch.rand(k, 2, generator=g) * 0.9 + 0.02], dim=1)
    heads = _heads()
    out = assign_targets(t, heads, ANCHORS, (64, 64))
    got = set()
    for hi, h in enumerate(out):
        for j in range(h.count):
            got.add((hi, int(h.gt_index[j]), int(h.a[j]), int(h.gy[j]), int(h.gx[j])))
    want = set()
    for i in range(k):
        w, hh = float(t[i, 4]) * 64, float(t[i, 5]) * 64
        best, best_iou = -1, -1.0
        for j, (aw, ah) in enumerate(ANCHORS.tolist()):
            inter = min(w, aw) * min(hh, ah)
            iou = inter / (w * hh + aw * ah - inter)
            if iou > best_iou:
                best, best_iou = j, iou
        for hi, head in enumerate(heads):
            mask = head.mask.tolist()
            if best in mask:
                gx = min(int(float(t[i, 2]) * 64 / head.stride_xy[0]), head.grid_hw[1] - 1)
                gy = min(int(float(t[i, 3]) * 64 / head.stride_xy[1]), head.grid_hw[0] - 1)
                want.add((hi, i, mask.index(best), gy, gx))
    assert got == want
