"""The darknet model zoo (``../shared/darknet_zoo``, 53 detection cfgs): every cfg detkit supports
builds, round-trips its weights byte for byte and agrees with OpenCV DNN's darknet importer (fixed-seed
random weights written by detkit, one small input) within max(1e-4, 4 x detkit's own float32-vs-float64
difference); every other cfg is refused with its documented reason.

The default real tier runs a set of cheap cfgs that covers every layer type and head; the rest are
``slow`` (``-m slow``). ``tools/zoo_table.py`` runs all of them against OpenCV and darknet itself and
writes docs/zoo.md. Set ``DETKIT_DARKNET_DUMP`` to a built ``tools/zoo_darknet_dump`` to also compare
against darknet here.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

import zoo_reference as zr
from detkit.darknet.cfg import read_cfg_text
from detkit.darknet.specs import parse_network
from detkit.errors import CfgError

pytestmark = pytest.mark.real

SHARED = Path(__file__).resolve().parents[2] / "shared"
SIZE = 64

#: cfgs refused on purpose, with the words of the reason (docs/zoo.md)
REFUSED = {
    "Gaussian_yolov3_BDD.cfg": "[Gaussian_yolo]",
    "cspx-p7-mish.cfg": "mask index 16 out of range for 16 anchors",
    "tiny-yolo_xnor.cfg": "xnor=1",
    "yolov3-tiny_xnor.cfg": "xnor=1",
    "yolo9000.cfg": "tree=",
    "yolov3-tiny_occlusion_track.cfg": "[crnn]",
    "yolov4-tiny_contrastive.cfg": "[contrastive]",
}
#: OpenCV cannot load these (or does not implement a key they use): darknet is the reference
DARKNET_ONLY = {
    "cspx-p7-mish_hp.cfg": "OpenCV asserts on its 31-value anchors= (a missing comma)",
    "yolov4-sam-mish-csp-reorg-bfm.cfg": "OpenCV has no [reorg3d]",
    "resnet152_trident.cfg": "OpenCV's importer does not share weights (share_index)",
}
#: cheap cfgs that together cover every zoo layer type and head (default real tier, ~1 min)
DEFAULT_TIER = {
    "yolov3-tiny.cfg", "yolov3-tiny-prn.cfg", "yolov4-tiny.cfg", "yolov7-tiny.cfg", "yolov2-tiny.cfg", "tiny-yolo-voc.cfg", "enet-coco.cfg", "yolov4-csp-s-mish.cfg",
    "yolo-voc.cfg",
}


def _all_cfgs() -> list[str]:
    if not (SHARED / "darknet_zoo" / "index.json").is_file():
        return []
    return zr.detection_cfgs(SHARED)


CFGS = _all_cfgs()


def _param(name: str):
    marks = [] if name in DEFAULT_TIER else [pytest.mark.slow]
    return pytest.param(name, marks=marks, id=name)


@pytest.fixture
def zoo(shared) -> Path:
    folder = zr.zoo_dir(shared)
    if not folder.is_dir():
        pytest.skip(f"{folder} not found (the zoo tier needs ../shared/darknet_zoo)")
    return folder


def test_zoo_index_has_53_detection_cfgs(zoo):
    assert len(zr.detection_cfgs(zoo.parent)) == 53
    assert set(REFUSED) | set(DARKNET_ONLY) <= set(zr.detection_cfgs(zoo.parent))


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_cfgs_name_the_line_and_the_reason(zoo, name):
    with pytest.raises(CfgError) as info:
        parse_network(read_cfg_text(zoo / name), zoo / name)
    msg = str(info.value)
    assert REFUSED[name] in msg and f"{name}:" in msg


@pytest.mark.parametrize("name", [_param(n) for n in CFGS if n not in REFUSED and n not in DARKNET_ONLY])
def test_zoo_cfg_matches_opencv(zoo, name, tmp_path, caplog):
    pytest.importorskip("cv2")
    caplog.set_level(logging.ERROR)
    cmp = zr.compare_opencv(zoo / name, SIZE, tmp_path)
    assert not cmp.error, cmp.error
    assert cmp.ok, (f"{name}: max difference {cmp.max_diff:.3g} > tolerance {cmp.tolerance:.3g} "
                    f"(float32 noise {cmp.noise:.3g}; per head {cmp.per_head})")
    _weights_round_trip(cmp, tmp_path, name)


def _weights_round_trip(cmp: zr.Comparison, tmp_path: Path, name: str) -> None:
    import detkit

    cfg_copy = tmp_path / name
    weights = tmp_path / (cfg_copy.stem + ".weights")
    model = detkit.build_model(os.fspath(cfg_copy))
    detkit.load_darknet_weights(model, weights)
    again = tmp_path / "again.weights"
    detkit.save_darknet_weights(model, again)
    assert again.read_bytes() == weights.read_bytes()


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow], id=n) for n in sorted(DARKNET_ONLY)])
def test_darknet_only_cfgs_match_darknet(zoo, name, tmp_path, caplog):
    binary = os.environ.get("DETKIT_DARKNET_DUMP")
    if not binary or not Path(binary).is_file():
        pytest.skip("DETKIT_DARKNET_DUMP (a built tools/zoo_darknet_dump) not set; tools/zoo_table.py runs "
                    "this comparison and its results are in docs/zoo.md")
    caplog.set_level(logging.ERROR)
    cmp = zr.compare_darknet(Path(binary), zoo / name, 128, tmp_path)
    assert not cmp.error, cmp.error
    assert cmp.ok, f"{name}: max difference {cmp.max_diff:.3g} > tolerance {cmp.tolerance:.3g}"
