"""Output folder safety and writing for ``detkit convert-voc``.

OUT is built in a hidden sibling folder (``.OUT.tmp-<pid>``) and renamed into place at the end,
so OUT is either the previous complete result or the new complete result, never a half-written
one; SRC is only read. An existing OUT is replaced only when it is empty or an earlier
convert-voc output holding nothing else (``--force`` replaces anything); build folders and
moved-aside outputs left by killed runs are tidied up by the next run.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Iterable

import yaml

from detkit.convert.discovery import inside
from detkit.convert.records import log
from detkit.errors import DataError

TOOL = "detkit convert-voc"
#: Every tool whose output a later run may replace (the ``tool`` field of ``convert_report.json``).
TOOLS = (TOOL, "detkit convert")
REPORT_NAME = "convert_report.json"
#: Top-level entries of OUT written by convert-voc / convert (anything else in an old OUT needs --force).
OUT_ENTRIES = {"images", "labels", "backup", "train.txt", "val.txt", "test.txt", "obj.names", "obj.data",
               "data.yaml", "rename_map.csv", REPORT_NAME, "annotations", "Annotations", "JPEGImages",
               "ImageSets"}


def _is_detkit_output(out: Path) -> bool:
    try:
        doc = json.loads((out / REPORT_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("tool") in TOOLS


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def has_files(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def clean_stale(out: Path) -> None:
    """Tidy up after killed runs (their process is gone).

    A build folder (``.OUT.tmp-<pid>``) is deleted. A previous output moved aside
    (``.OUT.old-<pid>``, killed between the two renames) is put back when OUT is missing, else
    deleted -- unless it still holds darknet weights in ``backup/``, which are never deleted.
    """
    if not out.parent.is_dir():
        return
    for p in sorted(out.parent.iterdir()):
        for tag in (".tmp-", ".old-"):
            prefix = f".{out.name}{tag}"
            if not (p.name.startswith(prefix) and p.name[len(prefix):].isdigit()):
                continue
            if _pid_alive(int(p.name[len(prefix):])):
                continue
            if tag == ".old-" and not out.exists():
                os.replace(p, out)
                log.warning("restored %s from an interrupted run", out)
            elif has_files(p / "backup"):
                log.warning("left %s in place: its backup/ holds files", p)
            else:
                shutil.rmtree(p, ignore_errors=True)


def place_image(src: str, dst: str, mode: str, kind: str | None = None) -> str:
    """Put one image into the build folder: hard link (``mode="link"``, copy where refused) or copy;
    BMP (by extension, or ``kind=".bmp"`` from the content) is re-encoded as PNG. Returns how."""
    if (kind or os.path.splitext(src)[1].lower()) == ".bmp":
        from PIL import Image  # BMP -> PNG, pixel-identical
        with Image.open(src) as im:
            buf = io.BytesIO()
            im.save(buf, "PNG")
        write_new(dst, buf.getvalue())
        return "png"
    if mode == "link":
        try:
            os.link(src, dst)
            return "link"
        except OSError:
            pass
    shutil.copyfile(src, dst)
    return "copy"


def write_label_pair(tmp: str, stem: str, text: str, on_write: Callable[[Path], None] | None = None) -> None:
    """``labels/<stem>.txt`` and the same file beside the image, ``images/<stem>.txt`` (AlexeyAB's
    darknet looks there): a hard link, a copy where links are refused. ``on_write`` (the
    converters' test seam) is called with the label's path before it is written."""
    label = os.path.join(tmp, "labels", stem + ".txt")
    if on_write is not None:
        on_write(Path(label))
    write_new(label, text)
    side = os.path.join(tmp, "images", stem + ".txt")
    try:
        os.link(label, side)
    except OSError:
        shutil.copyfile(label, side)


def rename_map_text(rows: Iterable[tuple[str, str, str]]) -> str:
    """``rename_map.csv`` text from (kind, source, output) rows."""
    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(("source", "output", "kind"))
    wr.writerows((s, o, k) for k, s, o in rows)
    return buf.getvalue()


def write_yolo_files(tmp: Path, lists: dict[str, list[str]], class_names: tuple[str, ...], tool: str,
                     write: Callable[[Path, str], None]) -> None:
    """The dataset files of a YOLO OUT: ``train.txt``/``val.txt``[/``test.txt``] (entries given, one
    per line), ``obj.names``, ``obj.data`` and ``data.yaml`` (``test`` only when listed)."""
    for s, entries in lists.items():
        write(tmp / f"{s}.txt", "".join(f"{e}\n" for e in entries))
    write(tmp / "obj.names", "".join(f"{n}\n" for n in class_names))
    write(tmp / "obj.data", f"classes = {len(class_names)}\ntrain = train.txt\nvalid = val.txt\n"
                             "names = obj.names\nbackup = backup/\n")
    doc = {"train": "train.txt", "val": "val.txt"}
    if "test" in lists:
        doc["test"] = "test.txt"
    doc["nc"] = len(class_names)
    doc["names"] = list(class_names)
    write(tmp / "data.yaml", f"# written by {tool}; paths are relative to this file's folder\n"
          + yaml.safe_dump(doc, allow_unicode=True, sort_keys=False))


def build_out(out: Path, build: Callable[[Path], None]) -> None:
    """Run ``build(tmp)`` in a hidden sibling folder, then swap it in as OUT (module docstring).

    Anything ``build`` raises leaves OUT as it was (the build folder is removed). Weights darknet
    saved in the previous OUT's ``backup/`` are carried over.
    """
    clean_stale(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        build(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        if has_files(old / "backup"):  # darknet's weights from training on the previous output: keep them
            if (out / "backup").is_dir():
                shutil.rmtree(out / "backup")
            os.replace(old / "backup", out / "backup")
        shutil.rmtree(old, ignore_errors=True)


def write_new(path: str, data: str | bytes) -> None:
    """Create a new file inside the build folder (the folder as a whole is renamed into place)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data.encode("utf-8") if isinstance(data, str) else data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def check_paths(src: Path, out: Path, force: bool) -> None:
    if not src.is_dir():
        raise DataError("SRC is not a folder", path=src)
    rs, ro = src.resolve(), out.resolve()
    if inside(ro, rs):
        raise DataError(f"OUT must not be inside SRC ({src}): SRC is never modified", path=out)
    if inside(rs, ro):
        raise DataError(f"OUT must not contain SRC ({src})", path=out)
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise DataError("OUT exists and is not a folder", path=out)
        if force or not any(out.iterdir()):
            return
        if not _is_detkit_output(out):
            raise DataError("OUT exists and is not an earlier detkit convert-voc / convert output; "
                            "use --force to replace it", path=out)
        extra = sorted(p.name for p in out.iterdir() if p.name not in OUT_ENTRIES)
        if extra:
            raise DataError(f"OUT holds files convert-voc did not write ({', '.join(extra[:5])}); they would be "
                            "deleted: move them away or use --force", path=out)
