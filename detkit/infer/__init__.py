"""Inference: getting a runnable model from files (darknet weights, checkpoints, ONNX), the PyTorch
fast path, the onnxruntime backend, batched prediction with overlapped decoding, image/video
sources, drawing and the output writers of ``detkit detect``, and export (ONNX, TorchScript,
darknet, int8 quantisation).

May import: detkit.darknet, detkit.yolo, detkit.data, detkit.checkpoint and the leaf modules.
"""
