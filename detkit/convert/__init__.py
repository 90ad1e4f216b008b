"""Annotation converters: the ``convert-voc`` engine (VOC discovery, image header checks, the box
rule, splits, OUT built aside and renamed into place, the report).

May import: detkit.data (readers, records, names/list files, ASCII-safe names) and the leaf modules.
"""
