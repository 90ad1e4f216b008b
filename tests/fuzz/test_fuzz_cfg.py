"""Fuzz the darknet cfg reader, the spec builder and build_model with random and mutated cfg text.

Inputs: random text; the shipped cfg/*.cfg files with random line/value/byte mutations. Each
either builds or raises CfgError with a one-line message; models are only instantiated when
their parameter count is small (the size guard itself is checked without allocating).
"""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import fuzzlib
from detkit.darknet.cfg import parse_cfg, read_cfg
from detkit.darknet.model import MAX_PARAMETERS, build_model, count_parameters
from detkit.darknet.shapes import infer_shapes
from detkit.darknet.specs import parse_network
from detkit.darknet.cfg_edit import set_num_classes
from detkit.errors import CfgError

REPO = Path(__file__).resolve().parents[2]
CFGS = {p.name: p.read_text(encoding="utf-8") for p in sorted((REPO / "cfg").glob("*.cfg"))}
#: models above this many parameters are checked by the size guard only (no allocation in tests)
BUILD_BUDGET = 12_000_000

VALUES = st.sampled_from(["", "0", "1", "-1", "2", "3", "-2147483649", "2147483648", "99999999999999999999",
                          "1e309", "nan", "inf", "-inf", "0.5", "1,2", "1,,2", "-1,-4", "abc", "leaky", "mish",
                          "linear", "logistic", "swish", "13", "26", "416", "0x10", " ", "=", "#", "[", "]",
                          "10,14,  23,27,  37,58", "1" * 400, "\u00e9\u4e2d", "\x00", "1_000"])
KEYS = st.sampled_from(["filters", "size", "stride", "pad", "padding", "groups", "dilation", "batch_normalize",
                        "activation", "layers", "from", "mask", "anchors", "classes", "num", "width", "height",
                        "channels", "group_id", "scale_x_y", "stride_x", "max_batches", "steps", "scales",
                        "batch", "subdivisions", "learning_rate", "policy", "random", "jitter", "bogus"])
SECTIONS = st.sampled_from(["[net]", "[network]", "[convolutional]", "[maxpool]", "[upsample]", "[route]",
                            "[shortcut]", "[yolo]", "[region]", "[dropout]", "[]", "[conv", "[ yolo ]", "[NET]"])


@st.composite
def mutated_cfg(draw) -> str:
    name = draw(st.sampled_from(sorted(CFGS)))
    lines = CFGS[name].splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 6))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["value", "value", "value", "delete", "dup", "swap", "insert_kv",
                                   "insert_section", "truncate", "byte", "crlf"]))
        if op == "value" and "=" in lines[i]:
            key = lines[i].split("=", 1)[0]
            lines[i] = f"{key}={draw(VALUES)}\n"
        elif op == "delete":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "insert_kv":
            lines.insert(i, f"{draw(KEYS)}={draw(VALUES)}\n")
        elif op == "insert_section":
            lines.insert(i, draw(SECTIONS) + "\n")
        elif op == "truncate":
            cut = draw(st.integers(0, len(lines[i])))
            lines = lines[:i] + [lines[i][:cut]]
        elif op == "byte":
            s = lines[i]
            k = draw(st.integers(0, max(0, len(s) - 1)))
            lines[i] = s[:k] + draw(st.characters()) + s[k + 1:]
        elif op == "crlf":
            lines[i] = lines[i].rstrip("\n") + "\r\n"
    return "".join(lines)


@st.composite
def random_cfg(draw) -> str:
    """Structurally plausible cfg text made of random sections and key=value lines."""
    out = []
    for _ in range(draw(st.integers(0, 12))):
        out.append(draw(SECTIONS))
        for _ in range(draw(st.integers(0, 5))):
            out.append(f"{draw(KEYS)}={draw(VALUES)}")
    return "\n".join(out) + draw(st.sampled_from(["", "\n", "\r\n"]))


def check_cfg(text: str, tmp: Path | None = None) -> None:
    fuzzlib.outcome("cfg.parse_cfg", parse_cfg, text, "<fuzz>")
    spec, err = fuzzlib.outcome("cfg.parse_network", parse_network, text, "<fuzz>")
    if tmp is not None:  # the file path: binary/encoding checks and the same parse
        p = tmp / "fuzz.cfg"
        p.write_bytes(text.encode("utf-8", "surrogatepass"))
        fuzzlib.outcome("cfg.read_cfg", read_cfg, p)
    if spec is None:
        return
    n = count_parameters(spec, infer_shapes(spec))
    if n > MAX_PARAMETERS:
        with pytest.raises(CfgError, match="parameters"):
            build_model(text)
        fuzzlib.record("cfg.build_model", "CfgError")
        return
    if n <= BUILD_BUDGET:
        model, _ = fuzzlib.outcome("cfg.build_model", build_model, text)
        if model is not None:
            assert sum(p.numel() for p in model.parameters()) == n
    if spec.yolo_layers:
        fuzzlib.outcome("cfg.set_num_classes", set_num_classes, text, 3, "<fuzz>")


@fuzzlib.fast()
@given(mutated_cfg())
def test_mutated_shipped_cfgs(tmp_path, text):
    check_cfg(text, tmp_path)


@fuzzlib.fast(30)
@given(st.one_of(random_cfg(), st.text(max_size=400)))
def test_random_cfg_text(text):
    check_cfg(text)


@fuzzlib.long()
@given(mutated_cfg())
def test_mutated_shipped_cfgs_long(tmp_path, text):
    check_cfg(text, tmp_path)


@fuzzlib.long()
@given(st.one_of(random_cfg(), st.text(max_size=2000), st.binary(max_size=2000).map(lambda b: b.decode("latin-1"))))
def test_random_cfg_text_long(text):
    check_cfg(text)


@pytest.mark.parametrize("filters,size", [(1_000_000, 50), (10**11, 1), (4096, 1001)])
def test_absurd_model_size_refused_before_allocating(filters, size):
    """A cfg claiming billions of parameters is refused from its shapes: nothing is allocated."""
    text = (f"[net]\nwidth=64\nheight=64\nchannels=3\n[convolutional]\nfilters={filters}\nsize={size}\n"
            "stride=1\npad=1\nactivation=leaky\n")
    with fuzzlib.measure_memory() as mem:
        with pytest.raises(CfgError, match=r"<cfg text>:5: .*parameters") as exc:
            build_model(text)
    fuzzlib.check_one_line(exc.value)
    assert mem["rss_delta"] < 64 << 20, mem
    fuzzlib.figure("cfg_huge_claim_rss_delta_bytes", mem["rss_delta"])


def test_count_parameters_matches_torch():
    for name, text in CFGS.items():
        if name == "yolov3.cfg":
            continue  # 62M parameters: covered by the formula, not worth allocating here
        spec = parse_network(text)
        model = build_model(text)
        assert count_parameters(spec, infer_shapes(spec)) == sum(p.numel() for p in model.parameters()), name
