"""Detection metrics: Pascal VOC (devkit rules) and COCO (pycocotools rules), vectorised with numpy.

Public API::

    from detkit.metrics import ImageGT, ImageDets, evaluate
    report = evaluate(gt_list, det_list, class_names, metric="voc")   # or "voc07", "coco"
    report.map, report.classes, report.stats, report.to_dict()

Depends only on numpy, :mod:`detkit.errors` and :mod:`detkit.boxes`.
"""
from detkit.metrics.evaluator import METRICS, convention_text, evaluate
from detkit.metrics.records import DetTable, GTTable, ImageDets, ImageGT, tables_from_images
from detkit.metrics.report import ClassResult, EvalReport, PRCurve

__all__ = [
    "METRICS", "ClassResult", "DetTable", "EvalReport", "GTTable", "ImageDets", "ImageGT", "PRCurve",
    "convention_text", "evaluate", "tables_from_images",
]
