"""PlotQA: chart tags become Markdown tables, checked against the mirror's tag text read back with
the test's own regexes; real PlotQA charts and real PlotQA annotations (the hub's `<s>` wrapper,
line and bar field spellings, x as indices); horizontal bars; tags cut short and other bad rows."""

from __future__ import annotations

import json
import random
import re

import pyarrow.parquet as pq
import pytest

from conftest import REALDATA
from ocrcat.catalog import Catalog
from ocrcat.ingest import plotqa, synth
from ocrcat.ingest.parquet import split_file_name, write_hub_parquet
from ocrcat.ingest.runner import ingest

from test_catalog import png_bytes

SERIES = re.compile(r"<s_y>(.*?)</s_y><s_x>(.*?)</s_x>(?:<s_width>[^<]*</s_width>)?<s_name>(.*?)</s_name>")
BOX = re.compile(r"<s_y>(.*?)</s_y><s_x>(.*?)</s_x><s_w>(.*?)</s_w><s_h>(.*?)</s_h>")


def expected_table(text: str) -> tuple[list[str], list[list[str]]]:
    """(series names, rows of [category, value per series]) read from tag text by the test itself."""
    boxes = [BOX.findall(b) for b in re.findall(r"<s_bboxes>(.*?)</s_bboxes>", text)]
    series = SERIES.findall(re.sub(r"<s_bboxes>.*?</s_bboxes>", "", text))
    xs = [x.split("<sep/>") for _, x, _ in series]
    ys = [y.split("<sep/>") for y, _, _ in series]
    numeric = lambda groups: all(re.fullmatch(r"-?[\d.]+(e[+-]?\d+)?", v) for g in groups for v in g)  # noqa: E731
    lefts = {b[1] for group in boxes for b in group}
    line = "<s_label>" in text  # line series are never horizontal
    horizontal = not line and numeric(xs) and (not numeric(ys) or (len(lefts) == 1 and sum(map(len, boxes)) > 1))
    categories, values = (ys, xs) if horizontal else (xs, ys)
    return [name for _, _, name in series], [[c, *(v[i] for v in values)] for i, c in enumerate(categories[0])]


def markdown_cells(table: str) -> tuple[list[str], list[list[str]]]:
    lines = table.split("\n")
    assert re.fullmatch(r"\|( --- \|)+", lines[1])
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return cells[0], cells[2:]


def test_ingest_matches_the_mirror_tags(sample_mirror_factory, catalog_dir):
    root = sample_mirror_factory("plotqa")
    with Catalog(catalog_dir) as cat:
        summaries = ingest(cat, "plotqa", mirror=root)
        rows = {(r[0], r[1]): r[2:] for r in cat.con.execute(
            "SELECT split, source_key, text, response, image_path, meta->>'orientation' FROM samples").fetchall()}
    assert sum(s.errors for s in summaries) == 0
    hub_split = {"train": "train", "validation": "val", "test": "test"}
    seen, orientations, prompts = 0, set(), set()
    for path in sorted((root / "plotqa/data").glob("*.parquet")):
        for index, record in enumerate(pq.read_table(path).to_pylist()):
            text, response, image_path, orientation = rows[(hub_split[path.name.split("-")[0]], f"data/{path.name}#{index}")]
            names, table = expected_table(record["text"])
            header, body = markdown_cells(response)
            assert header == ["", *names] and body == table
            assert len(names) >= 1 and all(len(r) == len(names) + 1 for r in body)
            assert text.startswith("<image>\n") and text[len("<image>\n"):] in plotqa.PROMPTS
            assert (catalog_dir / image_path).read_bytes() == record["image"]["bytes"]
            orientations.add(orientation)
            prompts.add(text)
            seen += 1
    assert seen == len(rows) == 40
    assert orientations == {"horizontal", "vertical"} and len(prompts) > 1


