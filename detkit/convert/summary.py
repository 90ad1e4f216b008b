"""What a conversion prints: the per-class table and the class-imbalance warning."""
from __future__ import annotations

from detkit.convert.options import ClassStats, ConvertResult


def imbalance_warning(per_class: dict[str, ClassStats], ratio: float = 0.1) -> str | None:
    """A warning when the smallest class has fewer than ``ratio`` x the objects of the largest."""
    counts = {n: s.objects for n, s in per_class.items()}
    if len(counts) < 2:
        return None
    lo = min(counts, key=lambda n: (counts[n], n))
    hi = max(counts, key=lambda n: (counts[n], n))
    if counts[lo] < ratio * counts[hi]:
        return (f"classes are badly imbalanced: {lo!r} has {counts[lo]} objects, {hi!r} has {counts[hi]} "
                f"(under 1/{round(1 / ratio)}); few-sample classes are the most common reason a custom "
                "detector fails: collect more examples of them")
    return None


def summary_table(result: ConvertResult) -> str:
    """Plain-text per-class table: class id, name, images, objects, difficult."""
    rows = [("id", "class", "images", "objects", "difficult")]
    for i, n in enumerate(result.class_names):
        s = result.per_class[n]
        rows.append((str(i), n, str(s.images), str(s.objects), str(s.difficult)))
    widths = [max(len(r[k]) for r in rows) for k in range(5)]
    lines = []
    for r in rows:
        lines.append("  ".join(v.ljust(widths[k]) if k == 1 else v.rjust(widths[k]) for k, v in enumerate(r)))
    return "\n".join(lines)
