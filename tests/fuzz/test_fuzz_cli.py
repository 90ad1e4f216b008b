"""Fuzz the command line: random argv for every subcommand through ``detkit.cli.main``.

Every run must end with exit code 0, argparse's usage error (exit 2, ``usage:`` on stderr), or a
non-zero code with a ``detkit: error:`` line — never a traceback. Values come from a pool of junk
files, missing paths, folders, odd numbers and strings, all inside a scratch folder (the working
directory of the run), so nothing is written elsewhere. ``demo`` and ``benchmark`` are left
out: with their defaults they train a model / time inference on the shared data for minutes.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import fuzzlib
from detkit.cli import build_parser, main

SKIP = {"demo", "benchmark"}  # long-running by design with their defaults (train a model / time inference)
#: seconds one command may take before the example counts as a hang
CLI_LIMIT = float(os.environ.get("DETKIT_FUZZ_CLI_LIMIT", "60"))


def _subcommands() -> tuple[dict[str, list[tuple[str, bool]]], dict[str, list[tuple[str, bool]]]]:
    """subcommand -> [(option string, takes a value)] introspected from the real parser, and
    subcommand -> the required ones (positionals as ``""``)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out, required = {}, {}
    for name, p in sub.choices.items():
        opts, req = [], []
        for a in p._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            takes = a.nargs != 0
            if a.option_strings:
                opts += [(s, takes) for s in a.option_strings]
                if a.required:
                    req.append((a.option_strings[-1], takes))
            else:
                opts.append(("", True))  # positional
                req.append(("", True))
        out[name], required[name] = opts, req
    return out, required


COMMANDS, REQUIRED = _subcommands()
VALUES = ["junk.cfg", "junk.weights", "empty.txt", "folder", "missing.file", "names.txt", "bin.dat", "out_new",
          "yolov3-tiny", "yolov3-tiny.cfg", "good.cfg", "obj.data", "data.yaml", "voc", "pred.json", "gt.json",
          "-1", "0", "1", "3", "416", "32x32", "1e309", "nan", "-inf", "abc", "", " ", "\u732b", "a" * 300,
          "cuda:7", "cpu", "auto", "coco", "voc", "yolo", "onnx", "darknet", "1,2, 3,4", "--", "-", "--help"]


def _scratch(tmp: Path) -> None:
    (tmp / "junk.cfg").write_text("[net]\nwidth=abc\n[convolutional]\nfilters=\n")
    (tmp / "good.cfg").write_text("[net]\nwidth=32\nheight=32\nchannels=3\n[convolutional]\nfilters=21\nsize=1\n"
                                  "activation=linear\n[yolo]\nmask=0,1,2\nanchors=1,1, 2,2, 3,3\nclasses=2\nnum=3\n")
    (tmp / "junk.weights").write_bytes(os.urandom(64))
    (tmp / "empty.txt").write_bytes(b"")
    (tmp / "bin.dat").write_bytes(bytes(range(256)))
    (tmp / "folder").mkdir(exist_ok=True)
    (tmp / "voc" / "Annotations").mkdir(parents=True, exist_ok=True)
    (tmp / "voc" / "Annotations" / "a.xml").write_text("<annotation><object><name>x</name></object></annotation>")
    (tmp / "names.txt").write_text("a\nb\n")
    (tmp / "obj.data").write_text("classes = 2\ntrain = missing.txt\nnames = names.txt\n")
    (tmp / "data.yaml").write_text("names: [a, b]\ntrain: folder\nval: folder\n")
    (tmp / "gt.json").write_text('{"images": [{"id": 1}], "annotations": [], "categories": []}')
    (tmp / "pred.json").write_text('[{"image_id": 1, "category_id": 1, "bbox": [0, 0, "x", 1], "score": 1}]')


@st.composite
def argv(draw) -> list[str]:
    cmd = draw(st.sampled_from(sorted(set(COMMANDS) - SKIP)))
    opts = COMMANDS[cmd]
    out = [cmd]
    chosen = draw(st.lists(st.sampled_from(opts), max_size=6))
    if draw(st.integers(0, 4)):  # mostly past argparse: every required option present
        chosen = REQUIRED[cmd] + chosen
    for opt, takes in chosen:
        if opt:
            out.append(opt)
        if takes:
            out.append(draw(st.one_of(st.sampled_from(VALUES), st.text(max_size=8))))
    if draw(st.integers(0, 4)) == 0:
        out.insert(draw(st.integers(0, len(out))), draw(st.sampled_from(VALUES + ["--debug", "-q", "--bogus"])))
    return [a for a in out if "\x00" not in a and a != "--debug"]  # --debug re-raises by design


def _command(args: list[str]) -> str:
    return next((a for a in args if a in COMMANDS), "(none)")


def check_cli(tmp: Path, args: list[str]) -> None:
    cwd = os.getcwd()
    err, outbuf = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers = list(root.handlers)
    os.chdir(tmp)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(outbuf), \
                fuzzlib.time_limit(CLI_LIMIT, repr(args)):
            try:
                rc = main(["-q"] + args)
            except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
                rc = exc.code if isinstance(exc.code, int) else 2
                text = err.getvalue()
                assert rc == 0 or "usage:" in text or "error:" in text, (args, text)
                fuzzlib.record(f"cli.{_command(args)}", "usage_error" if rc else "help")
                return
    finally:
        os.chdir(cwd)
        for h in list(root.handlers):  # main() calls logging.basicConfig: keep the test's logging as it was
            if h not in handlers:
                root.removeHandler(h)
    text = err.getvalue()
    assert "Traceback" not in text, (args, text)
    if rc != 0:
        lines = [ln for ln in text.splitlines() if ln.startswith("detkit: error:") or ln.startswith("detkit: ")]
        assert lines, (args, rc, text)
        fuzzlib.record(f"cli.{_command(args)}", "error")
    else:
        fuzzlib.record(f"cli.{_command(args)}", "ok")


@pytest.fixture
def scratch(tmp_path):
    _scratch(tmp_path)
    return tmp_path


@fuzzlib.fast(50)
@given(args=argv())
def test_random_argv(scratch, args):
    check_cli(scratch, args)


@fuzzlib.long()
@given(args=argv())
def test_random_argv_long(scratch, args):
    check_cli(scratch, args)


@pytest.mark.parametrize("cmd", sorted(set(COMMANDS) - SKIP))
def test_every_subcommand_with_only_junk_files(scratch, cmd):
    """Each subcommand with every option filled from junk: a one-line error, no traceback."""
    args = [cmd]
    for opt, takes in COMMANDS[cmd]:
        if opt in ("--help", "-h"):
            continue
        if opt:
            args.append(opt)
        if takes:
            args.append("junk.weights" if "weights" in opt else "bin.dat")
    check_cli(scratch, args)
