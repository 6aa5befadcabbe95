"""Drawing helpers for synthetic sample mirrors: charts with real values, formulas, handwriting.

Everything is seeded: the same (seed, arguments) draws the same pixels on every machine.
"""

from __future__ import annotations

import io
import math
import random
import re
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFilter, ImageFont

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
CATEGORIES = ["Germany", "France", "Japan", "Brazil", "India", "Canada", "Kenya", "Mexico", "Norway", "Chile"]


def font(size: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans where installed (it has the Greek and math glyphs formulas need), else Pillow's own."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def encode(img: Image.Image, fmt: str = "PNG", quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


@dataclass
class BarChart:
    title: str
    categories: list[str]
    values: list[float]


def random_bar_chart(rng: random.Random, n_bars: int | None = None) -> BarChart:
    n = n_bars or rng.randint(3, 6)
    categories = rng.sample(CATEGORIES, n)
    values = [round(rng.uniform(5, 95), 1) for _ in categories]
    metric = rng.choice(["GDP growth (%)", "Share of adults online (%)", "Exports (bn USD)", "Rainfall (cm)"])
    return BarChart(f"{metric}, {rng.randint(2005, 2022)}", categories, values)


def draw_bar_chart(chart: BarChart, width: int = 800, height: int = 600) -> Image.Image:
    """A vertical bar chart with a title, axes, tick labels and the value printed on each bar."""
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    s = height / 600
    d.text((width / 2, 30 * s), chart.title, fill="black", font=font(int(24 * s)), anchor="mm")
    left, right, top, bottom = 80 * s, width - 40 * s, 70 * s, height - 80 * s
    vmax = max(chart.values) * 1.15
    d.line([(left, top), (left, bottom), (right, bottom)], fill="black", width=max(1, int(2 * s)))
    for i in range(6):  # y ticks with grid lines
        v = vmax * i / 5
        y = bottom - (bottom - top) * i / 5
        d.line([(left - 6 * s, y), (right, y)], fill=(220, 220, 220))
        d.text((left - 10 * s, y), f"{v:.0f}", fill="black", font=font(int(14 * s)), anchor="rm")
    slot = (right - left) / len(chart.values)
    for i, (name, value) in enumerate(zip(chart.categories, chart.values)):
        x0 = left + slot * i + slot * 0.15
        x1 = left + slot * (i + 1) - slot * 0.15
        y = bottom - (bottom - top) * value / vmax
        d.rectangle([x0, y, x1, bottom], fill=PALETTE[i % len(PALETTE)])
        d.text(((x0 + x1) / 2, y - 12 * s), f"{value:g}", fill="black", font=font(int(16 * s)), anchor="mm")
        d.text(((x0 + x1) / 2, bottom + 20 * s), name, fill="black", font=font(int(16 * s)), anchor="mm")
    return img


def chart_questions(chart: BarChart, rng: random.Random, n: int) -> list[tuple[str, str]]:
    """Questions about a chart with their correct answers, computed from its values."""
    pairs = list(zip(chart.categories, chart.values))
    hi = max(pairs, key=lambda p: p[1])
    lo = min(pairs, key=lambda p: p[1])
    a, b = rng.sample(pairs, 2)
    pool = [
        (f"What is the value for {a[0]}?", f"{a[1]:g}"),
        ("Which category has the highest value?", hi[0]),
        ("Which category has the lowest value?", lo[0]),
        (f"What is the difference between {a[0]} and {b[0]}?", f"{round(abs(a[1] - b[1]), 1):g}"),
        ("How many bars are there in the chart?", str(len(pairs))),
        (f"Is the value for {a[0]} greater than that of {b[0]}?", "Yes" if a[1] > b[1] else "No"),
    ]
    rng.shuffle(pool)
    return pool[:n]


# --- formulas ---------------------------------------------------------------------------------

_SYMBOLS = {r"\alpha": "α", r"\beta": "β", r"\gamma": "γ", r"\pi": "π", r"\sigma": "σ", r"\theta": "θ",
            r"\lambda": "λ", r"\sum": "Σ", r"\int": "∫", r"\infty": "∞", r"\cdot": "·", r"\leq": "≤",
            r"\geq": "≥", r"\neq": "≠", r"\pm": "±", r"\partial": "∂", r"\sqrt": "√", r"\times": "×"}


def random_formula(rng: random.Random) -> str:
    """A LaTeX formula from a small grammar of the shapes that fill formula datasets."""
    v = lambda: rng.choice("xyzabnkt")  # noqa: E731
    g = lambda: rng.choice([r"\alpha", r"\beta", r"\lambda", r"\theta", r"\sigma"])  # noqa: E731
    n = lambda: str(rng.randint(2, 9))  # noqa: E731
    shapes = [
        lambda: f"{v()}^{{{n()}}} + {n()} {v()} = {n()}",
        lambda: rf"\frac{{{v()} + {n()}}}{{{v()} - {n()}}}",
        lambda: rf"\sum_{{{v()}=1}}^{{{n()}}} {g()}_{{{v()}}}",
        lambda: rf"\int_{{0}}^{{\infty}} e^{{-{v()}}} d{v()}",
        lambda: rf"{g()} \leq \sqrt{{{v()}^{{2}} + {n()}}}",
        lambda: rf"f({v()}) = {n()} {v()} \cdot {g()} \pm {n()}",
    ]
    return rng.choice(shapes)()


def formula_display_text(latex: str) -> str:
    """A readable rendering of LaTeX for drawing: symbols as glyphs, fractions as a/b."""
    s = re.sub(r"\\begin\{[^}]*\}|\\end\{[^}]*\}|&|\\\\", " ", latex)
    s = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"(\1)/(\2)", s)
    for cmd in sorted(_SYMBOLS, key=len, reverse=True):
        s = s.replace(cmd, _SYMBOLS[cmd])
    s = s.replace("^", "").replace("_", "").replace("{", "").replace("}", "")
    return re.sub(r"\s+", " ", s).strip()


