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
        "export", help="export a model to ONNX (float32 or int8), TorchScript or darknet .weights",
        description="Export a darknet cfg + weights (or a detkit training checkpoint) for deployment. "
                    "ONNX and TorchScript hold the eval-mode model with decoded output (N, R, 5 + C): "
                    "cx, cy, w, h in input pixels, objectness, class probabilities. The ONNX file loads "
                    "in onnxruntime and in OpenCV's cv2.dnn.readNetFromONNX. --format onnx-int8 writes "
                    "an int8 ONNX file for onnxruntime, calibrated on --calib images (the fastest CPU "
                    "path: detkit detect/eval --weights MODEL.onnx run it).")
    p.add_argument("--cfg", required=True, help="darknet .cfg file (or a builtin name, e.g. yolov3-tiny)")
    p.add_argument("--weights", required=True, help="darknet .weights file or a detkit checkpoint (.pt)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--classes", type=int, default=None, help="class count (patches the cfg's heads)")
    group.add_argument("--names", default=None, help="class names file (its line count sets the class count)")
    p.add_argument("--format", required=True, choices=["onnx", "onnx-int8", "openvino", "openvino-int8", "darknet", "torchscript"],
                   help="output format (openvino / openvino-int8: an IR NAME.xml + NAME.bin for OpenVINO)")
    p.add_argument("--img-size", default=None,
                   help="input N or WxH, multiples of 32 (default: the cfg's width x height); onnx/torchscript")
    p.add_argument("--dynamic-batch", action="store_true", help="onnx: symbolic batch dimension (default batch 1)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 13)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip re-running the exported file against the PyTorch model")
    p.add_argument("-o", "--out", required=True, help="output file")
    q = p.add_argument_group("int8 (--format onnx-int8 / openvino-int8)")
    q.add_argument("--calib", default=None,
                   help="calibration images: a folder, a .txt list, or obj.data / data.yaml (its training "
                        "split); images like the ones the model will see")
    q.add_argument("--calib-images", type=int, default=None,
                   help="use at most this many calibration images (default 200)")
    q.add_argument("--calib-method", choices=("average", "minmax", "percentile", "entropy"), default=None,
                   help="onnx-int8 activation ranges: minmax = global min/max (default), average = mean of each "
                        "image's min/max (what openvino-int8's NNCF uses), percentile, entropy")
    q.add_argument("--fp32-first", type=int, default=0,
                   help="keep the first N convolutions float32 (default 0)")
    q.add_argument("--int8-heads", action="store_true",
                   help="quantise the yolo-head convolutions too (default: float32; int8 heads cost accuracy)")
    q.add_argument("--resize", action="store_true",
                   help="calibrate with darknet's plain stretch, for detkit detect --resize (default: letterbox)")
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


def calibration_images(source: str) -> list[Path]:
    """``--calib``: an image folder (recursive), a ``.txt`` list, or obj.data / data.yaml (train split)."""
    from detkit.infer.sources import collect_sources
    from detkit.data.datafiles import load_data_config

    src = Path(source)
    if src.is_file() and src.suffix.lower() in (".data", ".yaml", ".yml"):
        cfg = load_data_config(src)
        if not cfg.train:
            raise DataError("the data file lists no training images for calibration", path=src)
        return list(cfg.train)
    return collect_sources(src)


def _verify_int8(path: Path, img_size: tuple[int, int], resize: bool, model, image: Path,
                 openvino: bool = False) -> str:
    """The int8 file against the float32 PyTorch model on one calibration image (quantisation
    changes the numbers: this reports by how much, it does not fail)."""
    import numpy as np
    import torch

    from detkit.data.images import letterbox, read_image, resize_darknet
    from detkit.infer.onnxrt import OnnxModel

    w, h = img_size
    img = read_image(image)
    net = resize_darknet(img, (w, h)) if resize else letterbox(img, (w, h))[0].astype(np.float32) / 255.0
    x = torch.from_numpy(np.ascontiguousarray(net.transpose(2, 0, 1)[None], dtype=np.float32))
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    if openvino:
        from detkit.infer.openvino_model import OpenVinoModel

        out = OpenVinoModel(path).forward(x).numpy()
    else:
        out = OnnxModel(path).forward(x).numpy()
    s_ref = ref[..., 4:5] * ref[..., 5:]
    s_out = out[..., 4:5] * out[..., 5:]
    d = np.abs(s_out - s_ref)
    return (f"checked with {'OpenVINO' if openvino else 'onnxruntime'} on {image.name}: scores (objectness x class) max abs diff {d.max():.3f}, "
            f"mean {d.mean():.2e}; cells scoring > 0.25: float32 {int((s_ref.max(-1) > 0.25).sum())}, "
            f"int8 {int((s_out.max(-1) > 0.25).sum())}")


