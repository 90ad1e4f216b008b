"""Split assignment for ``detkit convert-voc``: which converted images go to train, val and test.

A VOC year folder with ``ImageSets/Main/{train,val,trainval,test}.txt`` keeps its split
(``test.txt`` is the val list where there is no ``val.txt``; an id listed in two files is
reported, val winning over train, train over test); every other image is drawn at random with
``seed``, ``val_fraction`` of them into val.
"""
from __future__ import annotations

import random
from pathlib import Path

from detkit.convert.options import ConvertOptions
from detkit.convert.records import ConvertedImage, ReportLog

SPLIT_FILES = ("train", "val", "trainval", "test")


def read_imagesets(src: Path, group: str) -> dict[str, list[str]]:
    main = src / group / "ImageSets" / "Main" if group else src / "ImageSets" / "Main"
    sets: dict[str, list[str]] = {}
    for name in SPLIT_FILES:
        f = main / f"{name}.txt"
        if f.is_file():
            ids = []
            for line in f.read_text(encoding="utf-8-sig", errors="replace").splitlines():
                tok = line.split()
                if tok:
                    ids.append(tok[0])
            sets[name] = ids
    return sets


def random_val_indices(n: int, val_fraction: float, seed: int) -> set[int]:
    """Which of ``n`` items (sorted by their new name) the seeded draw puts into val:
    ``round(n * val_fraction)`` of them, at least 1 and at most n-1 when n >= 2 and the fraction > 0."""
    n_val = 0
    if n and val_fraction > 0:
        n_val = round(n * val_fraction)
        if n >= 2:
            n_val = min(max(n_val, 1), n - 1)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return set(order[:n_val])


def imageset_lists(sets: dict[str, list[str]]) -> tuple[list[str], list[str], list[str]]:
    """(train, val, test) ids of one year folder's ImageSets/Main files (module docstring's rule)."""
    if "train" in sets:
        train, val = sets["train"], sets.get("val", sets.get("test", []))
        test = sets.get("test", []) if "val" in sets else []
    elif "trainval" in sets:
        val = sets.get("val", sets.get("test", []))
        train = [i for i in sets["trainval"] if i not in set(val)]
        test = sets.get("test", []) if "val" in sets else []
    else:
        train, val, test = [], sets.get("val", []), sets.get("test", [])
    return train, val, test


def assign_splits(items: list[ConvertedImage], new_paths: dict[str, str], src: Path, opts: ConvertOptions,
                   logs: ReportLog) -> tuple[dict[str, list[ConvertedImage]], dict]:
    """ImageSets/Main split where a year folder has one; a seeded random draw for the rest."""
    splits: dict[str, list[ConvertedImage]] = {"train": [], "val": [], "test": []}
    groups = sorted({it.group for it in items if it.group is not None})
    membership: dict[tuple[str, str], str] = {}
    info: dict = {"imagesets": {}, "random": 0}
    for g in groups:
        sets = read_imagesets(src, g)
        if not sets:
            continue
        train, val, test = imageset_lists(sets)
        for name, ids in (("test", test), ("train", train), ("val", val)):  # later wins: val over train
            for i in ids:
                prev = membership.get((g, i))
                if prev and prev != name:
                    logs.warn(f"{g}/ImageSets/Main" if g else "ImageSets/Main", "split_overlap",
                              f"{i!r} listed in both {prev} and {name}; used as {name}")
                membership[(g, i)] = name
        info["imagesets"][g or "."] = sorted(sets)
    rest = []
    for it in items:
        s = membership.get((it.group, it.split_id)) if it.group is not None else None
        if s is None and it.group is not None and (it.group or ".") in info["imagesets"]:
            logs.warn(it.xml_rel, "not_in_split", "not listed in any ImageSets/Main file; drawn at random")
        if s is None:
            rest.append(it)
        else:
            splits[s].append(it)
    rest.sort(key=lambda it: new_paths[it.image_rel])
    n = len(rest)
    val_idx = random_val_indices(n, opts.val_fraction, opts.seed)
    for k, it in enumerate(rest):
        splits["val" if k in val_idx else "train"].append(it)
    info["random"] = n
    for s in splits.values():
        s.sort(key=lambda it: new_paths[it.image_rel])
    return splits, info
