"""Dataset description files: names files, ``obj.data``, ``data.yaml``, list files, YOLO labels.

Path rules (documented in docs/convert.md):

* ``obj.data`` / ``data.yaml`` entries (``train=``, ``valid=``, ``names=`` ...) that are relative
  are resolved against the data file's folder first, then the current directory (darknet's own
  files are written relative to the directory darknet runs in). ``data.yaml``'s ``path:`` (when
  given, relative to the YAML file's folder) is the root for ``train``/``val``.
* List files (``train.txt``) hold one image path per line; blank lines and lines starting with
  ``#`` are skipped. A relative entry (``./`` prefix optional) is resolved against the list file's
  folder first, then the extra bases given by the caller (the current directory for darknet's
  layout). Absolute paths and ``..`` are accepted: a list file is configuration the user chose,
  and detkit only ever *reads* the images it names; nothing is ever written next to them.
* :func:`label_path_for` follows darknet's rule: the last ``images`` or ``JPEGImages`` folder of
  the image path becomes ``labels``, the extension becomes ``.txt``; without such a folder the
  label sits beside the image (AlexeyAB's darknet does the same).

Every writer goes through :func:`write_text_atomic` (temporary file in the same folder, then
``os.replace``), so a crash never leaves a half-written file.
"""
from __future__ import annotations

import errno
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import yaml

from detkit.errors import AnnotationError, DataError
from detkit.fileio import write_bytes_atomic

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
#: YOLO label values may exceed [0, 1] by this much (rounding by other tools) before it is an error.
LABEL_TOLERANCE = 1e-3


# --------------------------------------------------------------------------- atomic writes

