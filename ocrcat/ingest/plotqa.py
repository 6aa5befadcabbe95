"""PlotQA (achang/plot_qa): one catalog row per chart, its data as a Markdown table.

Hub layout: `data/{train,validation,test}-*.parquet` with columns image (Image) and text. `text` is
not a caption but the chart's annotation in Donut's tag syntax: one item per series, separated by
`<sep/>`, each with fields `<s_x>`, `<s_y>` (values separated by `<sep/>`), `<s_name>`, and
rendering facts such as `<s_color>` and `<s_bboxes>` (a list of {x, y, w, h} marks, whose own
`<s_x>`/`<s_y>` are nested, so the text must be parsed, not searched with regexes).
Horizontal bars hold the categories in `y` and the values in `x`.
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


def _number(value: str) -> bool:
    try:
        float(value.replace(",", ""))
        return True
    except ValueError:
        return False


def chart_table(text: str) -> tuple[str, dict]:
    """The chart's data as a Markdown table (a row per category, a column per series) and facts
    for `meta`; TagError when the text does not describe a chart."""
    series = parse_tags(text)
    if not series:
        raise TagError("no series in the text")
    for n, item in enumerate(series, 1):
        if not isinstance(item, dict) or not {"x", "y", "name"} <= item.keys():
            raise TagError(f"series {n} lacks <s_x>, <s_y> or <s_name>")
        if not all(isinstance(v, str) for key in ("x", "y", "name") for v in item[key]):
            raise TagError(f"series {n} has nested fields inside <s_x>, <s_y> or <s_name>")
        if len(item["name"]) != 1 or len(item["x"]) != len(item["y"]) or not item["x"]:
            raise TagError(f"series {n} has {len(item['x'])} x values, {len(item['y'])} y values "
                           f"and {len(item['name'])} names")
    horizontal = _horizontal(series)
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
    colours = [item["color"][0] for item in series if isinstance(item.get("color"), list) and item["color"]]
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


def chart_tags(chart: synth.SeriesChart, boxes: list[list[tuple]]) -> str:
    """A chart in PlotQA's tag text: Donut's serialisation (keys in reverse order) of its series."""
    items = []
    for (name, values, colour), marks in zip(chart.series, boxes):
        numbers = "<sep/>".join(f"{v:g}" for v in values)
        categories = "<sep/>".join(chart.categories)
        x, y = (numbers, categories) if chart.kind == "hbar" else (categories, numbers)
        boxes_text = "<sep/>".join(f"<s_y>{b[1]:g}</s_y><s_x>{b[0]:g}</s_x><s_w>{b[2]:g}</s_w><s_h>{b[3]:g}</s_h>"
                                   for b in marks)
        items.append(f"<s_y>{y}</s_y><s_x>{x}</s_x><s_name>{name}</s_name><s_color>{colour}</s_color>"
                     f"<s_bboxes>{boxes_text}</s_bboxes>")
    return "<sep/>".join(items)


def write_sample_mirror(root: Path, rows: int, seed: int) -> None:
    """Bar, horizontal-bar, line and dot-line charts with their tag text; several series each."""
    rng = random.Random(seed)
    kinds = ["vbar", "hbar", "line", "dot_line"]
    for split, n in synth.split_sizes(rows, INFO.splits).items():
        records = []
        for i in range(n):
            chart = synth.random_series_chart(rng, kinds[i % len(kinds)] if split == "train" else rng.choice(kinds))
            img, boxes = synth.draw_series_chart(chart)
            records.append({"image": synth.encode(img, "PNG"), "text": chart_tags(chart, boxes)})
        write_hub_parquet(root / "data" / split_file_name(HUB_SPLITS[split]), records, FEATURES)
