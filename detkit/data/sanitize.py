"""ASCII-safe, darknet-safe file and folder names, deterministic and collision-free.

Rule for one name (a folder, or a file's stem; the extension is handled separately):

1. Unicode NFKC, then every non-ASCII character is transliterated with ``anyascii`` (ISC licence).
   Characters that are whole syllables (CJK ideographs, kana, Hangul) are set apart with ``_`` so
   ``猫咪`` becomes ``mao_mi`` rather than ``maomi``.
2. Lower-case; every character outside ``[a-z0-9_-]`` (dots and spaces included) becomes ``_``;
   runs of ``_`` collapse to one; leading/trailing ``_``, ``-`` are stripped; at most 80 characters.
   An empty result becomes ``unnamed``; Windows device names (``con``, ``nul``...) get a ``_``.
   No dot in a stem keeps darknet's first-match extension replacement (``.jpg`` -> ``.txt``) safe.
3. Extensions are lower-cased with ``.jpeg`` written as ``.jpg`` (same bytes; pjreddie's darknet
   only recognises ``.jpg``/``.png``/``.JPG``/``.JPEG``).
4. Collisions: names share one namespace per output folder, compared by stem (two images
   ``a.jpg`` and ``a.png`` would share the label ``a.txt``) and case-insensitively. Names that
   are already safe keep their name; the others are processed in sorted order of their original
   path and take ``_1``, ``_2``... Folders named ``images``, ``labels`` or ``jpegimages`` are
   renamed too (``images_1``) so label-path rules that look for the last ``/images/`` stay exact.

:func:`sanitize_paths` maps a set of relative paths at once, so the result depends only on the set,
never on directory-listing order.
"""
from __future__ import annotations

import os
import re
import unicodedata
from pathlib import PurePosixPath
from typing import Iterable

from anyascii import anyascii

_UNSAFE = re.compile(r"[^a-z0-9_-]+")
_RUNS = re.compile(r"_+")
_SYLLABIC = ("CJK UNIFIED IDEOGRAPH", "CJK COMPATIBILITY IDEOGRAPH", "HIRAGANA", "KATAKANA",
             "HANGUL SYLLABLE", "YI SYLLABLE")
_WINDOWS_DEVICES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
                    *(f"lpt{i}" for i in range(1, 10))}
_RESERVED_FOLDERS = {"images", "labels", "jpegimages"}
_EXT_ALIASES = {".jpeg": ".jpg"}
MAX_STEM = 80


def _transliterate(text: str) -> str:
    out = []
    for ch in unicodedata.normalize("NFKC", text):
        if ch.isascii():
            out.append(ch)
            continue
        t = anyascii(ch)
        name = unicodedata.name(ch, "")
        if name.startswith(_SYLLABIC):
            out.append(f"_{t}_")
        else:
            out.append(t)
    return "".join(out)


def safe_stem(name: str) -> str:
    """One folder name or file stem -> ASCII-safe form (rules 1-2 of the module docstring)."""
    s = _UNSAFE.sub("_", _transliterate(name).lower())
    s = _RUNS.sub("_", s).strip("_-")
    s = s[:MAX_STEM].rstrip("_-") or "unnamed"
    if s in _WINDOWS_DEVICES:
        s += "_"
    return s


def safe_extension(suffix: str, aliases: dict[str, str] | None = None) -> str:
    """``.JPEG`` -> ``.jpg``, ``.PNG`` -> ``.png``; anything unsafe in it -> removed.

    ``aliases`` maps lower-case extensions to the ones written (default ``{".jpeg": ".jpg"}``).
    """
    if not suffix:
        return ""
    e = "." + re.sub(r"[^a-z0-9]", "", _transliterate(suffix[1:]).lower())
    if e == ".":
        return ""
    return (_EXT_ALIASES if aliases is None else aliases).get(e, e)


def safe_filename(name: str) -> str:
    """File name -> ``safe_stem(stem) + safe_extension(suffix)`` (no collision handling)."""
    p = PurePosixPath(name)
    return safe_stem(p.stem if p.suffix else name) + safe_extension(p.suffix)


def _with_counter(stem: str, ext: str, n: int) -> str:
    return f"{stem}_{n}{ext}"


def sanitize_paths(paths: Iterable[str], ext_aliases: dict[str, str] | None = None) -> dict[str, str]:
    """Map relative POSIX file paths to unique ASCII-safe relative paths.

    Args:
        paths: relative paths of files (``/``-separated, no ``..``); folders are implied.
        ext_aliases: extension rewrites (see :func:`safe_extension`).
    Returns:
        ``{original file path: new file path}`` for every input, plus one entry
        ``{original folder path + "/": new folder path + "/"}`` for every folder on the way
        (trailing ``/`` marks folders). Deterministic: depends only on the set of inputs.
    """
    files = sorted(set(paths))
    # Build the tree: folder -> (subfolders, files), originals.
    folders: set[str] = set()
    for f in files:
        parts = f.split("/")
        if not f or f.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"not a safe relative path: {f!r}")
        for i in range(1, len(parts)):
            folders.add("/".join(parts[:i]))
    mapping: dict[str, str] = {}
    folder_map: dict[str, str] = {"": ""}

    def parent_of(p: str) -> str:
        return p.rsplit("/", 1)[0] if "/" in p else ""

    # children per source folder: entries (name, is_folder)
    children: dict[str, list[tuple[str, bool]]] = {}
    for d in sorted(folders):
        children.setdefault(parent_of(d), []).append((d, True))
    for f in files:
        children.setdefault(parent_of(f), []).append((f, False))

    def resolve(src_folder: str) -> None:
        out_folder = folder_map[src_folder]
        entries = sorted(children.get(src_folder, []))
        taken: set[str] = set()  # collision keys (lower-case stems / folder names)
        wanted = {}
        for path, is_folder in entries:
            base = path.rsplit("/", 1)[-1]
            if is_folder:
                stem, ext = safe_stem(base), ""
            else:
                root, suffix = os.path.splitext(base)
                stem, ext = (safe_stem(root), safe_extension(suffix, ext_aliases)) if suffix else (safe_stem(base), "")
            wanted[path] = (stem, ext, is_folder, (stem + ext) == base and not
                            (is_folder and stem in _RESERVED_FOLDERS))
        taken.update(_RESERVED_FOLDERS)
        # unchanged names first, then the others in sorted order
        order = [p for p, _ in entries if wanted[p][3]] + [p for p, _ in entries if not wanted[p][3]]
        for path in order:
            stem, ext, is_folder, _ = wanted[path]
            key = stem
            if key in taken:
                n = 1
                while f"{stem}_{n}" in taken:
                    n += 1
                key = f"{stem}_{n}"
            taken.add(key)
            new = (out_folder + "/" if out_folder else "") + key + ext
            if is_folder:
                folder_map[path] = new
            else:
                mapping[path] = new
        for path, is_folder in entries:
            if is_folder:
                resolve(path)

    resolve("")
    for d in folders:
        mapping[d + "/"] = folder_map[d] + "/"
    return mapping
