"""YOLO / darknet dataset layouts: which images a dataset folder holds, in which split, with
which label file and class names.

Recognised (first match wins):

* ``data.yaml`` (or another ``*.yaml`` with ``names``) in the folder: ultralytics layout, including
  ``path:``, split folders (``images/train``) and list files; ``train``, ``val`` and ``test``;
* ``obj.data`` (or another ``*.data``): darknet; ``train =``, ``valid =`` and a ``test.txt`` beside it;
* a plain folder: every image under it that has a label file (darknet's rule
  ``images``/``JPEGImages`` -> ``labels``, else the ``.txt`` beside the image), split from a
  folder named ``train``/``val``/``valid``/``test`` on its path; class names from ``obj.names``,
  ``classes.txt``, ``names.txt`` or the only ``*.names`` file.

Label files: one object per line, ``class cx cy w h`` normalised (:func:`parse_label_line`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from detkit.data.datafiles import (
    IMAGE_EXTENSIONS,
    label_path_for,
    load_data_config,
    read_list_file,
    read_names,
)
from detkit.errors import DataError

SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
NAMES_FILES = ("obj.names", "classes.txt", "names.txt")


@dataclass(frozen=True)
class YoloLayout:
    """A YOLO dataset: class names, and per image (path, split or None, label file)."""

    names: list[str]
    images: list[tuple[Path, str | None, Path]]
    config: Path | None


def label_file_for(image: Path) -> Path:
    """darknet's rule (``images``/``JPEGImages`` -> ``labels``) when that file exists, else beside."""
    p = label_path_for(image)
    if p.is_file():
        return p
    return image.with_suffix(".txt")


def _entries(v, root: Path, source: Path) -> list[Path]:
    items = v if isinstance(v, list) else [v]
    out: list[Path] = []
    for it in items:
        p = Path(str(it))
        p = p if p.is_absolute() else root / p
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTENSIONS and q.is_file())
        elif p.suffix.lower() in IMAGE_EXTENSIONS:
            out.append(p)
        elif p.is_file():
            out += read_list_file(p)
        else:
            raise DataError(f"test entry not found: {str(it)!r}"[:300], path=source)
    return out


def _test_images(cfg_path: Path, root: Path) -> list[Path]:
    if cfg_path.suffix.lower() in (".yaml", ".yml"):
        doc = yaml.safe_load(cfg_path.read_text(encoding="utf-8-sig"))
        v = doc.get("test") if isinstance(doc, dict) else None
        return _entries(v, root, cfg_path) if v else []
    t = cfg_path.parent / "test.txt"
    return read_list_file(t) if t.is_file() else []


def _config(src: Path) -> Path | None:
    for pattern in ("data.yaml", "*.yaml", "*.yml", "obj.data", "*.data"):
        for p in sorted(src.glob(pattern)):
            if p.is_file():
                if p.suffix.lower() in (".yaml", ".yml"):
                    try:
                        doc = yaml.safe_load(p.read_text(encoding="utf-8-sig"))
                    except (yaml.YAMLError, UnicodeDecodeError, OSError):
                        doc = None
                    if not isinstance(doc, dict) or "names" not in doc:
                        continue
                return p
    return None


def names_file(src: Path) -> Path | None:
    for n in NAMES_FILES:
        if (src / n).is_file():
            return src / n
    found = sorted(src.glob("*.names"))
    return found[0] if len(found) == 1 else None


def find_yolo_layout(src: Path) -> YoloLayout:
    """The dataset under ``src`` (module docstring); DataError naming the file when unusable."""
    cfg_path = _config(src)
    if cfg_path is not None:
        cfg = load_data_config(cfg_path)
        images: list[tuple[Path, str | None, Path]] = []
        for split, paths in (("train", cfg.train), ("val", cfg.val), ("test", _test_images(cfg_path, cfg.root))):
            images += [(p, split, label_file_for(p)) for p in paths]
        return YoloLayout(list(cfg.names), images, cfg_path)
    nf = names_file(src)
    if nf is None:
        raise DataError("no class names: a YOLO folder needs data.yaml, obj.data, obj.names or classes.txt", path=src)
    names = read_names(nf)
    images = []
    for p in sorted(src.rglob("*")):
        if p.suffix.lower() not in IMAGE_EXTENSIONS or not p.is_file():
            continue
        lab = label_file_for(p)
        if not lab.is_file():
            continue
        parts = p.relative_to(src).parts[:-1]
        split = next((SPLIT_FOLDERS[x.lower()] for x in parts if x.lower() in SPLIT_FOLDERS), None)
        images.append((p, split, lab))
    return YoloLayout(names, images, None)


def parse_label_line(s: str, num_classes: int) -> tuple[int, float, float, float, float] | str:
    """One label line -> (class, cx, cy, w, h), or the reason it is unusable (a string)."""
    f = s.split()
    if len(f) != 5:
        return f"expected 5 fields 'class cx cy w h', got {len(f)}: {s!r}"[:200]
    try:
        vals = [float(x) for x in f]
    except ValueError:
        return f"non-numeric value in {s!r}"[:200]
    if not all(math.isfinite(v) for v in vals):
        return f"non-finite value in {s!r}"[:200]
    c = vals[0]
    if c != int(c) or c < 0 or c >= num_classes:
        return f"class id {f[0]!r} is not one of 0..{num_classes - 1}"
    return int(c), vals[1], vals[2], vals[3], vals[4]
