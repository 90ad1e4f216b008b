"""``detkit cfg``: class-count patching to a file, --names, --check table, error lines."""
from __future__ import annotations

import pytest

from detkit.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_classes_writes_patched_cfg(repo, tmp_path, capsys):
    src = repo / "cfg" / "yolov3-tiny.cfg"
    original = src.read_bytes()
    out = tmp_path / "my.cfg"
    code, stdout, _ = run_cli(capsys, "cfg", "--cfg", str(src), "--classes", "2", "-o", str(out))
    assert code == 0
    assert "4 change(s) for 2 classes" in stdout
    for line, what in [(127, "filters=255 -> 21"), (135, "classes=80 -> 2"),
                       (171, "filters=255 -> 21"), (177, "classes=80 -> 2")]:
        assert f"line  {line} " in stdout and what in stdout
    new = out.read_bytes()
    old_lines, new_lines = original.split(b"\n"), new.split(b"\n")
    assert [i + 1 for i, (a, b) in enumerate(zip(old_lines, new_lines)) if a != b] == [127, 135, 171, 177]
    assert len(old_lines) == len(new_lines)
    assert src.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["my.cfg"]  # no temp file left behind


def test_crlf_file_stays_crlf(repo, tmp_path, capsys):
    src = tmp_path / "win.cfg"
    src.write_bytes((repo / "cfg" / "yolov3.cfg").read_bytes().replace(b"\n", b"\r\n"))
    out = tmp_path / "out.cfg"
    code, stdout, _ = run_cli(capsys, "cfg", "--cfg", str(src), "--classes", "1", "-o", str(out))
    assert code == 0 and "6 change(s)" in stdout
    data = out.read_bytes()
    assert data.count(b"\r\n") == src.read_bytes().count(b"\r\n") and b"\n" not in data.replace(b"\r\n", b"")
    assert data.count(b"filters=18\r\n") == 3 and data.count(b"classes=1\r\n") == 3


def test_names_file_gives_the_count(tmp_path, capsys):
    names = tmp_path / "obj.names"
    names.write_text("raccoon\ncat\ndog\n")
    out = tmp_path / "three.cfg"
    code, stdout, _ = run_cli(capsys, "cfg", "--cfg", "yolov4-tiny", "--names", str(names), "-o", str(out))
    assert code == 0 and "for 3 classes" in stdout
    text = out.read_text()
    assert text.count("classes=3\n") == 2 and text.count("filters=24\n") == 2


def test_dry_run_and_no_change(capsys):
    code, stdout, _ = run_cli(capsys, "cfg", "--cfg", "yolov3-tiny", "--classes", "5")
    assert code == 0 and "dry run" in stdout
    code, stdout, _ = run_cli(capsys, "cfg", "--cfg", "yolov3-tiny", "--classes", "80")
    assert code == 0 and "no change" in stdout


def test_check_prints_layer_table(capsys):
    code, stdout, _ = run_cli(capsys, "cfg", "--cfg", "yolov3-tiny", "--check")
    assert code == 0
    lines = stdout.splitlines()
    assert lines[0].split()[:4] == ["#", "type", "filters", "size/strd"]
    row11 = next(line for line in lines if line.lstrip().startswith("11 "))
    assert row11.split() == ["11", "maxpool", "2x2/1", "13x13x512", "13x13x512", "0.000"]  # keeps 13x13
    row15 = next(line for line in lines if line.lstrip().startswith("15 "))
    assert "13x13x255" in row15 and "130,815" in row15
    assert lines[-1] == "supported"
    assert lines[-2] == ("24 layers, 2 detection heads, 80 classes, input 416x416x3, 8,852,366 parameters, "
                         "5.571 BFLOPs")  # darknet reports 5.571 BFLOPs for yolov3-tiny at 416


def test_check_with_classes_and_size(capsys):
    code, stdout, _ = run_cli(capsys, "cfg", "--cfg", "yolov3-tiny", "--classes", "2", "--check",
                              "--img-size", "608x320")
    assert code == 0
    assert "19x10x21" in stdout and "38x20x21" in stdout
    assert "input 608x320x3" in stdout.splitlines()[-2]


@pytest.mark.parametrize("argv, message", [
    (["--classes", "0"], "number of classes must be a positive integer"),
    (["-o", "x.cfg"], "-o needs --classes N or --names FILE"),
    ([], "nothing to do"),
    (["--check", "--img-size", "abc"], "--img-size: expected N or WxH"),
])
def test_errors_are_one_line(capsys, argv, message):
    code, _, stderr = run_cli(capsys, "cfg", "--cfg", "yolov3-tiny", *argv)
    assert code == 1
    assert stderr.startswith("detkit: error: ") and message in stderr and stderr.count("\n") == 1


def test_bad_cfg_reports_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.cfg"
    bad.write_text("[net]\nwidth=64\nheight=64\nchannels=3\n[convolutional]\nfilters=8\n[route]\nlayers=-5\n")
    code, _, stderr = run_cli(capsys, "cfg", "--cfg", str(bad), "--check")
    assert code == 1 and stderr.startswith(f"detkit: error: {bad}:8: layers=-5 in layer 1")


def test_refuses_to_overwrite_input(repo, tmp_path, capsys):
    src = tmp_path / "in.cfg"
    src.write_bytes((repo / "cfg" / "yolov3-tiny.cfg").read_bytes())
    code, stdout, stderr = run_cli(capsys, "cfg", "--cfg", str(src), "--classes", "2", "-o", str(src))
    assert code == 1 and "refusing to overwrite the input cfg" in stderr and stdout == ""
    assert src.read_bytes() == (repo / "cfg" / "yolov3-tiny.cfg").read_bytes()
    code, _, stderr = run_cli(capsys, "cfg", "--cfg", str(src), "--classes", "2", "-o",
                              str(tmp_path / "missing" / "x.cfg"))
    assert code == 1 and "output folder does not exist" in stderr


def test_check_says_supported_for_every_builtin(capsys):
    for name in ("yolov7-tiny", "yolov2-tiny", "yolov3-tiny-prn"):
        code, stdout, _ = run_cli(capsys, "cfg", "--cfg", name, "--check", "--img-size", "160")
        assert code == 0 and stdout.rstrip().endswith("supported"), name
    _, stdout, _ = run_cli(capsys, "cfg", "--cfg", "yolov7-tiny", "--check")
    assert "yolo mask 0,1,2 new_coords" in stdout
    _, stdout, _ = run_cli(capsys, "cfg", "--cfg", "yolov2-tiny", "--check")
    assert "region 5 anchors softmax" in stdout


def test_check_lists_every_unsupported_feature_with_its_line(tmp_path, capsys):
    cfg = tmp_path / "x.cfg"
    cfg.write_text("[net]\nwidth=32\nheight=32\nchannels=3\n[convolutional]\nfilters=4\nxnor=1\n"
                   "[convolutional]\nfilters=4\nbinary=1\n[crnn]\noutput=4\n[convolutional]\nfilters=36\n"
                   "[Gaussian_yolo]\nclasses=3\n")
    code, stdout, _ = run_cli(capsys, "cfg", "--cfg", str(cfg), "--check")
    assert code == 1
    assert "unsupported by detkit (4 feature(s))" in stdout
    for line, what in [(7, "xnor=1"), (10, "binary=1"), (11, "[crnn]"), (15, "[Gaussian_yolo]")]:
        assert f"x.cfg:{line}: {what}" in stdout, (line, stdout)
    assert "supported\n" not in stdout.split("feature(s)")[0]
