"""Writing the OUT layouts of ``detkit convert`` into the build folder (made by
:func:`detkit.convert.output.build_out`): YOLO, COCO and Pascal VOC.

* ``yolo``: the convert-voc layout (``images/``, ``labels/``, list files, ``obj.names``,
  ``obj.data``, ``data.yaml``), see docs/convert.md.
* ``coco``: ``images/<new path>``, ``annotations/{train,val[,test]}.json``; image ids 1..N and
  annotation ids 1..M in output-name order, category ids 1..C in class order, ``bbox`` in
  continuous pixels, ``area`` = box area, ``iscrowd`` kept, VOC difficult objects written with
  ``iscrowd: 0`` and ``"difficult": 1`` (pycocotools ignores the key and counts them as normal
  objects; detkit reads it back).
* ``voc``: ``JPEGImages/<name>``, ``Annotations/<name>.xml``, ``ImageSets/Main/{train,val[,test],trainval}.txt``;
  names are flat (folders joined into the name). COCO crowd objects are written ``difficult``.

What each target keeps of an object (``keep_box``): YOLO has no crowd or difficult flag: crowd
objects are left out, difficult ones left out or written (``--difficult``).
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Callable

from detkit.convert.options import DatasetOptions
from detkit.convert.output import place_image, write_label_pair, write_new, write_yolo_files
from detkit.convert.records import SourceBox, SourceImage
from detkit.data.coco import coco_annotation, coco_document, dump_coco
from detkit.data.pascal_xml import XmlObject, format_voc_xml

Write = Callable[[Path, str], None]
#: Called with each per-image annotation file's path before it is written (the ``on_write`` seam of
#: :func:`detkit.convert.any_format.convert_dataset`); dataset-level files go through ``write``.
Hook = Callable[[Path], None]


def keep_box(b: SourceBox, to: str, opts: DatasetOptions, counters: Counter) -> bool:
    """Whether an object is written in the ``to`` format (policy in the module docstring)."""
    if b.difficult:
        counters["difficult"] += 1
    if to != "yolo":
        if b.crowd and to == "voc":
            counters["crowd_as_difficult"] += 1
        return True
    if b.crowd:
        counters["crowd_skipped"] += 1
        return False
    if b.difficult and opts.difficult == "skip":
        counters["difficult_skipped"] += 1
        return False
    return True


class Placer:
    """Puts the images into ``tmp/<folder>/<new path>``, making folders once; counts how."""

    def __init__(self, tmp: Path, folder: str, link: str, extra: tuple[str, ...] = ()):
        self.tmp, self.folder, self.link, self.extra = str(tmp), folder, link, extra
        self.made: set[str] = set()
        self.modes: Counter = Counter()

    def put(self, it: SourceImage, new: str) -> None:
        sub = new.rsplit("/", 1)[0] if "/" in new else ""
        if sub not in self.made:
            for top in (self.folder, *self.extra):
                os.makedirs(os.path.join(self.tmp, top, sub), exist_ok=True)
            self.made.add(sub)
        self.modes[place_image(it.image_path, os.path.join(self.tmp, self.folder, new), self.link, kind=it.kind)] += 1


def write_yolo(tmp: Path, items: list[SourceImage], kept: dict[int, list[SourceBox]], new_paths: dict[str, str],
               splits: dict[str, list[SourceImage]], classes: tuple[str, ...], opts: DatasetOptions,
               write: Write, tool: str, on_write: Hook | None = None,
               texts: dict[int, bytes] | None = None) -> tuple[list[tuple[str, str, str]], Counter]:
    """``texts``: each item's label file content by ``id(item)`` (made column-wise by the caller),
    else formatted here from ``kept``."""
    (tmp / "backup").mkdir(parents=True)
    cid = {n: k for k, n in enumerate(classes)}
    placer = Placer(tmp, "images", opts.link, ("labels",))
    rows = []
    for it in items:
        new = new_paths[it.image_rel]
        stem = new.rsplit(".", 1)[0]
        placer.put(it, new)
        w, h = it.width, it.height
        if texts is not None:
            text = texts[id(it)]
        else:  # the text of format_yolo_labels, formatted from Python floats (4x faster than its numpy rows)
            text = "".join(
                f"{cid[b.name]} {(b.x1 + b.x2) / 2 / w:.6f} {(b.y1 + b.y2) / 2 / h:.6f} {(b.x2 - b.x1) / w:.6f} "
                f"{(b.y2 - b.y1) / h:.6f}\n" for b in kept[id(it)])
        write_label_pair(placer.tmp, stem, text, on_write)
        rows.append(("image", it.image_rel, f"images/{new}"))
        rows.append(("annotation", it.ann_rel, f"labels/{stem}.txt"))
    lists = {s: [f"./images/{new_paths[it.image_rel]}" for it in v] for s, v in splits.items()}
    write_yolo_files(tmp, lists, classes, tool, write)
    return rows, placer.modes


def write_coco(tmp: Path, items: list[SourceImage], kept: dict[int, list[SourceBox]], new_paths: dict[str, str],
               splits: dict[str, list[SourceImage]], classes: tuple[str, ...], opts: DatasetOptions,
               write: Write, tool: str, on_write: Hook | None = None) -> tuple[list[tuple[str, str, str]], Counter]:
    cid = {n: k for k, n in enumerate(classes)}
    placer = Placer(tmp, "images", opts.link)
    (tmp / "annotations").mkdir(parents=True)
    image_id = {it.image_rel: k for k, it in enumerate(items, 1)}
    rows = []
    for it in items:
        placer.put(it, new_paths[it.image_rel])
        rows.append(("image", it.image_rel, f"images/{new_paths[it.image_rel]}"))
    ann_id = 0
    for s, members in splits.items():
        images, anns = [], []
        for it in sorted(members, key=lambda it: image_id[it.image_rel]):
            iid = image_id[it.image_rel]
            images.append({"id": iid, "file_name": new_paths[it.image_rel], "width": it.width, "height": it.height})
            for b in kept[id(it)]:
                ann_id += 1
                anns.append(coco_annotation(ann_id, iid, cid[b.name], b.x1, b.y1, b.x2, b.y2,
                                            crowd=b.crowd, difficult=b.difficult))
            rows.append(("annotation", it.ann_rel, f"annotations/{s}.json"))
        write(tmp / "annotations" / f"{s}.json", dump_coco(coco_document(images, anns, list(classes))))
    return rows, placer.modes


def write_voc(tmp: Path, items: list[SourceImage], kept: dict[int, list[SourceBox]], new_paths: dict[str, str],
              splits: dict[str, list[SourceImage]], classes: tuple[str, ...], opts: DatasetOptions,
              write: Write, tool: str, on_write: Hook | None = None) -> tuple[list[tuple[str, str, str]], Counter]:
    placer = Placer(tmp, "JPEGImages", opts.link, ("Annotations",))
    rows = []
    for it in items:
        new = new_paths[it.image_rel]
        stem = new.rsplit(".", 1)[0]
        placer.put(it, new)
        objs = [XmlObject(b.name, b.x1, b.y1, b.x2, b.y2, b.difficult or b.crowd) for b in kept[id(it)]]
        xml_path = os.path.join(placer.tmp, "Annotations", stem + ".xml")
        if on_write is not None:
            on_write(Path(xml_path))
        write_new(xml_path, format_voc_xml(new, it.width, it.height, 3, objs))
        rows.append(("image", it.image_rel, f"JPEGImages/{new}"))
        rows.append(("annotation", it.ann_rel, f"Annotations/{stem}.xml"))
    main = tmp / "ImageSets" / "Main"
    ids = {s: [new_paths[it.image_rel].rsplit(".", 1)[0] for it in v] for s, v in splits.items()}
    for s, v in ids.items():
        write(main / f"{s}.txt", "".join(f"{i}\n" for i in v))
    write(main / "trainval.txt", "".join(f"{i}\n" for i in sorted(ids["train"] + ids["val"])))
    return rows, placer.modes


WRITERS = {"yolo": write_yolo, "coco": write_coco, "voc": write_voc}