def write_text_atomic(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` (``\\n`` line endings kept as is) atomically; see :func:`write_bytes_atomic`."""
    write_bytes_atomic(path, text.encode(encoding))


def _read_lines(path: Path, what: str) -> list[str]:
    """UTF-8 (BOM tolerated) text file -> lines without line endings."""
    try:
        data = path.read_bytes()
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise AnnotationError(f"cannot read {what}: {getattr(exc, 'strerror', None) or exc}", path=path) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise AnnotationError(f"{what} is not UTF-8 text (byte {data[exc.start]:#04x})",
                              path=path, line=line) from None
    return text.splitlines()


# --------------------------------------------------------------------------- names

def read_names(path: str | os.PathLike) -> list[str]:
    """Read a names file (``obj.names``, ``coco.names``): one class name per line, line index = id.

    Surrounding whitespace is stripped; trailing blank lines are ignored.
    Raises:
        AnnotationError: unreadable file, no names, a blank line between names, or a duplicate name.
    """
    p = Path(path)
    lines = [ln.strip() for ln in _read_lines(p, "names file")]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise AnnotationError("names file has no class names", path=p)
    seen: dict[str, int] = {}
    for i, name in enumerate(lines, 1):
        if not name:
            raise AnnotationError("blank line between class names (it would shift every later class id)",
                                  path=p, line=i)
        if name in seen:
            raise AnnotationError(f"duplicate class name {name!r} (first on line {seen[name]})", path=p, line=i)
        seen[name] = i
    return lines


def write_names(path: str | os.PathLike, names: Sequence[str]) -> None:
    """Write one class name per line (UTF-8, ``\\n``), atomically."""
    for n in names:
        if not n.strip() or "\n" in n or "\r" in n:
            raise DataError(f"class name {n!r} cannot be written to a names file", path=path)
    write_text_atomic(path, "".join(f"{n}\n" for n in names))


# --------------------------------------------------------------------------- list files

def _resolve(entry: str, bases: Sequence[Path]) -> Path:
    """First existing ``base / entry`` (``entry`` absolute: itself); else the first candidate."""
    e = entry[2:] if entry.startswith("./") else entry
    p = Path(e)
    if p.is_absolute():
        return p
    candidates = [(b / p) for b in bases]
    for c in candidates:
        try:
            if c.exists():
                return c
        except OSError:  # e.g. a name too long: not there
            continue
    return candidates[0]


def read_list_file(path: str | os.PathLike, extra_bases: Sequence[str | os.PathLike] = (),
                   must_exist: bool = False) -> list[Path]:
    """Read a list file (one image path per line) -> image paths.

    Args:
        path: the list file.
        extra_bases: folders tried after the list file's own folder for relative entries
            (e.g. the current directory, darknet's convention).
        must_exist: raise when an entry is found under none of the bases.
    Returns:
        Paths in file order (relative entries joined to the first base where they exist, else to
        the list file's folder).
    Raises:
        AnnotationError: unreadable list file; DataError (file:line) for a missing image with
        ``must_exist``.
    """
    p = Path(path)
    bases = [p.parent] + [Path(b) for b in extra_bases]
    out = []
    for i, raw in enumerate(_read_lines(p, "list file"), 1):
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        img = _resolve(s, bases)
        if must_exist and not img.is_file():
            raise DataError(f"image {s!r} not found (looked in {', '.join(str(b) for b in bases)})",
                            path=p, line=i)
        out.append(img)
    return out


def write_list_file(path: str | os.PathLike, entries: Iterable[str]) -> None:
    """Write one entry per line (``\\n``), atomically."""
    write_text_atomic(path, "".join(f"{e}\n" for e in entries))


# --------------------------------------------------------------------------- data config

@dataclass(frozen=True)
class DataConfig:
    """A dataset description read from ``obj.data`` or ``data.yaml``.

    Attributes:
        names: class names, index = class id.
        train, val: image paths (resolved; ``val`` empty when the file has none).
        root: the folder relative entries were resolved against (the data file's folder, or
            ``data.yaml``'s ``path``).
        source: the data file.
        backup: darknet's ``backup=`` folder (resolved) when given, else None.
    """

    names: list[str]
    train: list[Path]
    val: list[Path]
    root: Path
    source: Path
    backup: Path | None = None

    @property
    def num_classes(self) -> int:
        return len(self.names)


def _images_from(entry: Path, source: Path, extra_bases: Sequence[Path]) -> list[Path]:
    """A train/val entry: a list file, a folder of images (recursive, sorted) or one image."""
    try:
        entry.stat()
    except (OSError, ValueError) as exc:
        if isinstance(exc, ValueError) or exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise DataError(f"unusable train/val entry {str(entry)[-80:]!r}: {getattr(exc, 'strerror', None) or exc}",
                            path=source) from None
    if entry.is_dir():
        return sorted(q for q in entry.rglob("*") if q.suffix.lower() in IMAGE_EXTENSIONS and q.is_file())
    if entry.suffix.lower() in IMAGE_EXTENSIONS:
        return [entry]
    if not entry.is_file():
        raise DataError(f"train/val entry not found: {str(entry)!r}"[:300], path=source)
    return read_list_file(entry, extra_bases=extra_bases)


def _parse_darknet_data(p: Path) -> dict[str, tuple[str, int]]:
    out: dict[str, tuple[str, int]] = {}
    for i, raw in enumerate(_read_lines(p, "data file"), 1):
        s = raw.strip()
        if not s or s.startswith("#") or s.startswith(";"):
            continue
        if "=" not in s:
            raise DataError(f"expected 'key = value', got {s!r}", path=p, line=i)
        k, v = (t.strip() for t in s.split("=", 1))
        out[k.lower()] = (v, i)
    return out


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` refusing aliases (``*name``): nested aliases expand exponentially when the
    values are used ("billion laughs"), and no data.yaml needs them."""

    def compose_node(self, parent, index):  # noqa: D102 - yaml Composer API
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in data.yaml",
                                              self.peek_event().start_mark)
        return super().compose_node(parent, index)


def load_data_config(path: str | os.PathLike) -> DataConfig:
    """Read ``obj.data`` (darknet ``key = value``) or ``data.yaml`` (``.yaml``/``.yml``).

    darknet keys: ``classes``, ``train``, ``valid``, ``names``, ``backup`` (others ignored).
    YAML keys: ``path`` (optional root), ``train``, ``val`` (a path or a list of paths: list files,
    image folders or images), ``names`` (list, or dict id -> name), optional ``nc``.
    Raises:
        DataError / AnnotationError naming the file (and line for ``obj.data``) on missing keys,
        a class count that disagrees with the names, or unreadable entries.
    """
    p = Path(path)
    here = p.absolute().parent
    cwd = Path.cwd()
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            doc = yaml.load(p.read_text(encoding="utf-8-sig"), Loader=_NoAliasLoader)
        except OSError as exc:
            raise DataError(f"cannot read data file: {exc.strerror or exc}", path=p) from None
        except UnicodeDecodeError as exc:
            raise DataError(f"data.yaml is not UTF-8 text (byte {exc.object[exc.start]:#04x})", path=p) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            why = (getattr(exc, "problem", None) or str(exc).strip() or type(exc).__name__).splitlines()[0]
            raise DataError(f"invalid YAML: {why}", path=p,
                            line=None if mark is None else mark.line + 1) from None
        if not isinstance(doc, dict):
            raise DataError("data.yaml must be a mapping with train/val/names", path=p)
        root = here
        if doc.get("path"):
            rp = Path(str(doc["path"]))
            root = rp if rp.is_absolute() else here / rp
        names_v = doc.get("names")
        if isinstance(names_v, dict):
            try:
                ids = sorted(int(k) for k in names_v)
            except (TypeError, ValueError):
                raise DataError(f"names keys must be class ids, got {list(names_v)!r}", path=p) from None
            if ids != list(range(len(ids))):
                raise DataError(f"names ids must be 0..{len(ids) - 1} without gaps, got {ids}", path=p)
            names = [str(names_v[k] if k in names_v else names_v[str(k)]) for k in ids]
        elif isinstance(names_v, list) and names_v:
            names = [str(n) for n in names_v]
        elif isinstance(names_v, str):  # a names file
            names = read_names(_resolve(names_v, [root, here, cwd]))
        else:
            raise DataError("data.yaml has no 'names' (list or id -> name mapping)", path=p)
        if not names:
            raise DataError("data.yaml has an empty 'names'", path=p)
        nc = doc.get("nc")
        try:
            nc_ok = nc is None or int(nc) == len(names)
        except (TypeError, ValueError, OverflowError):
            nc_ok = False
        if not nc_ok:
            raise DataError(f"nc: {nc!r} disagrees with {len(names)} names"[:200], path=p)

        def entries(key: str) -> list[Path]:
            v = doc.get(key)
            if v is None:
                return []
            items = v if isinstance(v, list) else [v]
            out: list[Path] = []
            for it in items:
                out += _images_from(_resolve(str(it), [root, here, cwd]), p, [root, cwd])
            return out

        if doc.get("train") is None:
            raise DataError("data.yaml has no 'train'", path=p)
        return DataConfig(names=names, train=entries("train"), val=entries("val"), root=root, source=p)

    kv = _parse_darknet_data(p)
    for key in ("train", "names"):
        if key not in kv or not kv[key][0]:
            raise DataError(f"missing '{key} =' line", path=p)
    names_path = _resolve(kv["names"][0], [here, cwd])
    names = read_names(names_path)
    if "classes" in kv:
        v, line = kv["classes"]
        try:
            classes = int(v)
        except ValueError:
            raise DataError(f"classes = {v!r} is not an integer", path=p, line=line) from None
        if classes != len(names):
            raise DataError(f"classes = {classes} but {names_path} has {len(names)} names", path=p, line=line)
    train = _images_from(_resolve(kv["train"][0], [here, cwd]), p, [cwd])
    val: list[Path] = []
    if "valid" in kv and kv["valid"][0]:
        val = _images_from(_resolve(kv["valid"][0], [here, cwd]), p, [cwd])
    backup = _resolve(kv["backup"][0], [here, cwd]) if kv.get("backup", ("", 0))[0] else None
    return DataConfig(names=names, train=train, val=val, root=here, source=p, backup=backup)


# --------------------------------------------------------------------------- YOLO labels

def label_path_for(image_path: str | os.PathLike) -> Path:
    """Image path -> YOLO label path (darknet rule, see module docstring)."""
    p = Path(image_path)
    parts = list(p.parts)
    for i in range(len(parts) - 2, -1, -1):  # folders only, last match wins
        if parts[i] in ("images", "JPEGImages"):
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def read_yolo_labels(path: str | os.PathLike, num_classes: int | None = None,
                     missing_ok: bool = False) -> np.ndarray:
    """Read a YOLO label file -> float64 array (K, 5): class, cx, cy, w, h (normalised).

    Args:
        num_classes: when given, class ids must be in ``[0, num_classes)``.
        missing_ok: a missing file reads as no objects (darknet's behaviour) instead of an error.
    Raises:
        AnnotationError with file:line on a line that does not have 5 fields, a non-numeric or
        non-integer class, a class out of range, a non-finite value, or a coordinate outside
        ``[0, 1]`` by more than :data:`LABEL_TOLERANCE`.
    """
    p = Path(path)
    if missing_ok and not p.exists():
        return np.zeros((0, 5), dtype=np.float64)
    rows = []
    for i, raw in enumerate(_read_lines(p, "label file"), 1):
        s = raw.strip()
        if not s:
            continue
        f = s.split()
        if len(f) != 5:
            raise AnnotationError(f"expected 5 fields 'class cx cy w h', got {len(f)}: {s!r}", path=p, line=i)
        try:
            vals = [float(x) for x in f]
        except ValueError:
            raise AnnotationError(f"non-numeric value in {s!r}", path=p, line=i) from None
        if not all(math.isfinite(v) for v in vals):
            raise AnnotationError(f"non-finite value in {s!r}", path=p, line=i)
        c = vals[0]
        if c != int(c) or c < 0:
            raise AnnotationError(f"class id {f[0]!r} is not a non-negative integer", path=p, line=i)
        if num_classes is not None and c >= num_classes:
            raise AnnotationError(f"class id {int(c)} out of range (dataset has {num_classes} classes)",
                                  path=p, line=i)
        for name, v in zip(("cx", "cy", "w", "h"), vals[1:]):
            if v < -LABEL_TOLERANCE or v > 1 + LABEL_TOLERANCE:
                raise AnnotationError(f"{name} = {v} outside [0, 1] (labels must be normalised)", path=p, line=i)
        rows.append(vals)
    if not rows:
        return np.zeros((0, 5), dtype=np.float64)
    return np.asarray(rows, dtype=np.float64)


def format_yolo_labels(rows: np.ndarray | Sequence[Sequence[float]]) -> str:
    """(K, 5) class, cx, cy, w, h -> label file text, 6 decimals, one line per row."""
    a = np.asarray(rows, dtype=np.float64).reshape(-1, 5)
    return "".join(f"{int(r[0])} {r[1]:.6f} {r[2]:.6f} {r[3]:.6f} {r[4]:.6f}\n" for r in a)


def write_yolo_labels(path: str | os.PathLike, rows: np.ndarray | Sequence[Sequence[float]]) -> None:
    """Write a YOLO label file (6 decimals) atomically; an empty ``rows`` gives an empty file."""
    write_text_atomic(path, format_yolo_labels(rows))
