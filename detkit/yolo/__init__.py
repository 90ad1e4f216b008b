"""YOLO head maths: decoding raw head outputs into boxes, target assignment, the loss, and
post-processing (score threshold, per-class NMS, boxes back to original-image pixels).

May import: the leaf modules (detkit.errors, detkit.boxes, detkit.fileio) only.
"""
