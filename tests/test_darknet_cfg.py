"""cfg parser, typed specs, error paths, class-count propagation and the in-place cfg writer."""
from __future__ import annotations

import logging
import re

import pytest

from detkit.darknet.cfg import parse_cfg, resolve_cfg
from detkit.darknet.spec_types import ConvSpec, MaxPoolSpec, RouteSpec, YoloSpec
from detkit.darknet.cfg_edit import apply_edits, class_count_edits, set_num_classes
from detkit.darknet.shapes import infer_shapes
from detkit.darknet.specs import load_network_spec, parse_network
from detkit.errors import CfgError

HEAD = "[net]\nwidth=64\nheight=64\nchannels=3\n"


def small_cfg(classes: int = 2, filters: int | None = None) -> str:
    """A two-conv, one-head network with every line number known (head conv filters at line 15)."""
    f = (classes + 5) * 3 if filters is None else filters
    return (
        HEAD                                   # lines 1-4
        + "[convolutional]\n"                  # 5
        "batch_normalize=1\nfilters=8\nsize=3\nstride=2\npad=1\nactivation=leaky\n"  # 6-11
        "\n"                                   # 12
        "[convolutional]\n"                    # 13
        "size=1\n"                             # 14
        f"filters={f}\n"                       # 15
        "activation=linear\n"                  # 16
        "\n"                                   # 17
        "[yolo]\n"                             # 18
        "mask=0,1,2\n"                         # 19
        "anchors=10,14, 23,27, 37,58\n"        # 20
        f"classes={classes}\n"                 # 21
        "num=3\n"                              # 22
    )


# -- parser -------------------------------------------------------------------------------
def test_sections_keep_line_numbers_and_order():
    sections = parse_cfg(small_cfg(), "a.cfg")
    assert [s.type for s in sections] == ["net", "convolutional", "convolutional", "yolo"]
    assert [s.line for s in sections] == [1, 5, 13, 18]
    assert sections[2].get("filters").line == 15
    assert sections[2].get("filters").value == "21"
    assert sections[3].get("anchors").value == "10,14, 23,27, 37,58"
    assert sections[0].source == "a.cfg"


def test_comments_spaces_crlf_inline_and_network_alias():
    text = (
        "\ufeff[network]   # the net\r\n"
        "; a semicolon comment\r\n"
        "  # indented comment\r\n"
        "width = 96 ; inline\r\n"
        "height= 64#inline\r\n"
        "channels =3\r\n"
        "\r\n"
        "[convolutional]\r\n"
        "filters = 4   # four\r\n"
        "size=3\r\n"
        "activation = leaky\r\n"
    )
    sections = parse_cfg(text)
    assert sections[0].type == "net"
    assert sections[0].get("width").value == "96"
    assert sections[0].get("height").value == "64"
    assert sections[0].get("width").line == 4
    spec = parse_network(text)
    assert (spec.net.width, spec.net.height, spec.net.channels) == (96, 64, 3)
    conv = spec.layers[0]
    assert isinstance(conv, ConvSpec)
    assert (conv.filters, conv.size, conv.activation, conv.padding) == (4, 3, "leaky", 0)


def test_darknet_defaults():
    spec = parse_network(HEAD + "[convolutional]\nfilters=4\n[maxpool]\nstride=2\n[maxpool]\nsize=3\n")
    conv, mp1, mp2 = spec.layers
    assert conv.activation == "logistic"  # darknet default when activation= is absent
    assert (conv.size, conv.stride, conv.padding, conv.batch_normalize) == (1, 1, 0, False)
    assert (mp1.size, mp1.stride, mp1.padding) == (2, 2, 1)  # size defaults to stride, padding size-1
    assert (mp2.size, mp2.stride, mp2.padding) == (3, 1, 2)


def test_pad_overrides_padding_and_explicit_padding():
    spec = parse_network(HEAD + "[convolutional]\nfilters=4\nsize=5\npad=1\npadding=7\n"
                         "[convolutional]\nfilters=4\nsize=3\npadding=2\n")
    assert spec.layers[0].padding == 2  # pad=1 -> size // 2, as in darknet
    assert spec.layers[1].padding == 2
    assert infer_shapes(spec)[1] == (4, 66, 66)


