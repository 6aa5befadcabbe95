"""DocBank reading order: tokens with boxes and labels in, a markdown transcript out.

DocBank lists tokens in pdfplumber word order, which on a two-column page reads each printed
line straight across both columns. To read the left column before the right we find the gutter
(a vertical strip near the middle that almost no token crosses), cut each printed line at it,
and between two full-width lines (a title, a wide figure caption) emit the left-column lines
before the right-column ones. Lines are then grouped into blocks by label, spacing and first-line
indentation: title -> `# `, section -> `## `, everything else a paragraph.

The transcript is a training target, so it must not teach what the image does not show:
pdfminer's `(cid:N)` placeholders (glyphs it could not map) are counted and, by default, dropped;
a title-labelled line in the top band of a page other than the paper's first is the running head
(DocBank labels it `title`, page number or date glued on), kept as a plain line, not a heading.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from statistics import median
from typing import NamedTuple

PSEUDO_TOKENS = ("##LTLine##", "##LTFigure##")
HEADINGS = {"title": "# ", "section": "## "}
CID = re.compile(r"\(cid:\d+\)")
TOP_BAND = 100  # page units (of 1000): a running head sits above this
INDENT = (8, 60)  # a first line this far (page units) right of its block's left edge starts a paragraph
INDENTED_LABELS = ("paragraph", "abstract")
HANGING_LABELS = ("reference", "list")  # an entry's first line sticks out left of its continuation
RUNNING_HEAD = "running_head"  # the role of a title line that is a running head: plain text


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
    """A printed line (or a column's part of one); its tokens are fixed once made, so the box and
    label are computed once."""

    tokens: list[Token] = field(default_factory=list)
    column: str = "full"  # full | left | right

    @cached_property
    def x0(self) -> int:
        return min(t.x0 for t in self.tokens)

    @cached_property
    def x1(self) -> int:
        return max(t.x1 for t in self.tokens)

    @cached_property
    def y0(self) -> int:
        return min(t.y0 for t in self.tokens)

    @cached_property
    def y1(self) -> int:
        return max(t.y1 for t in self.tokens)

    @cached_property
    def label(self) -> str:
        # The label most of the line's characters carry: an inline formula inside a paragraph
        # line does not split the paragraph.
        weight: dict[str, int] = {}
        for t in self.tokens:
            weight[t.label] = weight.get(t.label, 0) + len(t.text)
        return max(weight, key=lambda k: (weight[k], k))

    def text(self) -> str:
        return " ".join(t.text for t in self.tokens if t.text)


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


def count_cid(tokens: list[Token]) -> int:
    """How many `(cid:N)` placeholders the page's tokens hold."""
    return sum(len(CID.findall(t.text)) for t in tokens)


def strip_cid(tokens: list[Token]) -> list[Token]:
    """The tokens with `(cid:N)` placeholders removed from their text.

    A token left empty keeps its box (it still shapes lines and columns) but adds no text.
    """
    return [Token(" ".join(CID.sub(" ", t.text).split()), t.x0, t.y0, t.x1, t.y1, t.label) if "(cid:" in t.text else t
            for t in tokens]


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


class Transcript(NamedTuple):
    text: str
    columns: int
    running_heads: int  # lines read as a running head (plain text, not `# `)


def transcript(tokens: list[Token], *, first_page: bool = True) -> Transcript:
    """The markdown transcript of a page, its column count and how many running-head lines it has.

    `first_page`: the page is its paper's first; elsewhere a title line in the top band is the
    running head. It stays in the transcript as a plain line: the image shows it, and a target
    that skips visible text teaches the model to skip text; but it is not this page's heading.
    """
    lines, columns = reading_order(tokens)
    if not lines:
        return Transcript("", columns, 0)
    heights = [ln.y1 - ln.y0 for ln in lines]
    line_height = median(heights)
    # The usual step from one line to the next: on a double-spaced page it is far more than a
    # line's height, and lines that step so are still one paragraph.
    steps = [b.y0 - a.y0 for a, b in zip(lines, lines[1:])
             if a.column == b.column and 0 < b.y0 - a.y0 <= 3 * line_height]
    pitch = median(steps) if steps else line_height
    right_edge = {c: max(ln.x1 for ln in lines if ln.column == c) for c in {ln.column for ln in lines}}
    left_edge = {c: min(ln.x0 for ln in lines if ln.column == c) for c in {ln.column for ln in lines}}
    blocks: list[tuple[str, list[Line]]] = []
    heads = 0
    for line in lines:
        label = line.label
        if label == "title" and not first_page and line.y0 < TOP_BAND:
            label, heads = RUNNING_HEAD, heads + 1
        if blocks and blocks[-1][0] == label and _continues(blocks[-1][1], line, label, line_height, pitch,
                                                            right_edge, left_edge):
            blocks[-1][1].append(line)
        else:
            blocks.append((label, [line]))
    parts = []
    for label, block in blocks:
        text = _join_lines(block)
        if text:  # a block of only (cid:N) placeholders, once they are dropped, has nothing to say
            parts.append(HEADINGS.get(label, "") + text)
    return Transcript("\n\n".join(parts), columns, heads)


def _continues(block: list[Line], line: Line, label: str, line_height: float, pitch: float, right_edge: dict,
               left_edge: dict) -> bool:
    """Does `line` carry on `block` (same label already checked)?"""
    prev = block[-1]
    if line.y0 < prev.y0:
        # A jump back up: the next column. A paragraph runs on only if its last line was full
        # and the new column's first line is not indented.
        extent = right_edge[prev.column] - left_edge[prev.column]
        return prev.x1 >= right_edge[prev.column] - 0.08 * extent and not (
            label in INDENTED_LABELS and _indented(line.x0 - left_edge[line.column]))
    if line.y0 - prev.y1 > 0.6 * line_height:
        # More space than between a single-spaced paragraph's lines: still the same paragraph if
        # the page steps so from line to line (double spacing) and `prev` ran the column's width.
        extent = right_edge[prev.column] - left_edge[prev.column]
        full = prev.x1 >= right_edge[prev.column] - 0.1 * extent and prev.x1 - prev.x0 >= 0.5 * extent
        if not (full and line.y0 - prev.y0 <= 1.3 * pitch):
            return False
    if label in HANGING_LABELS and prev.x0 - line.x0 >= INDENT[0]:
        return False  # back at the left edge after an indented continuation: the next entry
    # Paragraphs set without space between them are told apart by the first line's indent,
    # measured against the block's own left edge in this column.
    if label not in INDENTED_LABELS:
        return True
    edge = min((ln.x0 for ln in block if ln.column == line.column), default=left_edge[line.column])
    return not _indented(line.x0 - edge)


def _indented(offset: float) -> bool:
    return INDENT[0] <= offset <= INDENT[1]


def _join_lines(block: list[Line]) -> str:
    out = ""
    for line in block:
        text = line.text()
        if not text:
            continue
        if not out:
            out = text
        elif out.endswith("-"):
            out += text  # a word broken at the line end: keep the hyphen, drop the gap
        else:
            out += " " + text
    return out
