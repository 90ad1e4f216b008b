"""darknet ``.cfg`` text -> sections with the line number of every header and key.

The format is INI-like (see REFERENCES.md §1): ``[section]`` headers, ``key=value`` lines,
whole-line comments starting with ``#`` or ``;``. Real files also carry inline comments,
spaces around ``=`` and Windows line endings; all of these are accepted here. Nothing is
interpreted: values stay strings, typing and validation happen in :mod:`detkit.darknet.specs`.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from detkit.errors import CfgError

log = logging.getLogger(__name__)

COMMENT_CHARS = ("#", ";")
# darknet accepts [network] as an alias of [net]
SECTION_ALIASES = {"network": "net"}


@dataclass(frozen=True)
class Option:
    """One ``key=value`` line: the stripped key and value, and its 1-based line number."""

    key: str
    value: str
    line: int


@dataclass(frozen=True)
class Section:
    """One ``[type]`` block of a cfg file.

    ``type`` is lower-cased and alias-resolved (``network`` -> ``net``); ``line`` is the 1-based
    line of the header; ``options`` keep file order (duplicates included); ``source`` names the
    file (or ``<cfg>`` for text) for error messages.
    """

    type: str
    line: int
    options: tuple[Option, ...]
    source: str = "<cfg>"

    def get(self, key: str) -> Option | None:
        """The first option named ``key`` (darknet's ``option_find`` returns the first match)."""
        for opt in self.options:
            if opt.key == key:
                return opt
        return None

    def all(self, key: str) -> list[Option]:
        """Every option named ``key`` in file order."""
        return [opt for opt in self.options if opt.key == key]

    def keys(self) -> list[str]:
        return [opt.key for opt in self.options]


def strip_inline_comment(text: str) -> str:
    """Drop everything from the first ``#`` or ``;`` on, then surrounding whitespace."""
    cut = len(text)
    for ch in COMMENT_CHARS:
        pos = text.find(ch)
        if pos != -1:
            cut = min(cut, pos)
    return text[:cut].strip()


def parse_cfg(text: str, source: str | os.PathLike = "<cfg>") -> list[Section]:
    """Split cfg text into sections.

    Args:
        text: the whole cfg file (``\\n``, ``\\r\\n`` or ``\\r`` line endings).
        source: file name used in error messages.

    Returns:
        Sections in file order; the first one is normally ``net``.

    Raises:
        CfgError: a key before the first section, a malformed header, a line without ``=``,
            an empty key, or a file without any section.
    """
    src = os.fspath(source)
    if text.startswith("\ufeff"):  # UTF-8 byte order mark written by some editors
        text = text[1:]
    sections: list[Section] = []
    cur_type: str | None = None
    cur_line = 0
    cur_opts: list[Option] = []

    def flush() -> None:
        if cur_type is not None:
            sections.append(Section(cur_type, cur_line, tuple(cur_opts), src))

    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(COMMENT_CHARS):
            continue
        if line.startswith("["):
            body = strip_inline_comment(line)
            if not body.endswith("]") or len(body) < 3:
                raise CfgError(f"malformed section header {line!r} (expected [name])", path=src, line=lineno)
            name = body[1:-1].strip().lower()
            if not name:
                raise CfgError(f"empty section name {line!r}", path=src, line=lineno)
            flush()
            cur_type = SECTION_ALIASES.get(name, name)
            cur_line = lineno
            cur_opts = []
            continue
        if "=" not in line:
            raise CfgError(f"expected key=value, got {line!r}", path=src, line=lineno)
        key, _, value = line.partition("=")
        key = key.strip()
        value = strip_inline_comment(value)
        if not key:
            raise CfgError(f"missing key before '=' in {line!r}", path=src, line=lineno)
        if cur_type is None:
            raise CfgError(f"option {key!r} appears before the first [section]", path=src, line=lineno)
        cur_opts.append(Option(key, value, lineno))
    flush()
    if not sections:
        raise CfgError("no [section] found (is this a darknet .cfg file?)", path=src)
    return sections


def read_cfg_text(path: str | os.PathLike) -> str:
    """Read a cfg file as text, keeping its line endings (needed by the in-place writer).

    Raises:
        CfgError: the file is missing, unreadable or not UTF-8/Latin-1 text.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise CfgError(f"cannot read cfg file: {exc.strerror or exc}", path=p) from exc
    if b"\0" in data[:4096]:
        raise CfgError("not a text file (binary data; did you pass a .weights file?)", path=p)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def read_cfg(path: str | os.PathLike) -> list[Section]:
    """Read and parse a cfg file (see :func:`parse_cfg`)."""
    return parse_cfg(read_cfg_text(path), path)


def builtin_cfg_dirs() -> list[Path]:
    """Folders searched for bare cfg names: ``detkit/darknet/cfgs`` (package data, present in an
    installed wheel; the repository's ``cfg/`` is a link to it)."""
    return [Path(__file__).resolve().parent / "cfgs"]


def builtin_cfg_names() -> list[str]:
    """Names accepted by :func:`resolve_cfg` without a path (``yolov3-tiny``, ...)."""
    names: set[str] = set()
    for folder in builtin_cfg_dirs():
        if folder.is_dir():
            names.update(p.stem for p in folder.glob("*.cfg"))
    return sorted(names)


def resolve_cfg(cfg_path_or_text: str | os.PathLike) -> tuple[str, str]:
    """Turn what a user passed as "cfg" into ``(text, source name)``.

    Accepts cfg text (anything containing a newline or starting with ``[``), a path to a file,
    or a bare builtin name such as ``"yolov3-tiny"`` (resolved in :func:`builtin_cfg_dirs`).

    Raises:
        CfgError: the path does not exist and is not a builtin name.
    """
    if isinstance(cfg_path_or_text, str) and ("\n" in cfg_path_or_text or cfg_path_or_text.lstrip().startswith("[")):
        return cfg_path_or_text, "<cfg text>"
    path = Path(cfg_path_or_text)
    if path.is_file():
        return read_cfg_text(path), os.fspath(path)
    name = path.name[:-4] if path.name.endswith(".cfg") else path.name
    if path.parent == Path("."):
        for folder in builtin_cfg_dirs():
            candidate = folder / f"{name}.cfg"
            if candidate.is_file():
                return read_cfg_text(candidate), os.fspath(candidate)
    known = ", ".join(builtin_cfg_names()) or "none found"
    raise CfgError(f"cfg file not found (builtin names: {known})", path=path)
