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


def split_sizes(rows: int, splits: tuple[str, ...]) -> dict[str, int]:
    """How many of `rows` records each split of a sample mirror gets: most in train, >= 1 elsewhere."""
    others = [s for s in splits if s != "train"]
    small = max(1, rows // 10)
    sizes = {s: small for s in others}
    if "train" in splits:
        sizes = {"train": max(1, rows - small * len(others)), **sizes}
    return sizes
