"""Data: images (robust reading, letterbox), annotation records, file readers and writers (VOC XML,
YOLO labels, names / list / obj.data / data.yaml files), ASCII-safe names, the training dataset
and its augmentations, class-balance sampling, anchors, dataset statistics and the demo's
synthetic dataset.

May import: the leaf modules (detkit.errors, detkit.boxes, detkit.fileio) only.
"""
