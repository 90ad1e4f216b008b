"""``detkit detect``: run a darknet cfg + weights on images or a video; write annotated images /
video, JSON (JSON lines for videos) and optionally YOLO-format prediction files
(:func:`detkit.infer.detect.run_detect`)."""
from __future__ import annotations

import argparse
import sys

from detkit.infer.sources import VIDEO_EXTENSIONS


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "detect", help="detect objects in images with a darknet cfg + weights",
        description="Run a YOLO model (darknet cfg + weights) on an image, a folder of images, a "
                    "list file or a video; write annotated images and detections.json (video: an "
                    "annotated video and detections.jsonl, one line per frame) to --out.")
    p.add_argument("--cfg", default=None,
                   help="darknet .cfg file (or a builtin name, e.g. yolov3-tiny); not needed for an .onnx model")
    p.add_argument("--weights", required=True,
                   help="darknet .weights file, an .onnx model or an OpenVINO IR .xml from detkit export "
                        "(float32 or int8)")
    p.add_argument("--names", required=True, help="class names file, one per line (sets the class count)")
    p.add_argument("--source", required=True,
                   help="an image, a folder of images (searched recursively), a .txt list of image paths "
                        f"or a video file ({', '.join(sorted(VIDEO_EXTENSIONS))})")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--conf", type=float, default=0.25, help="score threshold (default 0.25)")
    p.add_argument("--nms", type=float, default=0.45, help="per-class NMS IoU threshold (default 0.45)")
    p.add_argument("--img-size", default=None,
                   help="network input N or WxH, multiples of 32 (default: the cfg's width x height)")
    p.add_argument("--resize", action="store_true",
                   help="stretch images to the input size exactly as darknet's detector test does "
                        "(default: letterbox)")
    p.add_argument("--batch", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--classes", type=int, default=None,
                   help="expected class count; must equal the number of names")
    p.add_argument("--no-images", action="store_true",
                   help="write no annotated images / video (only detections.json / detections.jsonl)")
    p.add_argument("--save-txt", action="store_true",
                   help="also write YOLO-format predictions, OUT/labels/<image stem>.txt, lines "
                        "'class cx cy w h score' normalised to [0, 1] (read by detkit eval --pred OUT/labels)")
    p.add_argument("--backend", choices=("auto", "torch", "onnxruntime", "openvino"), default="auto",
                   help="inference engine: auto = OpenVINO on the CPU when installed (cfg + weights are "
                        "converted once and cached), onnxruntime for .onnx without it, PyTorch on CUDA "
                        "(default auto; the first output line names the one used)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="compute type: auto = bf16 on CPUs with native bf16 (AVX512-BF16/AMX), "
                        "fp16 on CUDA (torch), else fp32 (default auto); an int8 file runs int8")
    p.add_argument("--no-fast", action="store_true",
                   help="run the plain float32 model (no BN folding, no reduced precision): the reference path")
    p.add_argument("--compile", action="store_true", help="torch.compile the fast model (slow start)")
    p.add_argument("--quiet", dest="detect_quiet", action="store_true",
                   help="no progress bar and no detection table (same as detkit -q)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from detkit.infer.detect import DetectOptions, run_detect

    quiet = bool(getattr(args, "quiet", False) or args.detect_quiet)
    opts = DetectOptions(weights=args.weights, names=args.names, source=args.source, out=args.out, cfg=args.cfg,
                         conf=args.conf, nms=args.nms, img_size=args.img_size, resize=args.resize, batch=args.batch,
                         device=args.device, classes=args.classes, no_images=args.no_images,
                         save_txt=args.save_txt, precision=args.precision, fast=not args.no_fast,
                         compile=args.compile, quiet=quiet, progress=sys.stderr.isatty(),
                         backend=args.backend)
    return run_detect(opts)
