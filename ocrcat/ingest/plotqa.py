"""PlotQA (achang/plot_qa): one catalog row per chart, its data as a Markdown table.

Hub layout: `data/{train,validation,test}-*.parquet` with columns image (Image) and text. `text` is
not a caption but the chart's annotation in Donut's tag syntax, wrapped in Donut's start token
`<s>` and sometimes closed by `</s>`: one item per series, separated by a top-level `<sep/>`, each
with fields `<s_y>`, `<s_x>` (values separated by `<sep/>`), `<s_name>`, then either a line
series' `<s_label>`, `<s_color>` or a bar series' `<s_width>`, `<s_labels>`, `<s_colors>`, and
`<s_bboxes>` (a list of {x, y, w, h} marks, whose own `<s_x>`/`<s_y>` are nested, so the text must
be parsed, not searched with regexes). Horizontal bars hold the categories in `y` and the values
in `x`; line charts often give x as the indices 0…n-1 rather than the axis labels.
"""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path
from typing import Iterator

from ocrcat.ingest import synth
from ocrcat.ingest.base import Option, Record, Rejected, Sample, Shard, SourceInfo, vision_prompt
from ocrcat.ingest.parquet import IMAGE, STRING, plan_split, read_rows, row_key, split_file_name, write_hub_parquet

INFO = SourceInfo(
    name="plotqa",
    hub_repo="achang/plot_qa",
    files=("data/*.parquet",),
    splits=("train", "val", "test"),
    licence="CC-BY-4.0 (PlotQA)",
    one_row_is="a chart and its data table",
)
OPTIONS: dict[str, Option] = {}
HUB_SPLITS = {"train": "train", "val": "validation", "test": "test"}
FEATURES = {"image": IMAGE, "text": STRING}
PROMPTS = (
    "Convert this chart to a table.",
    "Extract the data of this chart as a Markdown table.",
    "Write out the data table behind this chart.",
    "List every series of this chart with its values in a table.",
)


class TagError(ValueError):
    """The tag text is not well formed (cut short, mismatched tags, empty values)."""


_TOKENS = re.compile(r"<s_([^<>/\s]+)>|</s_([^<>/\s]+)>|<sep/>")


def parse_tags(text: str) -> list:
    """Donut tag text as data: a list of items, each a dict of tag -> list, or a leaf string.

    `<s_k>a<sep/>b</s_k>` gives {"k": ["a", "b"]}; nested fields give lists of dicts.
    """
    tokens: list[tuple[str, str]] = []
    last = 0
    for m in _TOKENS.finditer(text):
        tokens.append(("text", text[last:m.start()]))
        tokens.append(("open", m[1]) if m[1] else ("close", m[2]) if m[2] else ("sep", ""))
        last = m.end()
    if re.search(r"<[^>]*$", text[last:]):
        raise TagError("the text ends inside a tag: it is cut short")
    tokens.append(("text", text[last:]))
    return _parse_content(tokens, 0, None)[0]


def _parse_content(tokens: list[tuple[str, str]], i: int, tag: str | None) -> tuple[list, int]:
    items: list = []
    current: dict | str | None = None

    def finish() -> None:
        if current is None or (isinstance(current, str) and not current.strip()):
            if items or (tokens[i][0] == "sep" if i < len(tokens) else False):
                raise TagError(f"an empty value next to <sep/> inside {_where(tag)}")
            return
        items.append(current.strip() if isinstance(current, str) else current)

    while i < len(tokens):
        kind, value = tokens[i]
        if kind == "close":
            if value != tag:
                raise TagError(f"</s_{value}> does not close {_where(tag)}")
            finish()
            return items, i + 1
        if kind == "sep":
            finish()
            current = None
        elif kind == "text":
            if isinstance(current, dict):
                if value.strip():
                    raise TagError(f"text {value.strip()[:30]!r} between fields inside {_where(tag)}")
            else:
                current = (current or "") + value
        else:
            if isinstance(current, str) and current.strip():
                raise TagError(f"text {current.strip()[:30]!r} before <s_{value}> inside {_where(tag)}")
            current = current if isinstance(current, dict) else {}
            if value in current:
                raise TagError(f"<s_{value}> appears twice in one item inside {_where(tag)}")
            current[value], i = _parse_content(tokens, i + 1, value)
            continue
        i += 1
    if tag is not None:
        raise TagError(f"<s_{tag}> is never closed: the text is cut short")
    finish()
    return items, i


def _where(tag: str | None) -> str:
    return f"<s_{tag}>" if tag else "the top level"


