"""PubTables-1M structure annotations to HTML: a grid from row and column boxes, spans, words.

The annotation (PASCAL VOC XML) holds boxes, not cells: `table row`, `table column`, `table
column header`, `table spanning cell` and `table projected row header`. Cells are the
intersections of rows and columns; a spanning cell or projected row header merges the grid
cells it covers into one (rowspan/colspan); rows under the column-header box are header rows
(`<th>`). Each word goes into the cell whose box holds the largest part of the word's box, and
a cell's words are joined in the PDF's own order (block, line, span).
"""

from __future__ import annotations

import html
import xml.etree.ElementTree as ET
from dataclasses import dataclass

Box = tuple[float, float, float, float]


@dataclass
class Annotation:
    width: float
    height: float
    rows: list[Box]
    columns: list[Box]
    headers: list[Box]
    spanning: list[tuple[str, Box]]  # ("span" | "projected", box)


def parse_annotation(data: bytes) -> Annotation:
    """The boxes of a VOC XML annotation; ValueError when it is malformed or has no grid."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise ValueError(f"malformed XML: {exc}") from None
    size = root.find("size")
    width = float(size.findtext("width", "0")) if size is not None else 0.0
    height = float(size.findtext("height", "0")) if size is not None else 0.0
    found: dict[str, list[Box]] = {}
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        if bb is None:
            raise ValueError(f"object {name!r} has no bndbox")
        try:
            box = tuple(float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            raise ValueError(f"object {name!r} has a bndbox that is not four numbers") from None
        found.setdefault(name, []).append(box)
    rows = sorted(found.get("table row", []), key=lambda b: b[1] + b[3])
    columns = sorted(found.get("table column", []), key=lambda b: b[0] + b[2])
    if not rows or not columns:
        detection = "Detection" in (root.findtext("source/database") or "") or set(found) <= {"table", "table rotated"}
        raise ValueError(f"annotation has {len(rows)} table rows and {len(columns)} table columns; need both"
                         + ("; it looks like a PubTables-1M-Detection page annotation (whole tables on a "
                            "page), while ocrcat reads the Structure subset (PubTables-1M-Structure_*)"
                            if detection and found else ""))
    spanning = [("span", b) for b in found.get("table spanning cell", [])]
    spanning += [("projected", b) for b in found.get("table projected row header", [])]
    return Annotation(width, height, rows, columns, found.get("table column header", []), spanning)


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def _covered(spans: list[Box], lo: int, hi: int, box: Box) -> list[int]:
    """Indices of the rows (lo=1, hi=3) or columns (lo=0, hi=2) that `box` covers by at least half."""
    return [i for i, b in enumerate(spans)
            if b[hi] > b[lo] and _overlap(b[lo], b[hi], box[lo], box[hi]) >= 0.5 * (b[hi] - b[lo])]


@dataclass
class Cell:
    r0: int
    r1: int  # inclusive
    c0: int
    c1: int
    header: bool
    words: list


def build_cells(ann: Annotation) -> tuple[list[list[Cell]], list[bool], int]:
    """Grid of cells (a merged cell appears in every grid slot it covers), header flags per row,
    and how many spanning boxes were dropped (covering nothing, or overlapping an earlier one)."""
    n_rows, n_cols = len(ann.rows), len(ann.columns)
    header_rows = [any(_overlap(r[1], r[3], h[1], h[3]) >= 0.5 * (r[3] - r[1]) for h in ann.headers)
                   for r in ann.rows]
    grid: list[list[Cell | None]] = [[None] * n_cols for _ in range(n_rows)]
    dropped = 0
    for kind, box in ann.spanning:
        rows = _covered(ann.rows, 1, 3, box)
        cols = list(range(n_cols)) if kind == "projected" else _covered(ann.columns, 0, 2, box)
        if not rows or not cols:
            dropped += 1
            continue
        r0, r1, c0, c1 = rows[0], rows[-1], cols[0], cols[-1]
        if any(grid[r][c] is not None for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)):
            dropped += 1
            continue
        cell = Cell(r0, r1, c0, c1, all(header_rows[r0:r1 + 1]), [])
        for r in range(r0, r1 + 1):
            for c in range(c0, c1 + 1):
                grid[r][c] = cell
    for r in range(n_rows):
        for c in range(n_cols):
            if grid[r][c] is None:
                grid[r][c] = Cell(r, r, c, c, header_rows[r], [])
    return grid, header_rows, dropped  # type: ignore[return-value]


def place_words(ann: Annotation, grid: list[list[Cell]], words: list[dict]) -> int:
    """Put each word into the cell holding most of its box; returns how many fell outside."""
    outside = 0
    for index, word in enumerate(words):
        x0, y0, x1, y1 = (float(v) for v in word["bbox"])
        # Overlap area factorises over the grid: best row times best column.
        ys = [_overlap(r[1], r[3], y0, y1) for r in ann.rows]
        xs = [_overlap(c[0], c[2], x0, x1) for c in ann.columns]
        r = max(range(len(ys)), key=ys.__getitem__)
        c = max(range(len(xs)), key=xs.__getitem__)
        if ys[r] <= 0 or xs[c] <= 0:
            outside += 1
            continue
        order = (word.get("block_num", 0), word.get("line_num", 0), word.get("span_num", 0), index)
        grid[r][c].words.append((order, str(word["text"])))
    return outside


def to_html(grid: list[list[Cell]], header_rows: list[bool]) -> str:
    """`<table>` with a `<thead>` of the leading header rows; merged cells written once."""
    lead = 0
    while lead < len(header_rows) and header_rows[lead]:
        lead += 1
    out = ["<table>"]
    for r, row in enumerate(grid):
        if r == 0 and lead:
            out.append("<thead>")
        if r == lead:
            out.append("<tbody>")
        out.append("<tr>")
        for c, cell in enumerate(row):
            if cell.r0 != r or cell.c0 != c:
                continue  # covered by a cell that starts above or to the left
            tag = "th" if cell.header else "td"
            attrs = ""
            if cell.r1 > cell.r0:
                attrs += f' rowspan="{cell.r1 - cell.r0 + 1}"'
            if cell.c1 > cell.c0:
                attrs += f' colspan="{cell.c1 - cell.c0 + 1}"'
            text = " ".join(t for _, t in sorted(cell.words))
            out.append(f"<{tag}{attrs}>{html.escape(text, quote=False)}</{tag}>")
        out.append("</tr>")
        if r == lead - 1:
            out.append("</thead>")
    if lead < len(grid):
        out.append("</tbody>")
    out.append("</table>")
    return "".join(out)


def table_html(xml_data: bytes, words: list[dict]) -> tuple[str, dict]:
    """HTML of one table and facts for `meta`; ValueError for an annotation that cannot be used."""
    ann = parse_annotation(xml_data)
    grid, header_rows, dropped = build_cells(ann)
    outside = place_words(ann, grid, words)
    merged = {id(cell) for row in grid for cell in row if cell.r1 > cell.r0 or cell.c1 > cell.c0}
    meta = {"rows": len(ann.rows), "columns": len(ann.columns), "header_rows": sum(header_rows),
            "spanning_cells": len(merged), "words": len(words), "words_outside": outside}
    if dropped:
        meta["spanning_boxes_dropped"] = dropped
    return to_html(grid, header_rows), meta
