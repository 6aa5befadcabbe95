"""MixtureDataset over an export (the agreed Parquet schema) and over a catalog query."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ocrcat.catalog import Catalog
from ocrcat.ingest.runner import ingest
from ocrcat.mix import MixtureDataset, VisionCollator, load_tokenizer
from ocrcat.vision import VisionProcessor

SOURCES = ("chartqa", "latex_formulas", "mathwriting")
CONVERSATIONS = [
    [{"role": "user", "content": f"What is {i} + {i}?"}, {"role": "assistant", "content": str(2 * i)}]
    for i in range(6)
]


@pytest.fixture(scope="session")
def small_catalog(sample_mirror_factory, tmp_path_factory) -> Path:
    """A real catalog of three ingested sample mirrors (images on disk), built once."""
    path = tmp_path_factory.mktemp("train-catalog") / "catalog"
    with Catalog(path) as cat:
        for source in SOURCES:
            ingest(cat, source, mirror=sample_mirror_factory(source, rows=12))
    return path


def make_export(catalog_dir: Path, out: Path, *, text_rows: int = 6, row_group_size: int = 8,
                relative_paths: bool = False) -> Path:
    """Write an export in the agreed schema (issue 5) from a real catalog, plus some text rows.

    The plan order here is a seeded shuffle; what matters to the Dataset is that positions are
    the row order and that paths, counts and messages follow the schema.
    """
    with Catalog(catalog_dir, read_only=True) as cat:
        image_prefix = "" if relative_paths else str(cat.dir.resolve()) + "/"
        vision = cat.cursor().sql(
            """SELECT sample_id, source AS component, 0 AS "repeat", source, split, kind, text, response,
                      CAST(messages AS VARCHAR) AS messages, ? || image_path AS image_path,
                      image_width, image_height, image_tokens, CAST(meta AS VARCHAR) AS meta
               FROM samples ORDER BY sample_id""", params=[image_prefix]).to_arrow_table()
        mode = cat.vision_mode
    text = pa.table({
        "sample_id": pa.array([10**19 + i for i in range(text_rows)], pa.uint64()),
        "component": ["text"] * text_rows, "repeat": pa.array([0] * text_rows, pa.int32()),
        "source": ["smoltalk"] * text_rows, "split": ["train"] * text_rows, "kind": ["text"] * text_rows,
        "text": ["" for _ in range(text_rows)], "response": pa.nulls(text_rows, pa.string()),
        "messages": [json.dumps(CONVERSATIONS[i % len(CONVERSATIONS)]) for i in range(text_rows)],
        "image_path": pa.nulls(text_rows, pa.string()),
        "image_width": pa.nulls(text_rows, pa.int32()), "image_height": pa.nulls(text_rows, pa.int32()),
        "image_tokens": pa.nulls(text_rows, pa.int32()), "meta": ["{}"] * text_rows,
    })
    table = pa.concat_tables([vision.cast(text.schema), text])
    order = np.random.default_rng(0).permutation(table.num_rows)
    table = table.take(order).add_column(0, "position", pa.array(np.arange(table.num_rows), pa.int64()))
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "mix.all.parquet", row_group_size=row_group_size)
    manifest = {"files": ["mix.all.parquet"], "vision_mode": mode, "catalog": str(catalog_dir),
                "rows": table.num_rows, "relative_paths": relative_paths}
    if relative_paths:
        manifest["image_root"] = str(catalog_dir)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="session")
def export_dir(small_catalog, tmp_path_factory) -> Path:
    return make_export(small_catalog, tmp_path_factory.mktemp("export") / "mix")


def test_items_match_the_export_rows_and_their_images(export_dir):
    ds = MixtureDataset(export_dir, tokenizer="byte")
    tok = ds.tokenizer
    rows = pq.read_table(export_dir / "mix.all.parquet").to_pylist()
    assert len(ds) == len(rows) == 3 * 12 + 6
    kinds = set()
    for i in range(len(ds)):
        item, row = ds[i], rows[i]
        assert item["position"] == row["position"] == i
        assert item["sample_id"] == row["sample_id"]
        ids = item["ids"].tolist()
        assert ids[0] == tok.bos_id and ids[-1] == tok.assistant_end_id
        kinds.add(row["kind"])
        if row["kind"] == "vision":
            assert item["image_tokens"] == [row["image_tokens"]]
            assert ids.count(tok.image_token_id) == row["image_tokens"]
            assert item["global_views"].shape == (1, 3, 1024, 1024)
            assert item["global_views"].dtype == torch.uint8
            w, h = item["grids"][0]
            assert item["crops"].shape[0] == (w * h if w * h > 1 else 0)
            # The item's text is the row's text with the image run and the response after "\n".
            expected = row["text"].replace("<image>", "<|image|>" * row["image_tokens"])
            if row["response"] is not None:
                expected += "\n" + row["response"]
            assert tok.decode(ids[1:-1]) == expected
            # The pixels are the processor's, from the stored image.
            ref = VisionProcessor(ds.vision_mode)(row["image_path"])
            assert torch.equal(ref.global_view, item["global_views"][0])
            assert torch.equal(ref.crops, item["crops"])
        else:
            assert item["image_tokens"] == [] and item["global_views"].shape[0] == 0
            assert ids == tok.render_conversation(json.loads(row["messages"]))
    assert kinds == {"vision", "text"}


def test_relative_paths_resolve_against_image_root(small_catalog, tmp_path):
    export = make_export(small_catalog, tmp_path / "rel", relative_paths=True)
    absolute = make_export(small_catalog, tmp_path / "abs")
    a, b = MixtureDataset(export), MixtureDataset(absolute)
    for i in range(len(a)):
        assert torch.equal(a[i]["global_views"], b[i]["global_views"])


def test_dataset_holds_no_rows_and_pickles_small(export_dir):
    ds = MixtureDataset(export_dir)
    ds[0], ds[len(ds) - 1]
    blob = pickle.dumps(ds)  # what a DataLoader worker receives
    assert len(blob) < 20_000
    again = pickle.loads(blob)
    assert again._cached is None and again._open == {}
    assert torch.equal(again[3]["ids"], ds[3]["ids"])


def test_overflow_truncates_after_the_image_or_drops(export_dir):
    full = MixtureDataset(export_dir)
    vision = [i for i in range(len(full)) if full.row(i)["kind"] == "vision"]
    i = max(vision, key=lambda k: len(full[k]["ids"]))
    n_ids, tokens = len(full[i]["ids"]), full[i]["image_tokens"][0]
    limit = tokens + 3  # room for bos + the image + a couple of text tokens, not for the response
    assert n_ids > limit
    cut = MixtureDataset(export_dir, max_len=limit)[i]
    assert cut["truncated"] and len(cut["ids"]) == limit
    assert torch.equal(cut["ids"], full[i]["ids"][:limit])
    assert MixtureDataset(export_dir, max_len=limit, overflow="drop")[i] is None
    assert MixtureDataset(export_dir, max_len=tokens)[i] is None  # the image itself does not fit
    assert MixtureDataset(export_dir, max_len=n_ids)[i]["truncated"] is False
    # At the edge: the collator's inputs are ids[:-1], so ids ending on the image's last token would
    # hand the model one image token too few. Kept only from one id further on, with every token.
    image_end = 1 + tokens  # bos, then the image
    assert MixtureDataset(export_dir, max_len=image_end)[i] is None
    edge = MixtureDataset(export_dir, max_len=image_end + 1)
    batch = VisionCollator(edge.tokenizer)([edge[i]])
    assert batch.truncated.tolist() == [True] and int(batch.images_seq_mask.sum()) == tokens


def test_mode_mismatch_is_refused(export_dir):
    with pytest.raises(ValueError, match="vision mode"):
        MixtureDataset(export_dir, vision_mode="base")


def test_missing_export_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        MixtureDataset(tmp_path)


def test_split_selects_the_split_file(small_catalog, tmp_path):
    export = make_export(small_catalog, tmp_path / "s")
    (export / "mix.all.parquet").rename(export / "mix.train.parquet")
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["files"] = ["mix.train.parquet"]
    (export / "manifest.json").write_text(json.dumps(manifest))
    assert len(MixtureDataset(export, split="train")) == manifest["rows"]
    with pytest.raises(FileNotFoundError, match="split 'val'"):
        MixtureDataset(export, split="val")


def test_a_plain_export_of_a_shared_catalog_is_refused_when_opened(small_catalog, tmp_path):
    # Its image paths are object-storage URLs; they used to be joined to the export folder and fail
    # at the first item with a garbled local path.
    export = make_export(small_catalog, tmp_path / "export")
    manifest = json.loads((export / "manifest.json").read_text())
    (export / "manifest.json").write_text(json.dumps({**manifest, "image_root": "s3://bucket/catalog"}))
    with pytest.raises(ValueError, match=r"images are on object storage \(s3://bucket/catalog, a shared catalog\) "
                                         r"and MixtureDataset opens local image files only; export with --embed-images"):
        MixtureDataset(export)


def test_a_row_with_a_second_placeholder_names_itself_and_the_way_out(small_catalog, tmp_path):
    # Ingest makes such rows error rows now; a catalog from before may still hold them.
    sql = ("SELECT * REPLACE (text || ' <image>' AS text) FROM samples WHERE source = 'chartqa' "
           "ORDER BY sample_id LIMIT 1")
    with Catalog(small_catalog, read_only=True) as cat:
        ds = MixtureDataset.from_query(cat, sql, cache_dir=tmp_path / "cache")
        [(sid,)] = cat.con.execute(f"SELECT sample_id FROM ({sql})").fetchall()
    with pytest.raises(ValueError, match=rf"sample {sid} \(position 0\): text has 2 <image> placeholders but "
                                         r"1 images were given; `ocrcat validate` lists such rows"):
        ds[0]


def test_dataset_over_a_catalog_query(small_catalog, tmp_path):
    sql = "SELECT * FROM samples WHERE source = 'chartqa' ORDER BY sample_id"
    with Catalog(small_catalog, read_only=True) as cat:
        ds = MixtureDataset.from_query(cat, sql, cache_dir=tmp_path / "cache")
        expected = cat.con.execute(
            "SELECT sample_id, image_tokens FROM samples WHERE source = 'chartqa' ORDER BY sample_id").fetchall()
        again = MixtureDataset.from_query(cat, sql, cache_dir=tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [ds.files[0].name]  # materialised once
    assert again.files == ds.files
    assert pq.ParquetFile(ds.files[0]).metadata.num_row_groups >= 1
    assert len(ds) == len(expected) == 12
    for i, (sid, tokens) in enumerate(expected):
        item = ds[i]
        assert (item["sample_id"], item["image_tokens"], item["position"]) == (sid, [tokens], i)


def test_lengths_estimate_ids_exactly_for_the_byte_tokenizer(export_dir):
    ds = MixtureDataset(export_dir, tokenizer="byte")
    lengths = ds.lengths()
    for i in range(len(ds)):
        if ds.row(i)["kind"] == "vision":
            assert lengths[i] == len(ds[i]["ids"])
        else:  # the JSON of the messages is longer than their rendering
            assert lengths[i] >= len(ds[i]["ids"])


def test_load_tokenizer_default_is_byte():
    assert load_tokenizer().name == "byte"


def test_reads_ocrcat_exports_with_absolute_and_relative_paths(small_catalog, tmp_path):
    from ocrcat.mix.export import export_mixture
    from ocrcat.mix.mixtures import create_mixture

    with Catalog(small_catalog) as cat:
        create_mixture(cat, "three", [(s, f"source = '{s}'", 1) for s in SOURCES], seed=5, replace=True)
        export_mixture(cat, "three", tmp_path / "abs")
        export_mixture(cat, "three", tmp_path / "rel", relative_paths=True)
    a, b = MixtureDataset(tmp_path / "abs"), MixtureDataset(tmp_path / "rel")
    assert len(a) == len(b) == 3 * 12 and not Path(b.row(0)["image_path"]).is_absolute()
    for i in (0, 1, len(a) - 1):
        x, y = a[i], b[i]
        assert x["position"] == i and x["sample_id"] == y["sample_id"]
        assert torch.equal(x["ids"], y["ids"]) and torch.equal(x["global_views"], y["global_views"])