def unwrap(text: str) -> str:
    """The tag text inside Donut's `<s>` … `</s>` wrapper (the closing token is optional).

    The bare tag text (the wrapper already stripped, as Donut's decoding leaves it) is accepted too;
    a stray `<s>` or `</s>` anywhere else is a TagError that says what was expected.
    """
    body = text.strip()
    if body.startswith("<s>"):
        body = body[len("<s>"):]
        if body.endswith("</s>"):
            body = body[:-len("</s>")]
    elif body.endswith("</s>"):
        raise TagError("the text ends with </s> but does not start with <s>; expected <s><s_y>…, "
                       "optionally ending with </s>")
    if "<s>" in body or "</s>" in body:
        raise TagError("<s> or </s> inside the series; expected <s> only at the start and </s> only at the end")
    return body


# The fields a series may carry: line series spell the legend entry <s_label>/<s_color>, bar series
# <s_labels>/<s_colors> with the bar <s_width> (both seen in achang/plot_qa's real rows).
REQUIRED = ("y", "x", "name")
LINE_FIELDS = frozenset({"label", "color"})
BAR_FIELDS = frozenset({"width", "labels", "colors"})
KNOWN_FIELDS = frozenset(REQUIRED) | LINE_FIELDS | BAR_FIELDS | {"bboxes"}
EXPECTED = ("<s_y>, <s_x>, <s_name>, then <s_label>, <s_color> (line series) or <s_width>, <s_labels>, "
            "<s_colors> (bar series), and <s_bboxes>")


def _style(n: int, item: dict) -> str | None:
    """'line' or 'bar' from the series' field spelling (None if it has neither); TagError when the
    series has a field of neither spelling, or mixes them."""
    unknown = sorted(item.keys() - KNOWN_FIELDS)
    if unknown:
        raise TagError(f"series {n} has {', '.join(f'<s_{k}>' for k in unknown)}; expected {EXPECTED}")
    line, bar = item.keys() & LINE_FIELDS, item.keys() & BAR_FIELDS
    if line and bar:
        raise TagError(f"series {n} mixes line fields ({', '.join(f'<s_{k}>' for k in sorted(line))}) with bar "
                       f"fields ({', '.join(f'<s_{k}>' for k in sorted(bar))}); expected {EXPECTED}")
    for key in line | bar:
        if not all(isinstance(v, str) for v in item[key]):
            raise TagError(f"series {n} has nested fields inside <s_{key}>")
    return "line" if line else "bar" if bar else None


def _number(value: str) -> bool:
    try:
        float(value.replace(",", ""))
        return True
    except ValueError:
        return False


def chart_table(text: str) -> tuple[str, dict]:
    """The chart's data as a Markdown table (a row per category, a column per series) and facts
    for `meta`; TagError when the text does not describe a chart."""
    series = parse_tags(unwrap(text))
    if not series:
        raise TagError("no series in the text")
    styles = set()
    for n, item in enumerate(series, 1):
        if not isinstance(item, dict) or not {"x", "y", "name"} <= item.keys():
            raise TagError(f"series {n} lacks <s_x>, <s_y> or <s_name>; expected {EXPECTED}")
        styles.add(_style(n, item))
        if not all(isinstance(v, str) for key in ("x", "y", "name") for v in item[key]):
            raise TagError(f"series {n} has nested fields inside <s_x>, <s_y> or <s_name>")
        if len(item["name"]) != 1 or len(item["x"]) != len(item["y"]) or not item["x"]:
            raise TagError(f"series {n} has {len(item['x'])} x values, {len(item['y'])} y values "
                           f"and {len(item['name'])} names")
    if {"line", "bar"} <= styles:
        raise TagError("the chart mixes line series and bar series; PlotQA charts are one or the other")
    # Line (and dot-line) charts are never horizontal: their categories are on x.
    horizontal = False if "line" in styles else _horizontal(series)
    key, value = ("y", "x") if horizontal else ("x", "y")
    categories = series[0][key]
    for n, item in enumerate(series, 1):
        if item[key] != categories:
            raise TagError(f"series {n} has other categories than series 1: {item[key]} vs {categories}")
        if not all(_number(v) for v in item[value]):
            raise TagError(f"series {n} has values that are not numbers: {item[value]}")
    names = [item["name"][0] for item in series]
    lines = ["| " + " | ".join(["", *map(_cell, names)]) + " |", "|" + " --- |" * (len(names) + 1)]
    for i, category in enumerate(categories):
        lines.append("| " + " | ".join([_cell(category), *(_cell(item[value][i]) for item in series)]) + " |")
    meta = {"orientation": "horizontal" if horizontal else "vertical", "series": names,
            "categories": len(categories)}
    styles.discard(None)
    if styles:
        meta["style"] = styles.pop()
    # x as 0…n-1: the table holds the indices, not the axis labels the image shows (the tags carry
    # no labels); flagged so that a mixture can leave such charts out.
    if not horizontal and len(categories) > 1 and categories == [str(i) for i in range(len(categories))]:
        meta["x_index"] = True
    colours = [colour[0] for item in series if (colour := item.get("color") or item.get("colors"))]
    if colours:
        meta["colors"] = colours
    return "\n".join(lines), meta