def test_mirror_tags_follow_the_grammar(sample_mirror_factory):
    root = sample_mirror_factory("plotqa")
    texts = [r["text"] for p in (root / "plotqa/data").glob("*.parquet") for r in pq.read_table(p).to_pylist()]
    assert any(t.count("<s_name>") >= 2 for t in texts)  # several series
    assert all(t.startswith("<s><s_y>") and "<s_bboxes><s_y>" in t and "<sep/>" in t for t in texts)
    # The hub's real forms, all of them: with and without </s>, bar and line spellings, x as indices.
    assert any(t.endswith("</s>") for t in texts) and any(not t.endswith("</s>") for t in texts)
    assert any("<s_width>" in t and "<s_labels>" in t and "<s_colors>#" in t and "<s_color>" not in t for t in texts)
    assert any("<s_label>" in t and "<s_color>#" in t and "<s_colors>" not in t for t in texts)
    assert any("<s_x>0<sep/>1<sep/>2" in t for t in texts)


@pytest.mark.parametrize("kind", ["vbar", "hbar", "line", "dot_line"])
def test_each_chart_kind_tabulates_its_drawn_values(kind):
    """Year categories on both axes kinds: the marks tell horizontal bars from the rest."""
    chart = synth.random_series_chart(random.Random(5), kind)
    chart.categories = [str(2000 + i) for i in range(len(chart.categories))]
    _, boxes = synth.draw_series_chart(chart)
    table, meta = plotqa.chart_table(plotqa.chart_tags(chart, boxes))
    header, body = markdown_cells(table)
    assert header == ["", *(name for name, _, _ in chart.series)]
    assert body == [[c, *(f"{values[i]:g}" for _, values, _ in chart.series)] for i, c in enumerate(chart.categories)]
    assert meta["orientation"] == ("horizontal" if kind == "hbar" else "vertical")
    assert meta["colors"] == [colour for _, _, colour in chart.series]


# Real PlotQA charts; the tag text is written here from what each chart shows, in the hub's real
# form: the `<s>` wrapper (closed by `</s>` or not), bar series with <s_width>, <s_labels>,
# <s_colors>, line series with <s_label>, <s_color>.
def _bar(name: str, colour: str, width: str = "0.4") -> str:
    return f"<s_width>{width}</s_width><s_name>{name}</s_name><s_labels>{name}</s_labels><s_colors>{colour}</s_colors>"


def _line(name: str, colour: str) -> str:
    return f"<s_name>{name}</s_name><s_label>{name}</s_label><s_color>{colour}</s_color>"