def _export_openvino(args: argparse.Namespace, model, out: Path, img_size) -> int:
    from detkit.infer.openvino_export import export_openvino

    _need_openvino(out, "openvino")
    try:
        path, nbytes = export_openvino(model, out, img_size, dynamic_batch=True,
                                       opset=args.opset or 13)
    except ValueError as exc:
        raise DataError(str(exc), path=out) from None
    w, h = img_size or (model.net.width, model.net.height)
    print(f"wrote {path} + {path.with_suffix('.bin').name} (openvino IR, float32, {nbytes:,} bytes; input "
          f"Nx{model.in_channels}x{h}x{w} (dynamic batch))")
    if not args.no_verify:
        print(_verify_openvino(path, model, (w, h)))
    return 0


def _need_openvino(out: Path, fmt: str, nncf: bool = False) -> None:
    if out.suffix.lower() != ".xml":
        raise DataError(f"--format {fmt} writes an IR NAME.xml (+ NAME.bin beside it); give -o NAME.xml", path=out)
    import importlib.util

    for pkg in ("openvino",) + (("nncf",) if nncf else ()):
        if importlib.util.find_spec(pkg) is None:
            raise DataError(f"--format {fmt} needs the {pkg} package (pip install {pkg})")


def _verify_openvino(path: Path, model, img_size: tuple[int, int]) -> str:
    """The float32 IR (fp32 hint) against the PyTorch model on a random batch of 2."""
    import numpy as np
    import torch

    from detkit.infer.openvino_model import OpenVinoModel

    w, h = img_size
    x = torch.rand(2, model.in_channels, h, w, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    out = OpenVinoModel(path, precision="fp32").forward(x).numpy()
    d = np.abs(out - ref)
    return (f"verified with OpenVINO (fp32 hint, batch 2): max abs diff boxes {d[..., :4].max():.2e} px, "
            f"probabilities {d[..., 4:].max():.2e}")


def _export_int8(args: argparse.Namespace, model, out: Path, img_size) -> int:
    from detkit.infer.quantize import DEFAULT_CALIBRATION_IMAGES, quantize_int8

    if not args.calib:
        raise DataError(f"--format {args.format} needs --calib (a folder, a .txt list or obj.data / data.yaml with "
                        "images like the ones the model will see)")
    if args.fp32_first < 0:
        raise DataError(f"--fp32-first must be >= 0, got {args.fp32_first}")
    limit = DEFAULT_CALIBRATION_IMAGES if args.calib_images is None else args.calib_images
    if limit < 1:
        raise DataError(f"--calib-images must be >= 1, got {limit}")
    openvino = args.format == "openvino-int8"
    if openvino:
        _need_openvino(out, args.format, nncf=True)
        if args.calib_method is not None:
            raise DataError("--calib-method applies to onnx-int8; openvino-int8 uses NNCF's mean of per-image "
                            "min/max (the same as 'average')")
    paths = calibration_images(args.calib)
    if not openvino:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            raise DataError("--format onnx-int8 needs the onnx and onnxruntime packages (pip install onnx "
                            "onnxruntime)") from None
    log.info("int8: calibrating on %d of %d images from %s", min(limit, len(paths)), len(paths), args.calib)
    try:
        if openvino:
            from detkit.infer.openvino_export import quantize_openvino_int8

            res = quantize_openvino_int8(model, out, paths, img_size=img_size, letterbox=not args.resize,
                                         fp32_first=args.fp32_first, fp32_heads=not args.int8_heads,
                                         dynamic_batch=True, opset=args.opset or 13, max_images=limit)
        else:
            res = quantize_int8(model, out, paths, img_size=img_size, letterbox=not args.resize,
                                fp32_first=args.fp32_first, fp32_heads=not args.int8_heads, method=args.calib_method or "minmax",
                                dynamic_batch=args.dynamic_batch, opset=args.opset or 13, max_images=limit)
    except ValueError as exc:
        raise DataError(f"{exc}", path=args.calib) from None
    batch = "N" if res.dynamic_batch else "1"
    print(f"wrote {res.path} ({args.format}, {res.nbytes:,} bytes; input {batch}x{model.in_channels}x{res.img_size[1]}x"
          f"{res.img_size[0]}{' (dynamic batch)' if res.dynamic_batch else ''}; {res.quantized_convs} convs int8, float32 layers {list(res.fp32_layers)}; "
          f"calibrated on {res.calibration_images} images in {res.seconds:.1f} s"
          + (f", {len(res.skipped_images)} unreadable skipped" if res.skipped_images else "") + ")")
    if not args.no_verify:
        skipped = set(res.skipped_images)
        first = next((p for p in paths if not any(s.startswith(str(p)) for s in skipped)), paths[0])
        print(_verify_int8(res.path, res.img_size, args.resize, model, first, openvino))
    return 0


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

    from detkit.infer.export import DEFAULT_OPSET, export_model
    from detkit.infer.loading import load_model
    from detkit.infer.predict import parse_img_size

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
    if args.format in ("onnx-int8", "openvino-int8"):
        return _export_int8(args, model, out, img_size)
    if args.format == "openvino":
        return _export_openvino(args, model, out, img_size)
    if args.calib is not None:
        log.warning("--calib applies to --format onnx-int8 (ignored)")
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
