"""``detkit export``: darknet cfg + weights (or a detkit checkpoint) -> ONNX, TorchScript or .weights."""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from detkit.errors import DataError, WeightsError

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="export a model to ONNX, TorchScript or darknet .weights",
        description="Export a darknet cfg + weights (or a detkit training checkpoint) for deployment. "
                    "ONNX and TorchScript hold the eval-mode model with decoded output (N, R, 5 + C): "
                    "cx, cy, w, h in input pixels, objectness, class probabilities. The ONNX file loads "
                    "in onnxruntime and in OpenCV's cv2.dnn.readNetFromONNX.")
    p.add_argument("--cfg", required=True, help="darknet .cfg file (or a builtin name, e.g. yolov3-tiny)")
    p.add_argument("--weights", required=True, help="darknet .weights file or a detkit checkpoint (.pt)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--classes", type=int, default=None, help="class count (patches the cfg's heads)")
    group.add_argument("--names", default=None, help="class names file (its line count sets the class count)")
    p.add_argument("--format", required=True, choices=["onnx", "darknet", "torchscript"], help="output format")
    p.add_argument("--img-size", default=None,
                   help="input N or WxH, multiples of 32 (default: the cfg's width x height); onnx/torchscript")
    p.add_argument("--dynamic-batch", action="store_true", help="onnx: symbolic batch dimension (default batch 1)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 13)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip re-running the exported file against the PyTorch model")
    p.add_argument("-o", "--out", required=True, help="output file")
    p.set_defaults(func=run)


def _num_classes(args: argparse.Namespace) -> int | None:
    from detkit.data.datafiles import read_names

    if args.classes is not None:
        if args.classes < 1:
            raise DataError(f"--classes must be >= 1, got {args.classes}")
        return args.classes
    if args.names is not None:
        return len(read_names(args.names))
    return None


def _verify(result, model) -> str:
    """Run the exported file on a random input and compare with the PyTorch model."""
    import numpy as np
    import torch

    w, h = result.img_size
    batch = 2 if result.dynamic_batch else 1
    x = torch.rand(batch, model.in_channels, h, w, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    if result.format == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            return "not verified (onnxruntime is not installed)"
        sess = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
        out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        runtime = "onnxruntime"
    else:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ts = torch.jit.load(str(result.path))
        with torch.no_grad():
            out = ts(x).numpy()
        runtime = "torch.jit"
    if out.shape != ref.shape:
        raise WeightsError(f"exported model gives shape {out.shape}, PyTorch {ref.shape}", path=result.path)
    d = np.abs(out - ref)
    return (f"verified with {runtime} (batch {batch}): max abs diff boxes {d[..., :4].max():.2e} px, "
            f"probabilities {d[..., 4:].max():.2e}")


def run(args: argparse.Namespace) -> int:
    import torch

    from detkit.engine.export import DEFAULT_OPSET, export_model
    from detkit.engine.loading import load_model
    from detkit.engine.predict import parse_img_size

    if torch.get_num_threads() > (os.cpu_count() or 1):
        torch.set_num_threads(os.cpu_count() or 1)
    try:
        img_size = parse_img_size(args.img_size) if args.img_size is not None else None
    except ValueError as exc:
        raise DataError(f"--img-size: {exc}") from None
    if args.format == "darknet" and (args.img_size or args.dynamic_batch):
        log.warning("--img-size/--dynamic-batch do not apply to --format darknet (ignored)")
    opset = DEFAULT_OPSET if args.opset is None else args.opset
    if not 11 <= opset <= 20:
        raise DataError(f"--opset must be in 11..20, got {opset}")
    out = Path(args.out)
    if not out.parent.is_dir():
        raise DataError("output folder does not exist", path=out.parent)
    model, _ = load_model(args.cfg, args.weights, _num_classes(args), purpose="export",
                          classes_hint="pass the --classes/--names the weights were trained with")
    model.eval()
    try:
        result = export_model(model, out, args.format, img_size=img_size, dynamic_batch=args.dynamic_batch,
                              opset=opset)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    shape = "x".join(str(v) for v in result.output_shape)
    what = (f"input 1x{model.in_channels}x{result.img_size[1]}x{result.img_size[0]}"
            f"{' (dynamic batch)' if result.dynamic_batch else ''}, output {shape}"
            if result.format != "darknet" else f"{len(model.conv_layers)} conv layers")
    print(f"wrote {result.path} ({result.format}, {result.nbytes:,} bytes; {what})")
    if result.format != "darknet" and not args.no_verify:
        print(_verify(result, model))
    return 0
