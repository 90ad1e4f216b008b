"""YOLO head maths: decoding, targets, loss, post-processing."""