def test_yolov3_tiny_specs(repo):
    text, source = resolve_cfg(repo / "cfg" / "yolov3-tiny.cfg")
    spec = parse_network(text, source)
    assert len(spec.layers) == 24
    assert spec.net.width == 416 and spec.net.batch == 1 and spec.net.steps == (400000, 450000)
    assert spec.net.scales == (0.1, 0.1) and spec.net.policy == "steps" and spec.net.burn_in == 1000
    types = [layer.type for layer in spec.layers]
    assert types.count("convolutional") == 13 and types.count("yolo") == 2
    mp = spec.layers[11]
    assert isinstance(mp, MaxPoolSpec) and (mp.size, mp.stride, mp.padding) == (2, 1, 1)
    route = spec.layers[20]
    assert isinstance(route, RouteSpec) and route.layers == (19, 8)  # -1, 8
    head = spec.layers[16]
    assert isinstance(head, YoloSpec)
    assert head.mask == (3, 4, 5) and head.mask_anchors == ((81, 82), (135, 169), (344, 319))
    assert head.ignore_thresh == 0.7 and head.scale_x_y == 1.0
    shapes = infer_shapes(spec)
    assert shapes[11] == (512, 13, 13)  # size=2 stride=1 keeps 13x13
    assert shapes[15] == (255, 13, 13) and shapes[22] == (255, 26, 26)


def test_yolov4_tiny_route_groups(repo):
    spec = parse_network(*resolve_cfg(repo / "cfg" / "yolov4-tiny.cfg"))
    assert len(spec.layers) == 38
    r = spec.layers[3]
    assert isinstance(r, RouteSpec) and (r.layers, r.groups, r.group_id) == ((2,), 2, 1)
    shapes = infer_shapes(spec)
    assert shapes[2] == (64, 104, 104) and shapes[3] == (32, 104, 104)
    assert spec.yolo_layers[0].scale_x_y == 1.05
    assert shapes[30] == (255, 13, 13) and shapes[37] == (255, 26, 26)


def test_builtin_names_and_text(repo):
    a = resolve_cfg("yolov3-tiny")
    b = resolve_cfg(repo / "cfg" / "yolov3-tiny.cfg")
    assert a[0] == b[0]
    assert resolve_cfg(small_cfg())[1] == "<cfg text>"
    with pytest.raises(CfgError, match="cfg file not found.*yolov3-tiny"):
        resolve_cfg("no-such-model")


# -- error paths --------------------------------------------------------------------------
def err(text: str, source: str = "x.cfg") -> str:
    with pytest.raises(CfgError) as info:
        parse_network(text, source)
    return str(info.value)


def test_unknown_section_with_did_you_mean():
    msg = err(HEAD + "\n[convolutinal]\nfilters=3\n")
    assert msg.startswith("x.cfg:6: unknown section [convolutinal]")
    assert "did you mean [convolutional]" in msg


def test_unsupported_darknet_section():
    msg = err(HEAD + "[lstm]\nclasses=2\n")
    assert msg.startswith("x.cfg:5:") and "[lstm] is a darknet section detkit does not support" in msg
    msg = err(HEAD + "[convolutional]\nfilters=36\n[Gaussian_yolo]\nclasses=3\n")
    assert msg.startswith("x.cfg:7: [Gaussian_yolo]") and "not supported by detkit" in msg


@pytest.mark.parametrize("line, expect", [
    ("filters=abc", "bad value filters='abc' (expected an integer)"),
    ("filters=0", "bad value filters='0' (must be >= 1)"),
    ("activation=normalize_channels", "not supported by detkit activation 'normalize_channels'"),
    ("activation=leakky", "unknown activation 'leakky'"),
    ("size=1.5", "bad value size='1.5'"),
])
def test_bad_values_name_the_line(line, expect):
    msg = err(HEAD + "[convolutional]\nstride=1\n" + line + "\n")
    assert msg.startswith("x.cfg:7: "), msg
    assert expect in msg


def test_structural_errors():
    assert err("width=3\n[net]\n").startswith("x.cfg:1: option 'width' appears before the first [section]")
    assert err("[net\nwidth=3\n").startswith("x.cfg:1: malformed section header")
    assert err(HEAD + "[convolutional]\nfilters 3\n").startswith("x.cfg:6: expected key=value")
    assert err("[convolutional]\nfilters=3\n").startswith("x.cfg:1: the first section must be [net]")
    assert "no [section] found" in err("# nothing\n")
    assert err("[net]\nwidth=64\nheight=64\n[convolutional]\n").startswith("x.cfg:1: [net] needs a positive channels=")
    assert "defines no layers" in err(HEAD)
    assert err(HEAD + "[convolutional]\n[net]\n").startswith("x.cfg:6: [net] may appear only once")
    assert "bad value width='4x4'" in err("[net]\nwidth=4x4\nheight=4\nchannels=3\n[maxpool]\n")


def test_impossible_route_index():
    msg = err(HEAD + "[convolutional]\nfilters=4\n[route]\nlayers=-1, 5\n")
    assert msg.startswith("x.cfg:8: layers=5 in layer 1 points to layer 5")
    msg = err(HEAD + "[convolutional]\nfilters=4\n[route]\nlayers=-3\n")
    assert "points to layer -2" in msg
    msg = err(HEAD + "[convolutional]\nfilters=4\n[shortcut]\nfrom=-2\n")
    assert msg.startswith("x.cfg:8: from=-2 in layer 1 points to layer -1")


