"""DocBank reading order: tokens with boxes and labels in, a markdown transcript out.

DocBank lists tokens in pdfplumber word order, which on a two-column page reads each printed
line straight across both columns. To read the left column before the right we find the gutter
(a vertical strip near the middle that almost no token crosses), cut each printed line at it,
and between two full-width lines (a title, a wide figure caption) emit the left-column lines
before the right-column ones. Lines are then grouped into blocks by label and spacing:
title -> `# `, section -> `## `, everything else a paragraph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import median

PSEUDO_TOKENS = ("##LTLine##", "##LTFigure##")
HEADINGS = {"title": "# ", "section": "## "}


@dataclass
class Token:
    text: str
    x0: int
    y0: int
    x1: int
    y1: int
    label: str


@dataclass
class Line:
    tokens: list[Token] = field(default_factory=list)
    column: str = "full"  # full | left | right

    @property
    def x0(self) -> int:
        return min(t.x0 for t in self.tokens)

    @property
    def x1(self) -> int:
        return max(t.x1 for t in self.tokens)

    @property
    def y0(self) -> int:
        return min(t.y0 for t in self.tokens)

    @property
    def y1(self) -> int:
        return max(t.y1 for t in self.tokens)

    @property
    def label(self) -> str:
        # The label most of the line's characters carry: an inline formula inside a paragraph
        # line does not split the paragraph.
        weight: dict[str, int] = {}
        for t in self.tokens:
            weight[t.label] = weight.get(t.label, 0) + len(t.text)
        return max(weight, key=lambda k: (weight[k], k))

    def text(self) -> str:
        return " ".join(t.text for t in self.tokens)


def parse_tokens(content: str) -> list[Token]:
    """Tokens of a DocBank `.txt` page (ten TAB fields a line, CRLF); ValueError on a bad line."""
    tokens = []
    # Split on "\n" only: str.splitlines would also cut at form feeds or U+2028 inside a token.
    for number, raw in enumerate(content.split("\n"), 1):
        raw = raw.removesuffix("\r")
        if not raw.strip():
            continue
        fields = raw.split("\t")
        if len(fields) != 10:
            raise ValueError(f"line {number} has {len(fields)} TAB-separated fields, expected 10")
        text, x0, y0, x1, y1, *_rgb_font, label = fields
        if text in PSEUDO_TOKENS:
            continue
        try:
            box = [int(v) for v in (x0, y0, x1, y1)]
        except ValueError:
            raise ValueError(f"line {number}: box {x0, y0, x1, y1} is not four integers") from None
        if not text.strip():
            continue
        tokens.append(Token(text.strip(), *box, label.strip()))
    return tokens


def find_gutter(tokens: list[Token]) -> tuple[int, int, float] | None:
    """(band start, band end, dividing x) between two text columns, or None on a one-column page.

    The band is the widest strip near the middle that few tokens cross (a title, an author line,
    a page number may); the dividing x is the middle of its least covered part.
    """
    if len(tokens) < 20:
        return None
    cover = [0] * 1002
    for t in tokens:  # difference array: how many tokens cover each x
        cover[max(0, min(t.x0, 1000))] += 1
        cover[max(0, min(t.x1, 1000)) + 1] -= 1
    running, counts = 0, []
    for x in range(1001):
        running += cover[x]
        counts.append(running)
    lowest = min(counts[300:701])
    if lowest > len(tokens) // 50:
        return None
    band = _widest_run(counts, lowest + max(2, len(tokens) // 100))
    if band is None or band[1] - band[0] < 12:
        return None
    core = _widest_run(counts, min(counts[band[0]:band[1] + 1]), band)
    middle = (core[0] + core[1]) / 2
    if not 380 <= middle <= 620 or band[0] == 300 or band[1] == 700:
        return None  # a gap off-centre is a ragged margin of equations, not a gutter
    left = sum(1 for t in tokens if t.x1 <= middle)
    right = sum(1 for t in tokens if t.x0 >= middle)
    if min(left, right) < max(8, 0.03 * len(tokens)):  # a short right column still counts
        return None
    return band[0], band[1], middle


def _widest_run(counts: list[int], allowed: int, within: tuple[int, int] = (300, 700)) -> tuple[int, int] | None:
    best, start = None, None
    for x in range(within[0], within[1] + 1):
        if counts[x] <= allowed:
            start = x if start is None else start
            if best is None or x - start > best[1] - best[0]:
                best = (start, x)
        else:
            start = None
    return best


def group_rows(tokens: list[Token]) -> list[list[Token]]:
    """Printed lines across the whole page: tokens whose vertical centres are close."""
    heights = [t.y1 - t.y0 for t in tokens if t.y1 > t.y0]
    tolerance = 0.5 * (median(heights) if heights else 10)
    rows: list[tuple[float, list[Token]]] = []
    for t in sorted(tokens, key=lambda t: ((t.y0 + t.y1) / 2, t.x0)):
        centre = (t.y0 + t.y1) / 2
        if rows and abs(centre - rows[-1][0]) <= tolerance:
            mean, members = rows[-1]
            members.append(t)
            rows[-1] = (mean + (centre - mean) / len(members), members)
        else:
            rows.append((centre, [t]))
    return [sorted(members, key=lambda t: t.x0) for _, members in rows]


def reading_order(tokens: list[Token]) -> tuple[list[Line], int]:
    """Lines in reading order and the number of columns found (1 or 2)."""
    gutter = find_gutter(tokens)
    rows = group_rows(tokens)
    if gutter is None:
        return [Line(r) for r in rows], 1
    band_start, band_end, middle = gutter
    ordered: list[Line] = []
    left: list[Line] = []
    right: list[Line] = []
    for row in rows:
        lpart = [t for t in row if t.x1 <= middle]
        rpart = [t for t in row if t.x0 >= middle]
        if len(lpart) + len(rpart) < len(row) or _one_line(row, lpart, rpart, band_start, band_end):
            ordered += left + right
            left, right = [], []
            ordered.append(Line(row, "full"))
            continue
        if lpart:
            left.append(Line(lpart, "left"))
        if rpart:
            right.append(Line(rpart, "right"))
    ordered += left + right
    return ordered, 2


def _one_line(row: list[Token], lpart: list[Token], rpart: list[Token], band_start: int, band_end: int) -> bool:
    """Is a row that no token crosses at the divide still one full-width line?

    A page number sits inside the gutter; a centred title or author line may have a word gap
    right at the divide; and a gap narrower than any gutter is just a gap between words.
    """
    if all(t.x0 >= band_start - 20 and t.x1 <= band_end + 20 for t in row):
        return True
    if not lpart or not rpart:
        return False
    if all(t.label in ("title", "author") for t in row):
        return True
    return rpart[0].x0 - lpart[-1].x1 < 12


def transcript(tokens: list[Token]) -> tuple[str, int]:
    """The markdown transcript of a page and its column count."""
    lines, columns = reading_order(tokens)
    if not lines:
        return "", columns
    heights = [ln.y1 - ln.y0 for ln in lines]
    line_height = median(heights)
    right_edge = {c: max(ln.x1 for ln in lines if ln.column == c) for c in {ln.column for ln in lines}}
    left_edge = {c: min(ln.x0 for ln in lines if ln.column == c) for c in {ln.column for ln in lines}}
    blocks: list[tuple[str, list[Line]]] = []
    for line in lines:
        label = line.label
        if blocks and blocks[-1][0] == label and _continues(blocks[-1][1][-1], line, line_height,
                                                            right_edge, left_edge):
            blocks[-1][1].append(line)
        else:
            blocks.append((label, [line]))
    parts = []
    for label, block in blocks:
        text = _join_lines(block)
        parts.append(HEADINGS.get(label, "") + text)
    return "\n\n".join(parts), columns


def _continues(prev: Line, line: Line, line_height: float, right_edge: dict, left_edge: dict) -> bool:
    """Does `line` carry on the block that `prev` ends (same label already checked)?"""
    if line.y0 < prev.y0:
        # A jump back up: the next column. A paragraph runs on only if its last line was full.
        extent = right_edge[prev.column] - left_edge[prev.column]
        return prev.x1 >= right_edge[prev.column] - 0.08 * extent
    return line.y0 - prev.y1 <= 0.6 * line_height


def _join_lines(block: list[Line]) -> str:
    out = ""
    for line in block:
        text = line.text()
        if not out:
            out = text
        elif out.endswith("-"):
            out += text  # a word broken at the line end: keep the hyphen, drop the gap
        else:
            out += " " + text
    return out
