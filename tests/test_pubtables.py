"""PubTables-1M Structure: the three tarballs joined by name through staging, HTML from boxes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from conftest import REALDATA
from ocrcat.catalog import Catalog
from ocrcat.ingest import pubtables, synth
from ocrcat.ingest.pubtables_html import parse_annotation
from ocrcat.ingest.runner import ingest

REAL_XML = REALDATA / "pubtables" / "PubTables-1M-Structure_Annotations_Val" / "PMC497045_table_2.xml"


def test_sample_mirror_html_reproduces_generated_tables(tmp_path, catalog_dir):
    root = tmp_path / "m" / "pubtables"
    pubtables.write_sample_mirror(root, 40, seed=5)
    assert sorted(p.name for p in root.glob("*.tar.gz")) == sorted(
        [f"PubTables-1M-Structure_{k}_{s}.tar.gz" for k in ("Annotations", "Images") for s in ("Train", "Val", "Test")]
        + ["PubTables-1M-Structure_Table_Words.tar.gz"])
    expected = {name: v[3] for items in pubtables.sample_tables(40, 5).values() for name, v in items.items()}
    with Catalog(catalog_dir) as cat:
        ingest(cat, "pubtables", mirror=tmp_path / "m", options={"tables_per_shard": 8})
        rows = cat.con.execute("SELECT source_key, split, text, response, image_format FROM samples").fetchall()
        assert cat.con.execute("SELECT count(*) FROM ingest_errors").fetchone()[0] == 0
        shards = cat.con.execute("SELECT count(*) FROM ingest_shards WHERE source = 'pubtables'").fetchone()[0]
    assert len(rows) == 40 and shards > 3
    assert {r[1] for r in rows} == {"train", "val", "test"}
    for key, _, text, response, fmt in rows:
        assert text == "<image>\nConvert this table to HTML." and fmt == "JPEG"
        assert response == expected[key], key
    spans = " ".join(r[3] for r in rows)
    assert 'rowspan="2"' in spans and 'colspan="2"' in spans and "<th" in spans
    assert re.search(r'<td colspan="\d">Cohort [A-F]</td>', spans)  # a projected row header


def test_staging_is_reused_and_bounded_by_bucket(tmp_path):
    root = tmp_path / "pubtables"
    pubtables.write_sample_mirror(root, 30, seed=1)
    options = {"tables_per_shard": 5, "staging": str(tmp_path / "stage")}
    shards = pubtables.plan(root, "train", options)
    assert sum(s.size for s in shards) == 24 and len(shards) >= 3
    assert all(s.size == sum(1 for r in pubtables.read(s, options)) for s in shards)
    manifest = tmp_path / "stage" / "manifest.json"
    before = manifest.stat().st_mtime_ns
    pubtables.plan(root, "val", options)  # same tarballs: no second pass over them
    assert manifest.stat().st_mtime_ns == before


def _real_table(tmp_path: Path) -> tuple[bytes, bytes, list]:
    """The real annotation with a drawn image and words consistent with its boxes."""
    xml_data = REAL_XML.read_bytes()
    ann = parse_annotation(xml_data)
    img = Image.new("RGB", (int(ann.width), int(ann.height)), "white")
    d = ImageDraw.Draw(img)
    words = []
    span = ann.spanning[0][1]
    for r, row in enumerate(ann.rows):
        for c, col in enumerate(ann.columns):
            x0, y0, x1, y1 = col[0], row[1], col[2], row[3]
            if x0 >= span[0] and x1 <= span[2] and y0 >= span[1] - 1 and y1 <= span[3] + 1:
                continue  # inside the spanning cell: its words come below
            text = f"r{r}c{c}"
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            words.append({"bbox": [cx - 12, cy - 5, cx + 12, cy + 5], "text": text,
                          "span_num": 0, "line_num": 0, "block_num": len(words)})
            d.text((cx - 12, cy - 5), text, fill="black")
    cy = (span[1] + span[3]) / 2
    for i, text in enumerate(["Total", "(mean)"]):  # "Total" drawn right of "(mean)": span order wins
        x = span[0] + 5 + 35 * (1 - i)
        words.append({"bbox": [x, cy - 5, x + 30, cy + 5], "text": text,
                      "span_num": i, "line_num": 0, "block_num": 999})
    return xml_data, synth.encode(img, "JPEG"), words


def test_a_real_detection_annotation_is_named_as_such():
    """A page of the Detection subset (tables on a page, no rows or columns) in place of a Structure
    table: the error says which subset ocrcat reads."""
    page = REALDATA / "pubtables" / "PubTables1M-Detection-PASCAL-VOC" / "val" / "PMC493268_7.xml"
    with pytest.raises(ValueError, match="0 table rows and 0 table columns.*Detection page annotation.*"
                                         "Structure subset"):
        parse_annotation(page.read_bytes())
    with pytest.raises(ValueError, match="need both$"):  # a Structure table without its grid: no such hint
        parse_annotation(pubtables.voc_xml([("table", (0, 0, 10, 10)), ("table column", (0, 0, 5, 10))], 10, 10))


def test_real_annotation_hand_checked(tmp_path, catalog_dir):
    xml_data, jpeg, words = _real_table(tmp_path)
    pubtables.write_mirror(tmp_path / "m" / "pubtables", {"val": {"PMC497045_table_2": (xml_data, jpeg, words)}})
    with Catalog(catalog_dir) as cat:
        ingest(cat, "pubtables", mirror=tmp_path / "m")
        assert cat.con.execute("SELECT count(*) FROM ingest_errors").fetchone()[0] == 0
        split, html, meta = cat.con.execute("SELECT split, response, meta FROM samples").fetchone()
    assert split == "val"
    rows = re.findall(r"<tr>(.*?)</tr>", html)
    assert len(rows) == 34 and json.loads(meta)["columns"] == 5
    # The column-header box covers exactly the first row: five <th>, in a <thead>.
    assert html.startswith("<table><thead><tr><th>r0c0</th><th>r0c1</th>")
    assert rows[0].count("<th>") == 5 and len(re.findall(r"<th[ >]", html)) == 5
    # The spanning cell (y 303-341, first column) covers rows 14 and 15: one cell, rowspan 2.
    assert rows[14] == '<td rowspan="2">Total (mean)</td><td>r14c1</td><td>r14c2</td><td>r14c3</td><td>r14c4</td>'
    assert rows[15] == "<td>r15c1</td><td>r15c2</td><td>r15c3</td><td>r15c4</td>"
    assert "<td>r33c4</td>" in rows[33]


def test_missing_and_broken_members_are_errors(tmp_path, catalog_dir):
    tables = pubtables.sample_tables(10, 2)["train"]
    items = {name: v[:3] for name, v in tables.items()}
    names = list(items)
    xml_data, jpeg, words = items[names[0]]
    items[names[0]] = (xml_data, None, words)  # no image
    xml_data, jpeg, words = items[names[1]]
    items[names[1]] = (xml_data, jpeg, None)  # no words
    items[names[2]] = (b"<annotation><object><name>table row", jpeg, words)  # cut-off XML
    items[names[3]] = (pubtables.voc_xml([("table", (0, 0, 9, 9))], 10, 10), jpeg, words)  # no grid
    pubtables.write_mirror(tmp_path / "m" / "pubtables", {"train": items})
    with Catalog(catalog_dir) as cat:
        ingest(cat, "pubtables", mirror=tmp_path / "m")
        errors = {k: (s, m) for k, s, m in cat.con.execute(
            "SELECT source_key, stage, message FROM ingest_errors").fetchall()}
        n = cat.con.execute("SELECT count(*) FROM samples").fetchone()[0]
    assert n == len(items) - 4
    assert errors[names[0]][0] == "image"
    assert errors[names[1]][0] == "read" and "_words.json" in errors[names[1]][1]
    assert errors[names[2]][0] == "parse" and "malformed XML" in errors[names[2]][1]
    assert errors[names[3]][0] == "parse" and "0 table rows" in errors[names[3]][1]


def test_staging_never_replaces_a_foreign_folder(tmp_path):
    root = tmp_path / "pubtables"
    pubtables.write_sample_mirror(root, 10, seed=0)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(pubtables.MirrorError, match="not an ocrcat staging folder"):
        pubtables.plan(root, "train", {"tables_per_shard": 256, "staging": str(foreign)})
    assert (foreign / "notes.txt").read_text() == "keep me"
