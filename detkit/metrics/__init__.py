"""Detection metrics: Pascal VOC (devkit rules) and COCO (pycocotools rules), vectorised with numpy.

Public API (each name in its own module; this package re-exports nothing)::

    from detkit.metrics.records import ImageGT, ImageDets
    from detkit.metrics.evaluator import evaluate
    report = evaluate(gt_list, det_list, class_names, metric="voc")   # or "voc07", "coco"
    report.map, report.classes, report.stats, report.to_dict()

Depends only on numpy, :mod:`detkit.errors` and :mod:`detkit.boxes`.
"""