def test_impossible_shapes():
    # route of 32x32 and 16x16 maps
    msg = err(HEAD + "[convolutional]\nfilters=4\n[maxpool]\nsize=2\nstride=2\n[route]\nlayers=-1,0\n")
    assert msg.startswith("x.cfg:10: layer 2 [route]: route inputs have different spatial sizes")
    # a conv whose kernel is bigger than the input
    msg = err("[net]\nwidth=2\nheight=2\nchannels=3\n[convolutional]\nfilters=4\nsize=5\n")
    assert msg.startswith("x.cfg:5: layer 0 [convolutional]: output shape 4x-2x-2 is empty")
    msg = err(HEAD + "[convolutional]\nfilters=4\n[convolutional]\nfilters=4\ngroups=3\n")
    assert msg.startswith("x.cfg:7: layer 1 [convolutional]: groups=3 must divide the input channels (4)")
    msg = err(HEAD + "[convolutional]\nfilters=4\n[convolutional]\nfilters=5\nstride=2\n[shortcut]\nfrom=-2\n")
    assert "shortcut from layer 0 4x64x64 does not match the previous output 5x32x32 in height and width" in msg


def test_yolo_errors():
    base = HEAD + "[convolutional]\nfilters=21\n[yolo]\nclasses=2\nnum=3\n"
    assert "mask index 3 out of range for 3 anchors" in err(base + "mask=1,2,3\nanchors=1,1,2,2,3,3\n")
    assert "needs anchors=" in err(base + "mask=0,1,2\n")
    msg = err(HEAD + "[maxpool]\n[yolo]\nmask=0\nanchors=1,1\nclasses=1\n")
    assert msg.startswith("x.cfg:6: [yolo] must directly follow the [convolutional]")


def test_yolo_anchors_read_as_darknet_does(caplog):
    """darknet's parse_yolo: comma-separated atof values, the first 2 * num used, missing ones 0.5;
    detkit does the same and warns with the line."""
    base = HEAD + "[convolutional]\nfilters=21\n[yolo]\nclasses=2\nnum=3\nmask=0,1,2\n"
    caplog.set_level(logging.WARNING, logger="detkit.darknet.specs")
    spec = parse_network(base + "anchors=1,1,2,2\n", "x.cfg")
    assert spec.yolo_layers[0].anchors == ((1, 1), (2, 2), (0.5, 0.5))
    assert "x.cfg:11: anchors= lists 4 values but num=3 needs 6; darknet fills the rest with 0.5" in caplog.text
    spec = parse_network(base + "anchors=1,1,2,2  3,3,4,4,9,9\n", "x.cfg")
    assert spec.yolo_layers[0].anchors == ((1, 1), (2, 2), (3, 4))
    assert "'2  3' is read as 2 by darknet (a missing comma?)" in caplog.text
    assert "lists 9 values, num=3 uses the first 6" in caplog.text


def test_filters_mismatch_names_lines_and_correct_value():
    msg = err(small_cfg(classes=2, filters=255), "my.cfg")
    assert msg.startswith("my.cfg:15: filters=255 of the [convolutional] at line 13 feeding the [yolo] at line 18")
    assert "(2 + 5) * 3 = 21" in msg and "set filters=21" in msg


def test_heads_disagreeing_on_classes(repo):
    text = (repo / "cfg" / "yolov3-tiny.cfg").read_text()
    lines = text.split("\n")
    # make only the second head a 2-class head (filters and classes consistent per head)
    second_classes = max(i for i, s in enumerate(lines) if s == "classes=80")
    lines[second_classes] = "classes=2"
    second_filters = max(i for i, s in enumerate(lines) if s == "filters=255")
    lines[second_filters] = "filters=21"
    msg = err("\n".join(lines))
    assert "heads disagree on classes" in msg and "classes=2" in msg and "classes=80" in msg


def test_unknown_key_warns_with_line_and_did_you_mean(caplog):
    caplog.set_level(logging.WARNING, logger="detkit.darknet.specs")
    spec = parse_network(HEAD + "[convolutional]\nfilters=4\nsize=3\nactivaton=leaky\n", "w.cfg")
    assert spec.layers[0].activation == "logistic"  # the typo is ignored, not guessed
    [rec] = [r for r in caplog.records if "unknown key" in r.getMessage()]
    assert rec.getMessage() == "w.cfg:8: unknown key 'activaton' in [convolutional] ignored (did you mean 'activation'?)"


