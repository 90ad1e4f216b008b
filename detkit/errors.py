"""Errors a user can cause. The CLI prints them as one line: ``detkit: error: <message>``.

Every subclass carries enough context (file, line, value) to be fixed without a traceback.
"""
from __future__ import annotations

import os


class DetkitError(Exception):
    """Base class for every error caused by user input (files, values, CLI arguments)."""

    def __init__(self, message: str, *, path: str | os.PathLike | None = None, line: int | None = None):
        self.message = message
        self.path = None if path is None else os.fspath(path)
        self.line = line
        super().__init__(self.__str__())

    def __str__(self) -> str:
        if self.path is None:
            return self.message
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: {self.message}"


class CfgError(DetkitError):
    """A darknet .cfg file is malformed, names an unknown section, or builds an impossible network."""


class WeightsError(DetkitError):
    """A darknet .weights file or a checkpoint is truncated, oversized or does not fit the model."""


class AnnotationError(DetkitError):
    """An annotation (VOC XML, YOLO label, COCO JSON, names/data/list file) cannot be used."""


class ImageError(DetkitError):
    """An image cannot be decoded (missing, truncated, unsupported)."""


class DataError(DetkitError):
    """A dataset description (obj.data, data.yaml, list files) is inconsistent."""


class EvalError(DetkitError):
    """Ground truth and predictions cannot be evaluated together."""


class TrainError(DetkitError):
    """Training cannot start or continue (bad settings, non-finite loss, bad checkpoint)."""