REAL = {
    "1_hbar_categorical.png": (
        "<s><s_y>07:00:00<sep/>08:00:00<sep/>09:00:00</s_y><s_x>1.92<sep/>2<sep/>1.9</s_x>" + _bar("CH4", "#a0522d")
        + "<s_bboxes><s_y>357</s_y><s_x>126</s_x><s_w>338</s_w><s_h>20</s_h><sep/>"
        "<s_y>227</s_y><s_x>126</s_x><s_w>352</s_w><s_h>20</s_h><sep/><s_y>93</s_y><s_x>126</s_x><s_w>334</s_w>"
        "<s_h>20</s_h></s_bboxes><sep/><s_y>07:00:00<sep/>08:00:00<sep/>09:00:00</s_y><s_x>0.4<sep/>0.45<sep/>0.4"
        "</s_x>" + _bar("CO", "#4b0082") + "<s_bboxes><s_y>338</s_y><s_x>126</s_x><s_w>70</s_w>"
        "<s_h>20</s_h></s_bboxes><sep/><s_y>07:00:00<sep/>08:00:00<sep/>09:00:00</s_y><s_x>0.1<sep/>0.15<sep/>0.2"
        "</s_x>" + _bar("NMHC", "#adff2f") + "</s>",
        "|  | CH4 | CO | NMHC |\n| --- | --- | --- | --- |\n| 07:00:00 | 1.92 | 0.4 | 0.1 |\n"
        "| 08:00:00 | 2 | 0.45 | 0.15 |\n| 09:00:00 | 1.9 | 0.4 | 0.2 |",
    ),
    "3_vbar_categorical.png": (
        "<s><s_y>676<sep/>641<sep/>603<sep/>575</s_y><s_x>2002<sep/>2003<sep/>2004<sep/>2005</s_x>"
        + _bar("Bulgaria", "#e9967a") + "<s_bboxes><s_y>48</s_y><s_x>91</s_x><s_w>17</s_w>"
        "<s_h>226</s_h><sep/><s_y>61</s_y><s_x>199</s_x><s_w>17</s_w><s_h>213</s_h></s_bboxes><sep/>"
        "<s_y>592<sep/>537<sep/>485<sep/>440</s_y><s_x>2002<sep/>2003<sep/>2004<sep/>2005</s_x>"
        + _bar("Cuba", "#483d8b") + "<s_bboxes><s_y>76</s_y><s_x>108</s_x><s_w>17</s_w>"
        "<s_h>198</s_h><sep/><s_y>94</s_y><s_x>216</s_x><s_w>17</s_w><s_h>180</s_h></s_bboxes>",
        "|  | Bulgaria | Cuba |\n| --- | --- | --- |\n| 2002 | 676 | 592 |\n| 2003 | 641 | 537 |\n"
        "| 2004 | 603 | 485 |\n| 2005 | 575 | 440 |",
    ),
    "149_hbar_categorical.png": (
        "<s><s_y>Sample 33<sep/>Sample 34<sep/>Sample 35<sep/>Sample 36<sep/>Sample 37</s_y>"
        "<s_x>12.9<sep/>12.6<sep/>12.7<sep/>13.3<sep/>13.9</s_x>" + _bar("Sodium content", "#7cfc00", "0.8") + "</s>",
        "|  | Sodium content |\n| --- | --- |\n| Sample 33 | 12.9 |\n| Sample 34 | 12.6 |\n"
        "| Sample 35 | 12.7 |\n| Sample 36 | 13.3 |\n| Sample 37 | 13.9 |",
    ),
    "10_dot_line.png": (
        "<s><s_y>6.08e+05<sep/>6.78e+05<sep/>8.35e+05<sep/>9.15e+05</s_y>"
        "<s_x>2010-11<sep/>2011-12<sep/>2012-13<sep/>2013-14</s_x>" + _line("Earning from Goods", "#a0522d"),
        "|  | Earning from Goods |\n| --- | --- |\n| 2010-11 | 6.08e+05 |\n| 2011-12 | 6.78e+05 |\n"
        "| 2012-13 | 8.35e+05 |\n| 2013-14 | 9.15e+05 |",
    ),
    "1304_line.png": (
        "<s><s_y>11700<sep/>12100<sep/>16600<sep/>23800<sep/>26200<sep/>26500</s_y>"
        "<s_x>0<sep/>1<sep/>2<sep/>3<sep/>4<sep/>5</s_x>" + _line("Banana production", "#b22222") + "</s>",
        "|  | Banana production |\n| --- | --- |\n| 0 | 11700 |\n| 1 | 12100 |\n| 2 | 16600 |\n| 3 | 23800 |\n"
        "| 4 | 26200 |\n| 5 | 26500 |",
    ),
    "181_line.png": (
        "<s>" + "<sep/>".join(
            f"<s_y>{values}</s_y><s_x>2002<sep/>2004<sep/>2006<sep/>2008<sep/>2010<sep/>2012</s_x>"
            + _line(name, colour)
            for name, values, colour in [
                ("Bangladesh", "0.52<sep/>0.59<sep/>0.79<sep/>1.17<sep/>1.09<sep/>1.15", "#00ee76"),
                ("Macedonia", "0.85<sep/>1.17<sep/>1.23<sep/>1.15<sep/>1.52<sep/>1.75", "#ff0000"),
                ("Peru", "0.74<sep/>1.12<sep/>1.22<sep/>1.42<sep/>1.41<sep/>1.63", "#4169e1"),
                ("Switzerland", "0.89<sep/>1.29<sep/>1.27<sep/>1.3<sep/>1.66<sep/>1.88", "#301934")]),
        None,
    ),
}