def _horizontal(series: list[dict]) -> bool:
    """Whether the categories sit on the y axis (horizontal bars).

    The axis that is not all numbers holds the categories. When both are numbers (years against
    values), the marks decide: horizontal bars all start at the same left edge.
    """
    x_numbers = all(_number(v) for item in series for v in item["x"])
    y_numbers = all(_number(v) for item in series for v in item["y"])
    if x_numbers != y_numbers:
        return x_numbers
    if not x_numbers:
        raise TagError("neither <s_x> nor <s_y> holds numbers: no values to tabulate")
    boxes = [b for item in series for b in item.get("bboxes", []) if isinstance(b, dict)]
    try:
        lefts = {float(b["x"][0]) for b in boxes}
        bottoms = {round(float(b["y"][0]) + float(b["h"][0]), 1) for b in boxes}
    except (KeyError, IndexError, TypeError, ValueError):
        return False  # no usable boxes: PlotQA's vertical bars and lines far outnumber horizontal bars
    return len(boxes) > 1 and len(lefts) == 1 and len(bottoms) > 1


def _cell(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ").strip()


def prompt_for(key: str) -> str:
    """One of PROMPTS, the same for a row on every run and machine."""
    return PROMPTS[int(hashlib.sha256(key.encode()).hexdigest(), 16) % len(PROMPTS)]


def plan(root: Path, split: str, options: dict) -> list[Shard]:
    return plan_split(root, f"data/{HUB_SPLITS[split]}-*.parquet", FEATURES)


def read(shard: Shard, options: dict) -> Iterator[Record]:
    for index, row in read_rows(shard, ["image", "text"]):
        key = row_key(shard, index)
        if not row["text"] or not row["text"].strip():
            yield Rejected(key, "map", "text is empty: the chart has no data")
            continue
        try:
            table, meta = chart_table(row["text"])
        except TagError as exc:
            yield Rejected(key, "parse", f"chart tags do not parse: {exc}")
            continue
        yield Sample(key, vision_prompt(prompt_for(key)), table, row["image"], meta=meta)


def chart_tags(chart: synth.SeriesChart, boxes: list[list[tuple]], *, closed: bool = True,
               x_index: bool = False) -> str:
    """A chart in PlotQA's real tag text: `<s>`, Donut's serialisation of its series, `</s>` if
    `closed`. Bars carry `<s_width>`, `<s_labels>`, `<s_colors>`; lines `<s_label>`, `<s_color>`;
    `x_index` writes a line chart's x as 0…n-1, as many real line charts do."""
    items = []
    for (name, values, colour), marks in zip(chart.series, boxes):
        numbers = "<sep/>".join(f"{v:g}" for v in values)
        indices = x_index and chart.kind in ("line", "dot_line")
        categories = "<sep/>".join(map(str, range(len(chart.categories))) if indices else chart.categories)
        x, y = (numbers, categories) if chart.kind == "hbar" else (categories, numbers)
        boxes_text = "<sep/>".join(f"<s_y>{b[1]:g}</s_y><s_x>{b[0]:g}</s_x><s_w>{b[2]:g}</s_w><s_h>{b[3]:g}</s_h>"
                                   for b in marks)
        if chart.kind in ("vbar", "hbar"):
            width = f"{0.8 / len(chart.series):.2g}"
            legend = (f"<s_width>{width}</s_width><s_name>{name}</s_name><s_labels>{name}</s_labels>"
                      f"<s_colors>{colour}</s_colors>")
        else:
            legend = f"<s_name>{name}</s_name><s_label>{name}</s_label><s_color>{colour}</s_color>"
        items.append(f"<s_y>{y}</s_y><s_x>{x}</s_x>{legend}<s_bboxes>{boxes_text}</s_bboxes>")
    return "<s>" + "<sep/>".join(items) + ("</s>" if closed else "")


def write_sample_mirror(root: Path, rows: int, seed: int) -> None:
    """Bar, horizontal-bar, line and dot-line charts with their tag text in the hub's real form
    (`<s>` wrapper, closed by `</s>` on every other row; both field spellings; line charts' x
    often as indices); several series each."""
    rng = random.Random(seed)
    kinds = ["vbar", "hbar", "line", "dot_line"]
    for split, n in synth.split_sizes(rows, INFO.splits).items():
        records = []
        for i in range(n):
            chart = synth.random_series_chart(rng, kinds[i % len(kinds)] if split == "train" else rng.choice(kinds))
            img, boxes = synth.draw_series_chart(chart)
            text = chart_tags(chart, boxes, closed=i % 2 == 0, x_index=rng.random() < 0.5)
            records.append({"image": synth.encode(img, "PNG"), "text": text})
        write_hub_parquet(root / "data" / split_file_name(HUB_SPLITS[split]), records, FEATURES)
