"""`ocrcat stats`: quantiles per source and split, token counts with a tokenizer, PNG histograms."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from ocrcat import vision
from ocrcat.catalog import Catalog
from ocrcat.inspection.stats import QUANTILES, histogram, source_stats
from ocrcat.cli import app
from ocrcat.ingest.runner import ingest
from ocrcat.mix import load_tokenizer


@pytest.fixture(scope="module")
def catalog(sample_mirror_factory, tmp_path_factory):
    path = tmp_path_factory.mktemp("stats") / "catalog"
    with Catalog(path) as cat:
        for source in ("chartqa", "mathwriting"):
            ingest(cat, source, mirror=sample_mirror_factory(source, rows=20))
    return path


def rows_of(cat, source, split):
    return cat.con.execute(
        "SELECT text, response, image_width, image_height, image_tokens FROM samples WHERE source = ? AND split = ?",
        [source, split]).fetchall()


def test_quantiles_per_source_and_split(catalog):
    with Catalog(catalog, read_only=True) as cat:
        stats = source_stats(cat)
        groups = {(g["source"], g["split"]): g for g in stats}
        assert set(groups) == set(cat.con.execute("SELECT DISTINCT source, split FROM samples").fetchall())
        g = groups[("mathwriting", "train")]
        rows = rows_of(cat, "mathwriting", "train")
    assert g["rows"] == len(rows) and g["vision_rows"] == len(rows) and g["text_rows"] == 0
    widths = sorted(r[2] for r in rows)
    assert (g["image_width"]["min"], g["image_width"]["max"]) == (widths[0], widths[-1])
    assert g["image_width"]["p50"] in widths
    chars = sorted(len(r[0]) for r in rows)
    assert (g["text_chars"]["min"], g["text_chars"]["max"]) == (chars[0], chars[-1])
    for measure in ("image_width", "image_height", "image_tokens", "text_chars", "response_chars"):
        values = [g[measure][q] for q in QUANTILES]
        assert values == sorted(values), measure
    # image_tokens follow the vision rule for the stored sizes.
    assert g["image_tokens"]["max"] == max(vision.count_image_tokens(r[2], r[3]) for r in rows)
    assert "text_tokens" not in g and g["total_tokens"] is None


def test_token_counts_with_the_byte_tokenizer(catalog):
    tok = load_tokenizer("byte")
    with Catalog(catalog, read_only=True) as cat:
        g = {(x["source"], x["split"]): x for x in source_stats(cat, ["chartqa"], tok)}
        assert {s for s, _ in g} == {"chartqa"}
        rows = rows_of(cat, "chartqa", "train")
    train = g[("chartqa", "train")]
    # The byte tokenizer spends one token per UTF-8 byte; <image> placeholders are not text tokens.
    text = sorted(len(r[0].replace("<image>", "").encode()) for r in rows)
    assert (train["text_tokens"]["min"], train["text_tokens"]["max"]) == (text[0], text[-1])
    response = sorted(len(r[1].encode()) for r in rows)
    assert (train["response_tokens"]["min"], train["response_tokens"]["max"]) == (response[0], response[-1])
    assert train["total_tokens"] == sum(text) + sum(response) + sum(r[4] for r in rows)


def test_histogram_counts_every_row(catalog):
    with Catalog(catalog, read_only=True) as cat:
        n = cat.con.execute("SELECT count(*) FROM samples WHERE source = 'mathwriting'").fetchone()[0]
        widths = [w for (w,) in cat.con.execute("SELECT image_width FROM samples WHERE source = 'mathwriting'").fetchall()]
        edges, counts = histogram(cat, "mathwriting", "image_width", bins=7)
        assert histogram(cat, "nonexistent", "image_width") == ([], [])
    assert sum(counts) == n and len(edges) == len(counts) + 1 == 8
    assert edges[0] == min(widths) and edges[-1] > max(widths)
    for lo, hi, c in zip(edges, edges[1:], counts):
        assert c == sum(lo <= w < hi for w in widths)


def test_cli_stats_json_tokenizer_and_plots(catalog, tmp_path):
    out = CliRunner().invoke(app, ["stats", "--json", "--tokenizer", "byte", "--plot", str(tmp_path / "png"),
                                   "--catalog", str(catalog)])
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    # The keys `ocrcat stats --json` always had are still there.
    assert {"catalog", "vision_mode", "rows", "unique_images", "image_bytes", "image_tokens_median",
            "image_tokens_p95", "errors", "groups"} <= set(result)
    assert all(g["text_tokens"]["max"] > 0 for g in result["per_split"])
    assert sorted(result["plots"]) == [str(tmp_path / "png" / f"{s}.png") for s in ("chartqa", "mathwriting")]
    for path in result["plots"]:
        with Image.open(path) as img:
            assert img.format == "PNG" and img.width >= 600 and img.height >= 200
            # Not a blank canvas: the bars are drawn in their own colour.
            assert (52, 101, 164) in {c for _, c in img.convert("RGB").getcolors(1 << 16)}

    table = CliRunner().invoke(app, ["stats", "--catalog", str(catalog)])
    assert table.exit_code == 0 and "quantiles per source and split" in table.output

    bad = CliRunner().invoke(app, ["stats", "--tokenizer", str(tmp_path / "nope"), "--catalog", str(catalog)])
    assert bad.exit_code == 2 and "no tokenizer" in bad.output
    unknown = CliRunner().invoke(app, ["stats", "--source", "docbank", "--catalog", str(catalog)])
    assert unknown.exit_code == 2 and "no rows of docbank" in unknown.output
