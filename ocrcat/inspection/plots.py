"""PNG histograms per source, drawn with PIL (no plotting library needed)."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ocrcat.inspection.stats import MEASURES, histogram
from ocrcat.catalog.store import Catalog

PANEL_W, PANEL_H, COLUMNS = 380, 230, 3
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 52, 14, 30, 34
BAR, AXIS, TEXT = (52, 101, 164), (90, 90, 90), (30, 30, 30)


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)  # Pillow's bundled font: identical on every machine


def _label(value: float) -> str:
    if abs(value) >= 10_000:
        return f"{value / 1000:.0f}k"
    return f"{value:.0f}" if abs(value) >= 10 or value == int(value) else f"{value:.1f}"


def draw_histogram(draw: ImageDraw.ImageDraw, x0: int, y0: int, title: str,
                   edges: list[float], counts: list[int]) -> None:
    """One panel at (x0, y0): bars, axes, the range below and the largest count on the left."""
    small, big = _font(12), _font(14)
    draw.text((x0 + MARGIN_L, y0 + 8), f"{title}  (n={sum(counts):,})", fill=TEXT, font=big)
    left, top = x0 + MARGIN_L, y0 + MARGIN_T
    right, bottom = x0 + PANEL_W - MARGIN_R, y0 + PANEL_H - MARGIN_B
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=AXIS)
    peak = max(counts)
    step = (right - left) / len(counts)
    for i, n in enumerate(counts):
        if n:
            h = max(1, round((bottom - top) * n / peak))
            draw.rectangle([left + i * step + 1, bottom - h, left + (i + 1) * step - 1, bottom - 1], fill=BAR)
    draw.text((left - 6, top), _label(peak), fill=TEXT, font=small, anchor="ra")
    draw.text((left - 6, bottom), "0", fill=TEXT, font=small, anchor="rb")
    draw.text((left, bottom + 6), _label(edges[0]), fill=TEXT, font=small, anchor="la")
    draw.text((right, bottom + 6), _label(edges[-1]), fill=TEXT, font=small, anchor="ra")  # exclusive end


def source_histograms_png(catalog: Catalog, source: str, bins: int = 30) -> bytes:
    """PNG bytes: one histogram per measure of MEASURES with values; constant ones as a line of text."""
    panels = [(name, *histogram(catalog, source, name, bins)) for name in MEASURES]
    constant = [f"{name} = {_label(edges[0])}" for name, edges, counts in panels if len(counts) == 1]
    panels = [p for p in panels if len(p[2]) > 1]  # a one-bar histogram says less than its value
    rows = -(-len(panels) // COLUMNS)
    img = Image.new("RGB", (PANEL_W * COLUMNS, PANEL_H * rows + 40), "white")
    draw = ImageDraw.Draw(img)
    title = f"{source} ({catalog.vision_mode})" + (f"    same for every row: {', '.join(constant)}" if constant else "")
    draw.text((12, 10), title, fill=TEXT, font=_font(16))
    for i, (name, edges, counts) in enumerate(panels):
        draw_histogram(draw, (i % COLUMNS) * PANEL_W, 40 + (i // COLUMNS) * PANEL_H, name, edges, counts)
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def write_plots(catalog: Catalog, out_dir: Path, sources: list[str] | None = None, bins: int = 30) -> list[Path]:
    """Write `<out_dir>/<source>.png` for each source; returns the paths written."""
    names = sources or [s for (s,) in catalog.con.execute("SELECT DISTINCT source FROM samples ORDER BY 1").fetchall()]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for source in names:
        path = out_dir / f"{source}.png"
        path.write_bytes(source_histograms_png(catalog, source, bins))
        paths.append(path)
    return paths