def test_known_unused_keys_are_silent(caplog, repo):
    caplog.set_level(logging.WARNING)
    parse_network(*resolve_cfg(repo / "cfg" / "yolov4-tiny.cfg"))  # iou_loss, nms_kind, beta_nms, resize...
    parse_network(HEAD + "[convolutional]\nfilters=4\nstopbackward=1\ndontload=1\n")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_duplicate_key_warns_and_first_wins(caplog):
    caplog.set_level(logging.WARNING)
    spec = parse_network(HEAD + "[convolutional]\nfilters=4\nfilters=8\n", "d.cfg")
    assert spec.layers[0].filters == 4
    assert any("d.cfg:7: duplicate key 'filters'" in r.getMessage() for r in caplog.records)


# -- class-count propagation and writer -----------------------------------------------------
@pytest.mark.parametrize("name, n_heads", [("yolov3-tiny", 2), ("yolov3", 3), ("yolov4-tiny", 2)])
def test_class_propagation_shipped_cfgs(repo, name, n_heads):
    path = repo / "cfg" / f"{name}.cfg"
    original = path.read_bytes()
    text = original.decode()
    patched, edits = set_num_classes(text, 2, path)
    assert len(edits) == 2 * n_heads  # 4 places in yolov3-tiny, 6 in yolov3
    assert sorted(e.key for e in edits) == ["classes"] * n_heads + ["filters"] * n_heads
    assert all(e.new == ("21" if e.key == "filters" else "2") for e in edits)
    assert all(e.old == ("255" if e.key == "filters" else "80") for e in edits)
    # byte-for-byte: only the edited lines differ, and only in their value
    old_lines, new_lines = text.split("\n"), patched.split("\n")
    assert len(old_lines) == len(new_lines)
    changed = [i + 1 for i, (a, b) in enumerate(zip(old_lines, new_lines)) if a != b]
    assert changed == sorted(e.line for e in edits)
    for e in edits:
        assert re.sub(r"\d+", "N", old_lines[e.line - 1]) == re.sub(r"\d+", "N", new_lines[e.line - 1])
    spec = parse_network(patched, path)
    assert spec.num_classes == 2 and all(h.classes == 2 for h in spec.yolo_layers)
    assert path.read_bytes() == original  # input never modified
    # patching back restores the distributed file exactly
    assert set_num_classes(patched, 80)[0].encode() == original
    assert set_num_classes(text, 80)[1] == []


def test_writer_preserves_crlf_spaces_and_inline_comments():
    text = small_cfg(classes=2).replace("\n", "\r\n")
    text = text.replace("filters=21", "filters = 21   # head\t").replace("classes=2", "classes =2;c")
    patched, edits = set_num_classes(text, 7)
    assert "filters = 36   # head\t\r\n" in patched
    assert "classes =7;c\r\n" in patched
    assert patched.replace("36", "21").replace("=7;", "=2;") == text
    assert [e.line for e in edits] == [15, 21]
    assert "\n" not in patched.replace("\r\n", "")


def test_writer_inserts_missing_keys():
    text = small_cfg(classes=20).replace("classes=20\n", "")  # darknet default classes=20
    assert parse_network(text).num_classes == 20
    patched, edits = set_num_classes(text, 1)
    missing = [e for e in edits if e.old is None]
    assert [(e.key, e.line) for e in missing] == [("classes", 18)]
    assert "[yolo]\nclasses=1\nmask=0,1,2\n" in patched
    assert parse_network(patched).num_classes == 1


def test_class_count_must_be_positive():
    with pytest.raises(CfgError, match="positive integer"):
        set_num_classes(small_cfg(), 0)
    with pytest.raises(CfgError, match="positive integer"):
        class_count_edits(parse_cfg(small_cfg()), True)


def test_load_network_spec_fixes_mismatched_filters():
    spec, edits = load_network_spec(small_cfg(classes=2, filters=255), "m.cfg", num_classes=2)
    assert [(e.line, e.old, e.new) for e in edits] == [(15, "255", "21")]
    assert spec.layers[1].filters == 21 and "filters=21" in spec.text


def test_apply_edits_no_edits_is_identity(repo):
    text = (repo / "cfg" / "yolov3.cfg").read_text()
    assert apply_edits(text, []) == text


def test_yolo_output_cannot_be_consumed():
    base = HEAD + "[convolutional]\nfilters=18\n[yolo]\nmask=0,1,2\nanchors=1,1,2,2,3,3\nclasses=1\nnum=3\n"
    assert err(base + "[convolutional]\nfilters=4\n").startswith(
        "x.cfg:12: layer 2 [convolutional] takes the output of the [yolo] layer 1")
    assert "takes the output of the [yolo] layer 1" in err(base + "[route]\nlayers=-2\n[route]\nlayers=-2\n")
    assert len(parse_network(base + "[route]\nlayers=-2\n").layers) == 3