def draw_formula(latex: str, size: int = 32) -> Image.Image:
    """Typeset-looking formula: black text on white, cropped tight with a small margin."""
    text = formula_display_text(latex)
    f = font(size)
    x0, y0, x1, y1 = f.getbbox(text)
    img = Image.new("RGB", (x1 - x0 + 16, y1 - y0 + 16), "white")
    ImageDraw.Draw(img).text((8 - x0, 8 - y0), text, fill="black", font=f)
    return img


def draw_handwriting(latex: str, rng: random.Random, size: int = 48) -> Image.Image:
    """Handwriting-like ink: each glyph rotated, scaled and shifted on its own, strokes thickened."""
    text = formula_display_text(latex)
    glyphs = []
    for ch in text:
        if ch == " ":
            glyphs.append(None)
            continue
        f = font(int(size * rng.uniform(0.85, 1.15)))
        x0, y0, x1, y1 = f.getbbox(ch)
        g = Image.new("L", (x1 - x0 + 8, y1 - y0 + 8), 0)
        ImageDraw.Draw(g).text((4 - x0, 4 - y0), ch, fill=255, font=f)
        glyphs.append(g.rotate(rng.uniform(-12, 12), resample=Image.BICUBIC, expand=True))
    width = sum(g.width if g else size // 3 for g in glyphs) + 40
    canvas = Image.new("L", (width, int(size * 2.2)), 0)
    x, phase = 20, rng.uniform(0, math.tau)
    for i, g in enumerate(glyphs):
        if g is None:
            x += size // 3
            continue
        baseline = int(size * 0.5 + 6 * math.sin(phase + i / 3) + rng.uniform(-3, 3))
        canvas.paste(255, (x, baseline), g)
        x += g.width - rng.randint(2, 6)
    ink = canvas.filter(ImageFilter.MaxFilter(3)).filter(ImageFilter.GaussianBlur(0.8))
    return Image.merge("RGB", [ink.point(lambda p: 255 - p)] * 3)


# --- multi-series charts (PlotQA, FigureQA) ---------------------------------------------------

# X11 colour names, as FigureQA names its series, with their RGB values.
NAMED_COLOURS = {
    "Dark Violet": "#9400d3", "Medium Blue": "#0000cd", "Orange Red": "#ff4500", "Sea Green": "#2e8b57",
    "Goldenrod": "#daa520", "Dark Cyan": "#008b8b", "Firebrick": "#b22222", "Olive": "#808000",
    "Hot Pink": "#ff69b4", "Slate Gray": "#708090", "Sienna": "#a0522d", "Indigo": "#4b0082",
}
_TOPICS = [  # (title, value axis label, low, high): the World Bank indicators PlotQA draws
    ("Number of neonatal deaths", "Number of deaths", 120, 900),
    ("Price of gasoline in countries", "Price (US$ per liter)", 0.4, 2.1),
    ("Net enrolment rate in primary education", "Enrolment rate (%)", 55, 99),
    ("CO2 emissions from transport", "Emissions (kt)", 300, 5200),
    ("Air quality index", "Air quality index", 0.1, 2.2),
]


@dataclass
class SeriesChart:
    """One or more named series over shared categories (the x axis, or the y axis of hbar)."""

    kind: str  # vbar | hbar | line | dot_line
    title: str
    axis_labels: tuple[str, str]  # (category axis, value axis)
    categories: list[str]
    series: list[tuple[str, list[float], str]]  # (name, values, colour "#rrggbb")
    bar_colours: list[str] | None = None  # a colour per category: single-series bars (FigureQA)


def random_series_chart(rng: random.Random, kind: str) -> SeriesChart:
    """A PlotQA-like chart: an indicator over years (or sectors) for a few countries."""
    title, value_label, lo, hi = rng.choice(_TOPICS)
    n = rng.randint(3, 6)
    if kind in ("line", "dot_line") or rng.random() < 0.7:
        start, step = rng.randint(1995, 2010), rng.choice([1, 2])
        categories, category_label = [str(start + step * i) for i in range(n)], "Years"
    else:
        categories, category_label = ["Agriculture", "Industry", "Services", "Transport", "Energy", "Housing"][:n], "Sector"
    digits = 2 if hi < 10 else 1
    colours = rng.sample(list(NAMED_COLOURS.values()), 4)
    series = [(name, [round(rng.uniform(lo, hi), digits) for _ in categories], colours[i])
              for i, name in enumerate(rng.sample(CATEGORIES, rng.randint(1, 4)))]
    return SeriesChart(kind, title, (category_label, value_label), categories, series)


def draw_series_chart(chart: SeriesChart, width: int = 640, height: int = 480) -> tuple[Image.Image, list[list[tuple]]]:
    """Draw bars, lines or dots with axes, ticks and a legend; also return each mark's box.

    Boxes are (x, y, w, h) in pixels, per series per category: what PlotQA records for its marks.
    """
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    horizontal = chart.kind == "hbar"
    left, right, top, bottom = (110 if horizontal else 70), width - 30, 50, height - 90
    vmax = max(v for _, values, _ in chart.series for v in values) * 1.15
    d.text((width / 2, 22), chart.title, fill="black", font=font(18), anchor="mm")
    d.line([(left, top), (left, bottom), (right, bottom)], fill="black", width=2)
    for i in range(6):  # value-axis ticks and grid
        v = vmax * i / 5
        label = f"{v:.2f}" if vmax < 10 else f"{v:.0f}"
        if horizontal:
            x = left + (right - left) * i / 5
            d.line([(x, top), (x, bottom + 5)], fill=(225, 225, 225))
            d.text((x, bottom + 14), label, fill="black", font=font(12), anchor="mm")
        else:
            y = bottom - (bottom - top) * i / 5
            d.line([(left - 5, y), (right, y)], fill=(225, 225, 225))
            d.text((left - 8, y), label, fill="black", font=font(12), anchor="rm")
    value_label, category_label = chart.axis_labels[1], chart.axis_labels[0]
    d.text((left, top - 12), category_label if horizontal else value_label, fill="black", font=font(13), anchor="lm")
    d.text(((left + right) / 2, bottom + 34), value_label if horizontal else category_label, fill="black",
           font=font(14), anchor="mm")
    n, k = len(chart.categories), len(chart.series)
    slot = ((bottom - top) if horizontal else (right - left)) / n
    boxes: list[list[tuple]] = [[] for _ in chart.series]
    for i, category in enumerate(chart.categories):
        centre = (bottom - slot * (i + 0.5)) if horizontal else (left + slot * (i + 0.5))
        if horizontal:
            d.text((left - 8, centre), category, fill="black", font=font(12), anchor="rm")
        else:
            d.text((centre, bottom + 14), category, fill="black", font=font(12), anchor="mm")
        for j, (_, values, colour) in enumerate(chart.series):
            colour = chart.bar_colours[i] if chart.bar_colours else colour
            length = (right - left if horizontal else bottom - top) * values[i] / vmax
            if chart.kind in ("vbar", "hbar"):
                thick = slot * 0.7 / k
                a = centre - slot * 0.35 + thick * j
                box = (left, a, length, thick) if horizontal else (a, bottom - length, thick, length)
                d.rectangle([box[0], box[1], box[0] + box[2], box[1] + box[3]], fill=colour, outline="black")
            else:
                y = bottom - length
                box = (centre - 4, y - 4, 8, 8)
                if i > 0:
                    px, py = left + slot * (i - 0.5), bottom - (bottom - top) * values[i - 1] / vmax
                    d.line([(px, py), (centre, y)], fill=colour, width=1 if chart.kind == "dot_line" else 2)
                if chart.kind == "dot_line":
                    d.ellipse([centre - 4, y - 4, centre + 4, y + 4], fill=colour)
            boxes[j].append(tuple(round(v, 2) for v in box))
    if not chart.bar_colours:  # legend: one swatch per series along the bottom
        x = left
        for name, _, colour in chart.series:
            d.rectangle([x, height - 30, x + 14, height - 16], fill=colour, outline="black")
            d.text((x + 20, height - 23), name, fill="black", font=font(13), anchor="lm")
            x += 40 + font(13).getlength(name)
    return img, boxes


# --- photo-like scenes (LLaVA-CC3M) -----------------------------------------------------------

_SKIES = {"blue sky": (110, 170, 235), "cloudy sky": (175, 180, 190), "sunset sky": (240, 150, 90)}
_GROUNDS = {"green field": (70, 150, 60), "sandy beach": (225, 200, 140), "snowy slope": (240, 240, 245)}
_THINGS = ["red house", "tall tree", "mountain", "yellow sun", "wooden fence"]


def draw_scene(rng: random.Random, width: int = 320, height: int = 240) -> tuple[Image.Image, str]:
    """A small landscape drawn from a few shapes, and a CC3M-style lower-case caption of it."""
    sky, ground = rng.choice(list(_SKIES)), rng.choice(list(_GROUNDS))
    img = Image.new("RGB", (width, height), _SKIES[sky])
    d = ImageDraw.Draw(img)
    horizon = int(height * rng.uniform(0.55, 0.7))
    things = rng.sample(_THINGS, rng.randint(1, 3))
    if "mountain" in things:
        peak = rng.randint(width // 4, 3 * width // 4)
        d.polygon([(peak - 120, horizon), (peak, horizon - 110), (peak + 120, horizon)], fill=(120, 115, 125))
    d.rectangle([0, horizon, width, height], fill=_GROUNDS[ground])
    if "yellow sun" in things:
        cx, cy = rng.randint(30, width - 30), rng.randint(20, horizon - 60)
        d.ellipse([cx - 18, cy - 18, cx + 18, cy + 18], fill=(250, 220, 60))
    if "red house" in things:
        x = rng.randint(20, width - 90)
        d.rectangle([x, horizon - 40, x + 60, horizon + 10], fill=(190, 50, 40))
        d.polygon([(x - 8, horizon - 40), (x + 30, horizon - 70), (x + 68, horizon - 40)], fill=(90, 40, 30))
    if "tall tree" in things:
        x = rng.randint(15, width - 30)
        d.rectangle([x + 8, horizon - 20, x + 16, horizon + 15], fill=(100, 70, 40))
        d.ellipse([x - 10, horizon - 75, x + 34, horizon - 15], fill=(40, 110, 50))
    if "wooden fence" in things:
        for x in range(0, width, 18):
            d.rectangle([x, horizon + 5, x + 6, horizon + 35], fill=(150, 110, 70))
    img = img.filter(ImageFilter.GaussianBlur(0.6))  # soften the edges, as a photo would have
    listed = " and ".join(f"a {t}" for t in things)
    caption = rng.choice([f"{listed} on a {ground} under a {sky} .", f"view of {listed} with a {sky} .",
                          f"{listed} seen from the {ground} ."])
    return img, caption


def split_sizes(rows: int, splits: tuple[str, ...]) -> dict[str, int]:
    """How many of `rows` records each split of a sample mirror gets: most in train, >= 1 elsewhere."""
    others = [s for s in splits if s != "train"]
    small = max(1, rows // 10)
    sizes = {s: small for s in others}
    if "train" in splits:
        sizes = {"train": max(1, rows - small * len(others)), **sizes}
    return sizes
