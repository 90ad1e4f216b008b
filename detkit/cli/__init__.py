"""Command-line interface: ``detkit <command> ...`` and ``python -m detkit <command> ...``.

Thin layer: each subcommand lives in its own module here (``<name>_cmd.py``) exposing
``add_parser(subparsers)``, which registers the parser and sets ``func(args) -> int``.
This package is the only place that configures logging and the OpenMP wait policy
(:func:`~detkit.infer.backends.configure_thread_pools`); nothing imports it. Building the parser
imports no engine: torch, onnxruntime and OpenVINO load when a command needs them.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from detkit.errors import DetkitError

# One entry per subcommand module, in the order shown by ``detkit --help``.
COMMAND_MODULES = [
    "cfg_cmd",
    "convert_cmd",
    "convert_any_cmd",
    "detect_cmd",
    "train_cmd",
    "eval_cmd",
    "anchors_cmd",
    "stats_cmd",
    "export_cmd",
    "demo_cmd",
    "benchmark_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detkit",
        description="YOLO detection toolkit: darknet cfg/weights in PyTorch, VOC conversion, training, evaluation.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="less output, no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"detkit.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from detkit.infer.backends import configure_thread_pools

    configure_thread_pools()  # before anything imports torch (nothing above does)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else (logging.WARNING if args.quiet else logging.INFO),
        format="%(levelname)s: %(message)s" if not args.debug else "%(levelname)s %(name)s: %(message)s",
    )
    if not args.command:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except DetkitError as exc:
        if args.debug:
            raise
        print(f"detkit: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("detkit: interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError) as exc:  # file system and value problems a user can cause
        if args.debug:
            raise
        print(f"detkit: error: {exc}", file=sys.stderr)
        return 1
