"""Evaluation on files: ground-truth readers (COCO JSON, VOC XML, YOLO datasets), prediction readers
(COCO results, comp4, per-image txt, YOLO), one coordinate space per metric, scoring with
:mod:`detkit.metrics`, and the report files (JSON, plots).

May import: detkit.metrics, detkit.data (file readers), detkit.infer (to run a model first) and the
leaf modules.
"""
