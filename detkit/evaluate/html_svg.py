"""Inline SVG charts for the HTML report: line charts (PR, F1-confidence), horizontal bars (error
breakdown) and boxes drawn over an embedded image. Pure string building, no dependencies, no URLs
(inline SVG in HTML needs no namespace)."""
from __future__ import annotations

import html
import math
from typing import Sequence

import numpy as np

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")


def esc(s: object) -> str:
    return html.escape(str(s), quote=True)


def _pts(x: np.ndarray, y: np.ndarray, W: float, H: float, pad: float, x_lim, y_lim) -> str:
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        return ""
    x0, x1 = x_lim
    y0, y1 = y_lim
    sx = pad + (x[ok] - x0) / max(x1 - x0, 1e-12) * (W - 2 * pad)
    sy = H - pad - (y[ok] - y0) / max(y1 - y0, 1e-12) * (H - 2 * pad)
    return " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(sx, sy))


def thin(x: np.ndarray, y: np.ndarray, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """At most ``n`` evenly spaced points of a curve (first and last kept)."""
    if x.size <= n:
        return x, y
    idx = np.unique(np.linspace(0, x.size - 1, n).round().astype(np.int64))
    return x[idx], y[idx]


def line_chart(series: Sequence[tuple[str, np.ndarray, np.ndarray, str, float]], title: str, x_label: str,
               y_label: str, W: int = 360, H: int = 260, x_lim=(0.0, 1.0), y_lim=(0.0, 1.0),
               marker: tuple[float, float] | None = None, css_class: str = "plot") -> str:
    """An SVG line chart. ``series``: (name, x, y, colour, stroke width); NaN points are skipped."""
    pad = 34
    out = [f'<svg class="{css_class}" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" '
           f'aria-label="{esc(title)}">', f"<title>{esc(title)}</title>",
           f'<rect x="{pad}" y="{pad}" width="{W - 2 * pad}" height="{H - 2 * pad}" fill="#fff" stroke="#999"/>']
    for k in range(1, 5):
        gx = pad + k / 5 * (W - 2 * pad)
        gy = H - pad - k / 5 * (H - 2 * pad)
        out.append(f'<line x1="{gx:.1f}" y1="{pad}" x2="{gx:.1f}" y2="{H - pad}" stroke="#eee"/>')
        out.append(f'<line x1="{pad}" y1="{gy:.1f}" x2="{W - pad}" y2="{gy:.1f}" stroke="#eee"/>')
    for v, lbl in ((0, x_lim[0]), (1, x_lim[1])):
        out.append(f'<text x="{pad + v * (W - 2 * pad):.0f}" y="{H - pad + 14}" font-size="10" '
                   f'text-anchor="middle">{lbl:g}</text>')
    for v, lbl in ((0, y_lim[0]), (1, y_lim[1])):
        out.append(f'<text x="{pad - 4}" y="{H - pad - v * (H - 2 * pad) + 3:.0f}" font-size="10" '
                   f'text-anchor="end">{lbl:g}</text>')
    out.append(f'<text x="{W / 2:.0f}" y="{H - 6}" font-size="11" text-anchor="middle">{esc(x_label)}</text>')
    out.append(f'<text x="12" y="{H / 2:.0f}" font-size="11" text-anchor="middle" '
               f'transform="rotate(-90 12 {H / 2:.0f})">{esc(y_label)}</text>')
    out.append(f'<text x="{W / 2:.0f}" y="16" font-size="12" font-weight="bold" text-anchor="middle">'
               f'{esc(title)}</text>')
    for name, x, y, colour, width in series:
        x, y = thin(np.asarray(x, np.float64), np.asarray(y, np.float64))
        pts = _pts(x, y, W, H, pad, x_lim, y_lim)
        if pts:
            out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="{width}" points="{pts}">'
                       f"<title>{esc(name)}</title></polyline>")
    if marker is not None and all(math.isfinite(v) for v in marker):
        p = _pts(np.array([marker[0]]), np.array([marker[1]]), W, H, pad, x_lim, y_lim).split(",")
        out.append(f'<circle cx="{p[0]}" cy="{p[1]}" r="4" fill="#d62728"><title>best F1 '
                   f'{marker[1]:.3f} at conf {marker[0]:.3f}</title></circle>')
    out.append("</svg>")
    return "".join(out)


def bar_chart(items: Sequence[tuple[str, float, str]], title: str, W: int = 420, unit: str = "") -> str:
    """Horizontal bars: (label, value, colour); negative values drawn from zero to the left."""
    row, left, pad = 22, 90, 10
    H = pad * 2 + 20 + row * len(items)
    vmax = max([abs(v) for _, v, _ in items if math.isfinite(v)] + [1e-9])
    span = W - left - 60
    out = [f'<svg class="plot bars" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" '
           f'aria-label="{esc(title)}"><title>{esc(title)}</title>',
           f'<text x="{W / 2:.0f}" y="16" font-size="12" font-weight="bold" text-anchor="middle">{esc(title)}</text>']
    for i, (label, v, colour) in enumerate(items):
        y = pad + 20 + i * row
        w = 0.0 if not math.isfinite(v) else abs(v) / vmax * span
        out.append(f'<text x="{left - 6}" y="{y + 14}" font-size="11" text-anchor="end">{esc(label)}</text>')
        out.append(f'<rect x="{left}" y="{y + 3}" width="{w:.1f}" height="{row - 6}" fill="{colour}"/>')
        out.append(f'<text x="{left + w + 4:.1f}" y="{y + 14}" font-size="11">{v:.2f}{esc(unit)}</text>')
    out.append("</svg>")
    return "".join(out)


def boxes_over_image(data_uri: str, width: int, height: int, scale: float,
                     boxes: Sequence[tuple[Sequence[float], str, str]], title: str) -> str:
    """An embedded image with rectangles ``(xyxy in original pixels, colour, label)``."""
    W, H = max(1, round(width * scale)), max(1, round(height * scale))
    out = [f'<svg class="thumb" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="{esc(title)}">',
           f"<title>{esc(title)}</title>", f'<image href="{data_uri}" x="0" y="0" width="{W}" height="{H}"/>']
    for (x1, y1, x2, y2), colour, label in boxes:
        x, y = x1 * scale, y1 * scale
        out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max((x2 - x1) * scale, 1):.1f}" '
                   f'height="{max((y2 - y1) * scale, 1):.1f}" fill="none" stroke="{colour}" stroke-width="2">'
                   f"<title>{esc(label)}</title></rect>")
        if label:
            out.append(f'<text x="{x + 2:.1f}" y="{max(y - 2, 9):.1f}" font-size="9" fill="{colour}" '
                       f'stroke="#fff" stroke-width="2" paint-order="stroke">{esc(label)}</text>')
    out.append("</svg>")
    return "".join(out)
