"""``detkit eval``: score detections against ground truth with VOC (devkit) or COCO (pycocotools) rules."""
from __future__ import annotations

import argparse
import logging

from detkit.errors import EvalError

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="VOC / COCO mAP of predictions (files, or a model run on the validation list)",
        description="Score detections against ground truth. GT: COCO annotations JSON, a VOC folder "
                    "(Annotations/, a VOC year root, or a folder of XML), or a YOLO dataset (obj.data, "
                    "data.yaml, list file). PRED: COCO results JSON, comp4_det_test_<class>.txt files, "
                    "or a folder of per-image txt (YOLO 'class cx cy w h score' or 'name score x1 y1 x2 y2'). "
                    "Or --cfg/--weights/--data to run a model on the validation list first.",
    )
    p.add_argument("--metric", choices=("voc", "voc07", "coco"), default="voc",
                   help="voc: all-point AP (VOC2010+); voc07: 11-point; coco: the 12 COCOeval stats (default voc)")
    p.add_argument("--gt", metavar="GT", help="ground truth (see above)")
    p.add_argument("--pred", metavar="PRED", help="predictions (see above)")
    p.add_argument("--pred-format", choices=("auto", "coco", "comp4", "txt", "yolo"), default="auto",
                   help="prediction format (default: guessed from PRED)")
    p.add_argument("--names", metavar="FILE", help="class names file (one per line); fixes the class order")
    p.add_argument("--image-set", metavar="NAME", help="VOC root: evaluate only ImageSets/Main/NAME.txt")
    p.add_argument("--iou", type=float, default=0.5, help="IoU threshold of VOC AP and of the counts (default 0.5)")
    p.add_argument("--conf", type=float, default=0.25,
                   help="score threshold of the TP/FP/FN counts; AP uses every detection (default 0.25)")
    p.add_argument("--json", metavar="OUT", help="write the results as JSON")
    p.add_argument("--plots", metavar="DIR", help="write PR curves, confusion matrix and PR points CSV here")
    a = p.add_argument_group("error analysis (any of these also prints the error breakdown and the best-F1 "
                             "thresholds, and adds 'errors' and 'best_f1' to --json)")
    a.add_argument("--errors", action="store_true",
                   help="TIDE error breakdown (dAP per error type) and the F1-optimal confidence per class")
    a.add_argument("--per-image", metavar="OUT", help="per-image TP/FP/FN and error types, worst first (.csv or .jsonl)")
    a.add_argument("--report", metavar="DIR", help="write DIR/report.html: one self-contained HTML report")
    a.add_argument("--images", metavar="DIR",
                   help="image folder for the report's galleries (default: the images the ground truth names)")
    po = p.add_mutually_exclusive_group()
    po.add_argument("--no-plus-one", dest="plus_one", action="store_const", const=False, default=None,
                    help="VOC: IoU without the devkit's +1 pixel (default: +1 on VOC XML ground truth)")
    po.add_argument("--plus-one", dest="plus_one", action="store_const", const=True,
                    help="VOC: force the +1 pixel IoU")
    p.add_argument("--iou-rule", choices=(">=", ">"), default=">=",
                   help="VOC match rule: '>=' (devkit, default) or '>' (py-faster-rcnn)")
    m = p.add_argument_group("model-driven evaluation")
    m.add_argument("--cfg", metavar="CFG", help="darknet .cfg of the model to run")
    m.add_argument("--weights", metavar="W",
                   help="darknet .weights, a detkit checkpoint, or an .onnx / OpenVINO .xml model from detkit export "
                        "(float32/int8)")
    m.add_argument("--data", metavar="DATA", help="obj.data / data.yaml whose validation list is scored")
    m.add_argument("--img-size", type=int, default=None, help="network input size (default: the cfg's width)")
    m.add_argument("--nms", type=float, default=0.45, help="NMS IoU threshold (default 0.45)")
    m.add_argument("--pred-conf", type=float, default=0.005,
                   help="score threshold of the model's detections kept for AP (default 0.005)")
    m.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    m.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto)")
    m.add_argument("--save-pred", metavar="OUT.json", help="also write the model's detections as COCO results JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from detkit.evaluate.analysis_outputs import AnalysisRequest, run_analysis
    from detkit.evaluate.run import evaluate_files, evaluate_model

    names = None
    if args.names:
        from detkit.data.datafiles import read_names
        names = read_names(args.names)
    model_mode = any(x is not None for x in (args.cfg, args.weights, args.data))
    if model_mode:
        if args.pred or args.gt:
            raise EvalError("use either --gt/--pred or --cfg/--weights/--data, not both")
        onnx = bool(args.weights) and str(args.weights).lower().endswith((".onnx", ".xml"))
        if not ((args.cfg or onnx) and args.weights and args.data):
            raise EvalError("model-driven evaluation needs --cfg, --weights and --data (no --cfg for an .onnx or .xml model)")
        run_ = evaluate_model(args.cfg, args.weights, args.data, metric=args.metric, names=names,
                              iou_threshold=args.iou, conf_threshold=args.conf, img_size=args.img_size,
                              nms=args.nms, pred_conf=args.pred_conf, batch_size=args.batch_size,
                              save_pred=args.save_pred, plus_one=args.plus_one, iou_rule=args.iou_rule,
                              device=args.device)
        sources = {"cfg": args.cfg, "weights": args.weights, "data": args.data}
    else:
        if not (args.gt and args.pred):
            raise EvalError("detkit eval needs --gt and --pred (or --cfg, --weights and --data)")
        run_ = evaluate_files(args.gt, args.pred, metric=args.metric, names=names, iou_threshold=args.iou,
                              conf_threshold=args.conf, plus_one=args.plus_one, iou_rule=args.iou_rule,
                              pred_format=args.pred_format, image_set=args.image_set)
        sources = {"gt": args.gt, "pred": args.pred}
    rep = run_.report
    if not getattr(args, "quiet", False):
        print(f"# {rep.n_images} images, {rep.n_detections} detections, {len(rep.classes)} classes")
    print(rep.format_table())
    extra = None
    request = AnalysisRequest(errors=args.errors, report_dir=args.report, per_image=args.per_image,
                              images_dir=args.images)
    if request.wanted:
        out = run_analysis(run_, request)
        print(out.text)
        extra = out.analysis.to_dict()
        if out.per_image is not None:
            log.info("wrote %s", out.per_image)
        if out.report is not None:
            log.info("wrote %s (%.2f MB, %d thumbnails)", out.report.path, out.report.size_bytes / 1e6,
                     out.report.thumbnails)
    if args.json or args.plots:
        from detkit.evaluate.outputs import write_report_json, write_report_plots

        if args.json:
            write_report_json(run_, args.json, sources, extra)
            log.info("wrote %s", args.json)
        if args.plots:
            files = write_report_plots(run_, args.plots, iou_threshold=args.iou, conf_threshold=args.conf)
            log.info("wrote %d plot files into %s", len(files), args.plots)
    return 0
