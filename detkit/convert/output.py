"""Output folder safety and writing for ``detkit convert-voc``.

OUT is built in a hidden sibling folder (``.OUT.tmp-<pid>``) and renamed into place at the end,
so OUT is either the previous complete result or the new complete result, never a half-written
one; SRC is only read. An existing OUT is replaced only when it is empty or an earlier
convert-voc output holding nothing else (``--force`` replaces anything); build folders and
moved-aside outputs left by killed runs are tidied up by the next run.
"""
from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

from detkit.convert.discovery import inside
from detkit.convert.records import log
from detkit.errors import DataError

TOOL = "detkit convert-voc"
REPORT_NAME = "convert_report.json"
#: Top-level entries of OUT written by convert-voc (anything else in an old OUT needs --force).
OUT_ENTRIES = {"images", "labels", "backup", "train.txt", "val.txt", "test.txt", "obj.names", "obj.data",
               "data.yaml", "rename_map.csv", REPORT_NAME}


def _is_detkit_output(out: Path) -> bool:
    try:
        doc = json.loads((out / REPORT_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("tool") == TOOL


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
            raise DataError("OUT exists and is not an earlier detkit convert-voc output; "
                            "use --force to replace it", path=out)
        extra = sorted(p.name for p in out.iterdir() if p.name not in OUT_ENTRIES)
        if extra:
            raise DataError(f"OUT holds files convert-voc did not write ({', '.join(extra[:5])}); they would be "
                            "deleted: move them away or use --force", path=out)
