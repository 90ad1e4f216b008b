"""Training: the loop (:mod:`detkit.train.trainer`), its settings, setup before the loop, LR schedules,
EMA, torch.distributed helpers, validation during training and the run folder's outputs.

May import: detkit.infer (model loading), detkit.darknet, detkit.yolo (loss), detkit.data (dataset,
transforms, sampling), detkit.metrics, detkit.checkpoint and the leaf modules. Nothing below it
imports detkit.train.
"""