def test_realdata_plotqa_charts(tmp_path, catalog_dir):
    images = sorted((REALDATA / "plotqa/images").glob("*.png"))
    assert sorted(p.name for p in images) == sorted(REAL)
    rel = f"data/{split_file_name('validation')}"
    write_hub_parquet(tmp_path / "plotqa" / rel, [{"image": p.read_bytes(), "text": REAL[p.name][0]} for p in images],
                      plotqa.FEATURES)
    with Catalog(catalog_dir) as cat:
        [summary] = ingest(cat, "plotqa", mirror=tmp_path)
        rows = dict(cat.con.execute("SELECT source_key, response FROM samples WHERE split = 'val'").fetchall())
        shapes = dict(cat.con.execute("SELECT source_key, [image_width, image_height] FROM samples").fetchall())
    assert (summary.rows, summary.errors) == (6, 0)
    for i, path in enumerate(images):
        text, table = REAL[path.name]
        names, body = expected_table(text)
        assert markdown_cells(rows[f"{rel}#{i}"]) == (["", *names], body)
        if table:
            assert rows[f"{rel}#{i}"] == table
    assert shapes[f"{rel}#{images.index(REALDATA / 'plotqa/images/181_line.png')}"] == [665, 500]


def test_bad_rows_become_error_rows(tmp_path, catalog_dir):
    good_text = REAL["3_vbar_categorical.png"][0]
    image = png_bytes((60, 40))
    rows = [{"image": png_bytes((50 + i, 40)), "text": good_text} for i in range(3)] + [
        {"image": image, "text": good_text[: len(good_text) // 2]},  # cut in the middle
        {"image": image, "text": good_text[: good_text.index("<sep/><s_y>592") + 6]},  # cut after a series
        {"image": image[:40], "text": good_text},  # broken image
        {"image": image, "text": "<s_y>1<sep/>2</s_y><s_x>a</s_x><s_name>n</s_name>"},  # 2 values, 1 category
        {"image": image, "text": "<s_y>a<sep/>b</s_y><s_x>c<sep/>d</s_x><s_name>n</s_name>"},  # no numbers
        {"image": image, "text": "<s_y>1</s_x><s_name>n</s_name>"},  # mismatched tags
        {"image": image, "text": ""},
        {"image": image, "text": "a chart of exports"},  # a caption, not tags
        {"image": image, "text": good_text.removeprefix("<s>") + "</s>"},  # </s> without <s>
        {"image": image, "text": "<s>" + good_text},  # <s> twice
        {"image": image, "text": good_text.replace("<s_labels>Cuba</s_labels>", "<s_marker>o</s_marker>")},
        {"image": image, "text": good_text.replace("<s_colors>#483d8b</s_colors>", "<s_color>#483d8b</s_color>")},
        {"image": image, "text": good_text.replace("<s_width>0.4</s_width><s_name>Cuba</s_name><s_labels>Cuba"
                                                   "</s_labels><s_colors>", "<s_name>Cuba</s_name><s_label>Cuba"
                                                   "</s_label><s_color>").replace("</s_colors><s_bboxes><s_y>76",
                                                                                  "</s_color><s_bboxes><s_y>76")},
    ]
    rel = f"data/{split_file_name('train')}"
    write_hub_parquet(tmp_path / "plotqa" / rel, rows, plotqa.FEATURES)
    with Catalog(catalog_dir) as cat:
        [summary] = ingest(cat, "plotqa", mirror=tmp_path)
        errors = dict(cat.con.execute("SELECT source_key, stage || ': ' || message FROM ingest_errors").fetchall())
        landed = cat.con.execute("SELECT count(*) FROM samples").fetchone()[0]
    assert (summary.rows, summary.errors, landed) == (3, 13, 3)
    assert {int(k.split("#")[1]) for k in errors} == set(range(3, 16))
    assert "cut short" in errors[f"{rel}#3"] and errors[f"{rel}#4"].startswith("parse: ")
    assert errors[f"{rel}#5"].startswith("image: ")
    assert "2 x values" not in errors[f"{rel}#6"] and "1 x values, 2 y values" in errors[f"{rel}#6"]
    assert "neither" in errors[f"{rel}#7"] and "does not close" in errors[f"{rel}#8"]
    assert errors[f"{rel}#9"].startswith("map: ") and "lacks" in errors[f"{rel}#10"]
    # Anything but the documented forms says what was expected.
    assert "ends with </s> but does not start with <s>" in errors[f"{rel}#11"]
    assert "expected <s> only at the start" in errors[f"{rel}#12"]
    assert "series 2 has <s_marker>; expected <s_y>, <s_x>, <s_name>, then <s_label>" in errors[f"{rel}#13"]
    assert "series 2 mixes line fields (<s_color>) with bar fields (<s_labels>, <s_width>)" in errors[f"{rel}#14"]
    assert "mixes line series and bar series" in errors[f"{rel}#15"]
    assert all(errors[f"{rel}#{i}"].startswith("parse: chart tags do not parse: ") for i in range(11, 16))


def test_parse_tags_handles_nesting_and_refuses_garbage():
    parsed = plotqa.parse_tags("<s_a>1<sep/>2</s_a><s_b><s_c>x</s_c><sep/><s_c>y</s_c></s_b><sep/><s_a>3</s_a>")
    assert parsed == [{"a": ["1", "2"], "b": [{"c": ["x"]}, {"c": ["y"]}]}, {"a": ["3"]}]
    for bad in ["<s_a>1<sep/></s_a>", "<s_a>1</s_a><s_a>2</s_a>", "<s_a>1", "</s_a>", "x<s_a>1</s_a>"]:
        with pytest.raises(plotqa.TagError):
            plotqa.parse_tags(bad)


def test_prompt_choice_is_stable_per_row():
    keys = [f"data/train-00000-of-00001.parquet#{i}" for i in range(40)]
    assert [plotqa.prompt_for(k) for k in keys] == [plotqa.prompt_for(k) for k in keys]
    assert set(map(plotqa.prompt_for, keys)) == set(plotqa.PROMPTS)


# SPEC §3's shape of a real row: <s>, series of <s_y>, <s_x>, <s_name>, the legend fields and the
# boxes, a top-level <sep/> between series, maybe </s>.
LINE_ROW = ("<s><s_y>25.8<sep/>24.1<sep/>22.7</s_y><s_x>0<sep/>1<sep/>2</s_x><s_name>Females</s_name>"
            "<s_label>Females</s_label><s_color>#6A5ACD</s_color><s_bboxes><s_y>160</s_y><s_x>93</s_x><s_w>13</s_w>"
            "<s_h>13</s_h><sep/><s_y>184</s_y><s_x>400</s_x><s_w>13</s_w><s_h>13</s_h><sep/><s_y>205</s_y>"
            "<s_x>707</s_x><s_w>13</s_w><s_h>13</s_h></s_bboxes><sep/><s_y>34.3<sep/>31.1<sep/>28.4</s_y>"
            "<s_x>0<sep/>1<sep/>2</s_x><s_name>Males</s_name><s_label>Males</s_label><s_color>#F0E68C</s_color>"
            "<s_bboxes><s_y>120</s_y><s_x>93</s_x><s_w>13</s_w><s_h>13</s_h></s_bboxes>")
BAR_ROW = ("<s><s_y>1996<sep/>1997<sep/>1998</s_y><s_x>3.19165<sep/>3.44935<sep/>3.800075</s_x><s_width>0.15</s_width>"
           "<s_name>Israel</s_name><s_labels>Israel</s_labels><s_colors>#006400</s_colors><s_bboxes><s_y>584</s_y>"
           "<s_x>69</s_x><s_w>87</s_w><s_h>34</s_h><sep/><s_y>357</s_y><s_x>69</s_x><s_w>94</s_w><s_h>34</s_h><sep/>"
           "<s_y>130</s_y><s_x>69</s_x><s_w>104</s_w><s_h>34</s_h></s_bboxes><sep/><s_y>1996<sep/>1997<sep/>1998"
           "</s_y><s_x>1.5<sep/>1.25<sep/>41.5075</s_x><s_width>0.15</s_width><s_name>Jordan</s_name>"
           "<s_labels>Jordan</s_labels><s_colors>#FF4500</s_colors><s_bboxes><s_y>550</s_y><s_x>69</s_x><s_w>40</s_w>"
           "<s_h>34</s_h></s_bboxes>")


@pytest.mark.parametrize("closed", [False, True])
def test_spec_shape_rows_with_both_spellings(closed):
    end = "</s>" if closed else ""
    table, meta = plotqa.chart_table(LINE_ROW + end)
    assert table == "|  | Females | Males |\n| --- | --- | --- |\n| 0 | 25.8 | 34.3 |\n| 1 | 24.1 | 31.1 |\n| 2 | 22.7 | 28.4 |"
    assert meta == {"orientation": "vertical", "series": ["Females", "Males"], "categories": 3, "style": "line",
                    "x_index": True, "colors": ["#6A5ACD", "#F0E68C"]}
    table, meta = plotqa.chart_table(BAR_ROW + end)
    # Years on y, values on x, one left edge for every box: horizontal bars.
    assert table == ("|  | Israel | Jordan |\n| --- | --- | --- |\n| 1996 | 3.19165 | 1.5 |\n| 1997 | 3.44935 | 1.25 |\n"
                     "| 1998 | 3.800075 | 41.5075 |")
    assert meta == {"orientation": "horizontal", "series": ["Israel", "Jordan"], "categories": 3, "style": "bar",
                    "colors": ["#006400", "#FF4500"]}
    # The bare tag text (wrapper stripped) gives the same table.
    assert plotqa.chart_table(BAR_ROW.removeprefix("<s>"))[0] == table


def _first_series(raw: str) -> str | None:
    """raw_text (cut at 500 characters) up to the end of its first complete series, or None."""
    end = raw.find("</s_bboxes><sep/>")
    return raw[: end + len("</s_bboxes>")] if end >= 0 else None


def test_real_plotqa_annotations(tmp_path, catalog_dir):
    records = json.loads((REALDATA / "plotqa/plotqa_test_100_even.json").read_text())
    usable = [(r, _first_series(r["raw_text"])) for r in records if _first_series(r["raw_text"])]
    # As the realdata README counts them: 29 complete first series, 26 bar and 3 line (idx 2, 4, 26).
    assert len(usable) == 29
    assert sorted(r["idx"] for r, text in usable if "<s_label>" in text) == [2, 4, 26]
    rows = [{"image": png_bytes((40 + i, 30)), "text": text + ("</s>" if i % 2 else "")}
            for i, (_, text) in enumerate(usable)]
    assert all(row["text"].startswith("<s><s_y>") for row in rows)
    rel = f"data/{split_file_name('test')}"
    write_hub_parquet(tmp_path / "plotqa" / rel, rows, plotqa.FEATURES)
    with Catalog(catalog_dir) as cat:
        [summary] = ingest(cat, "plotqa", mirror=tmp_path)
        landed = {k: (r, json.loads(m)) for k, r, m in cat.con.execute(
            "SELECT source_key, response, meta FROM samples").fetchall()}
    assert (summary.rows, summary.errors) == (29, 0)
    for i, (record, text) in enumerate(usable):
        response, meta = landed[f"{rel}#{i}"]
        header, body = markdown_cells(response)
        assert header == ["", record["series_name"]]
        horizontal = "<s_labels>" in text
        assert meta["orientation"] == ("horizontal" if horizontal else "vertical"), record["idx"]
        categories, values = (record["y_values"], record["x_values"]) if horizontal else \
            (record["x_values"], record["y_values"])
        assert body == [[c, v] for c, v in zip(categories, values)], record["idx"]
        assert meta["style"] == ("bar" if horizontal else "line")
        assert meta.get("x_index", False) == (not horizontal), record["idx"]  # the 3 line charts' x: 0…n-1
