"""Export: the plan in order with the agreed columns, read back by datasets and DuckDB, byte-identical
twice, JSONL in the index format, splits side by side, and a manifest that says what was exported."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ocrcat.catalog import Catalog
from ocrcat.ingest.runner import ingest
from ocrcat.mix.export import ROW_GROUP, export_mixture
from ocrcat.mix.mixtures import MixtureError, create_mixture, describe_mixture

AGREED = [  # the schema the training path reads (ocrcat.mix.dataset)
    ("position", pa.int64()), ("sample_id", pa.uint64()), ("component", pa.string()), ("repeat", pa.int32()),
    ("source", pa.string()), ("split", pa.string()), ("kind", pa.string()), ("text", pa.string()),
    ("response", pa.string()), ("messages", pa.string()), ("image_path", pa.string()),
    ("image_width", pa.int32()), ("image_height", pa.int32()), ("image_tokens", pa.int32()), ("meta", pa.string()),
]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, sample_mirror_factory):
    """Two ingested sources with real image files, plus made-up docbank and smoltalk rows."""
    path = tmp_path_factory.mktemp("export") / "catalog"
    with Catalog(path) as cat:
        for source in ("chartqa", "mathwriting"):
            ingest(cat, source, mirror=sample_mirror_factory(source))
        # made-up rows (as conftest's add_synthetic_rows, which is function-scoped to tests)
        cat.con.execute("""
            INSERT INTO samples (sample_id, source, split, source_key, kind, text, response, messages, image_path,
                                 image_width, image_height, image_tokens, meta, ingest_run)
            SELECT CAST('0x' || substr(md5(src || ':' || i), 1, 16) AS UBIGINT), src,
                   ['train', 'train', 'train', 'val'][i % 4 + 1], 'k' || i, kind,
                   CASE WHEN kind = 'text' THEN 'user: q' || i ELSE '<image>\n' END, NULL,
                   CASE WHEN kind = 'text' THEN json_array(json_object('role', 'user', 'content', 'q' || i),
                                                           json_object('role', 'assistant', 'content', 'a' || i)) END,
                   CASE WHEN kind = 'vision' THEN 'images/docbank/00/' || i || '.jpg' END,
                   100, 100, 273, json_object('n', i), 0
            FROM (VALUES ('docbank', 'vision', 3000), ('smoltalk', 'text', 120)) s(src, kind, n), range(n) t(i)
        """)
        create_mixture(cat, "m", [("charts", "source = 'chartqa'", 1.5), ("hand", "source = 'mathwriting'", 2),
                                  ("docs", "source = 'docbank'", 1)], text_share=0.1, seed=3)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_parquet_export_is_the_plan_in_order(catalog, tmp_path):
    out = tmp_path / "out"
    with Catalog(catalog, read_only=True) as cat:
        manifest = export_mixture(cat, "m", out)
        view = cat.con.execute("SELECT position, sample_id, component, repeat, source, kind FROM mix_m").fetchall()
        total = describe_mixture(cat, "m")["total"]
    data = out / "m.all.parquet"
    schema = pq.read_schema(data)
    assert [(f.name, f.type) for f in schema][:len(AGREED)] == AGREED
    meta = pq.ParquetFile(data).metadata
    groups = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    assert len(view) == total > 2 * ROW_GROUP and all(n == ROW_GROUP for n in groups[:-1]) and sum(groups) == total

    table = pq.read_table(data)
    key = ["position", "sample_id", "component", "repeat", "source", "kind"]
    assert list(zip(*(table.column(c).to_pylist() for c in key))) == view
    from_duckdb = duckdb.sql(f"SELECT {', '.join(key)} FROM read_parquet('{data}')").fetchall()
    assert from_duckdb == view

    import datasets

    ds = datasets.load_dataset("parquet", data_files=str(data), split="train", cache_dir=str(tmp_path / "hf"))
    assert list(zip(*(ds[c] for c in key))) == view

    rows = table.to_pylist()
    for row in rows:
        if row["kind"] == "text":
            assert row["image_path"] is None and json.loads(row["messages"])[0]["role"] == "user"
        else:
            assert row["text"].startswith("<image>\n") and Path(row["image_path"]).is_absolute()
            if row["source"] != "docbank":  # made-up docbank rows have no files
                assert Path(row["image_path"]).is_file()
    assert manifest["rows"] == total and manifest["files"] == ["m.all.parquet"]
    assert manifest["components"] == {c: sum(r["component"] == c for r in rows) for c in ("charts", "hand", "docs", "text")}
    assert manifest["mixture"]["components"][0] == {"name": "charts", "predicate": "source = 'chartqa'", "weight": 1.5}
    assert manifest["seed"] == 3 and manifest["vision_mode"] == "gundam" and manifest["relative_paths"] is False
    assert manifest["catalog"] == manifest["image_root"] == str(catalog.resolve())
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["exports"]["all"]["sha256"] == _sha(data)


def test_catalog_state_counts_and_checksums_the_samples(catalog, tmp_path):
    with Catalog(catalog, read_only=True) as cat:
        manifest = export_mixture(cat, "m", tmp_path / "a")
        rows = cat.con.execute("SELECT count(*) FROM samples").fetchone()[0]
    assert manifest["catalog_state"]["samples"] == rows
    assert len(manifest["catalog_state"]["sample_ids_checksum"]) == 32


def test_exporting_twice_gives_identical_bytes_at_any_thread_count(catalog, tmp_path):
    digests = []
    with Catalog(catalog, read_only=True) as cat:
        for i, threads in enumerate((4, 1, 2)):
            cat.con.execute(f"SET threads = {threads}")
            export_mixture(cat, "m", tmp_path / str(i), split="train")
            digests.append(_sha(tmp_path / str(i) / "m.train.parquet"))
            export_mixture(cat, "m", tmp_path / f"j{i}", format="jsonl")
            digests.append(_sha(tmp_path / f"j{i}" / "m.all.jsonl"))
    assert digests[0] == digests[2] == digests[4] and digests[1] == digests[3] == digests[5]
    again = json.loads((tmp_path / "0" / "manifest.json").read_text())
    assert again == json.loads((tmp_path / "1" / "manifest.json").read_text())  # no timestamps either


def test_jsonl_is_the_index_format_with_the_same_rows(catalog, tmp_path):
    with Catalog(catalog, read_only=True) as cat:
        export_mixture(cat, "m", tmp_path, format="jsonl")
        export_mixture(cat, "m", tmp_path / "p")
    lines = [json.loads(line) for line in (tmp_path / "m.all.jsonl").read_text().splitlines()]
    assert all(list(line)[:3] == ["text", "response", "image_path"] for line in lines)
    rows = pq.read_table(tmp_path / "p" / "m.all.parquet").to_pylist()
    assert len(lines) == len(rows) and all(line == row for line, row in zip(lines, rows))  # dicts: order-free


def test_relative_paths_resolve_against_the_image_root(catalog, tmp_path):
    with Catalog(catalog, read_only=True) as cat:
        manifest = export_mixture(cat, "m", tmp_path, relative_paths=True)
    rows = pq.read_table(tmp_path / "m.all.parquet", columns=["source", "image_path"]).to_pylist()
    charts = [r["image_path"] for r in rows if r["source"] == "chartqa"]
    assert charts and all(not Path(p).is_absolute() and (Path(manifest["image_root"]) / p).is_file() for p in charts)
    assert manifest["relative_paths"] is True


def test_splits_side_by_side(catalog, tmp_path):
    with Catalog(catalog, read_only=True) as cat:
        export_mixture(cat, "m", tmp_path, split="train")
        manifest = export_mixture(cat, "m", tmp_path, split="val")
        expected = {s: describe_mixture(cat, "m", split=s)["total"] for s in ("train", "val")}
    assert manifest["files"] == ["m.train.parquet", "m.val.parquet"]
    assert manifest["rows"] == sum(expected.values())
    for split, n in expected.items():
        table = pq.read_table(tmp_path / f"m.{split}.parquet", columns=["position", "split"])
        assert table.column("position").to_pylist() == list(range(n))
        assert set(table.column("split").to_pylist()) == {split}
    # a different definition in the same folder starts a fresh manifest
    with Catalog(catalog) as cat:
        create_mixture(cat, "m", [("docs", "source = 'docbank'", 1)], replace=True)
        manifest = export_mixture(cat, "m", tmp_path, split="val")
        create_mixture(cat, "m", [("charts", "source = 'chartqa'", 1.5), ("hand", "source = 'mathwriting'", 2),
                                  ("docs", "source = 'docbank'", 1)], text_share=0.1, seed=3, replace=True)
    assert manifest["files"] == ["m.val.parquet"]


def test_the_training_dataset_reads_the_export(catalog, tmp_path):
    from ocrcat.mix import MixtureDataset

    with Catalog(catalog, read_only=True) as cat:
        manifest = export_mixture(cat, "m", tmp_path, split="train")
    ds = MixtureDataset(tmp_path, split="train", tokenizer="byte")
    assert len(ds) == manifest["rows"]
    assert [ds.row(i)["position"] for i in (0, 1, len(ds) - 1)] == [0, 1, len(ds) - 1]


def test_row_groups_fall_on_the_same_rows_however_the_stream_is_chunked():
    from ocrcat.mix.export import SCHEMA, _batches

    n = 200_000
    table = pa.table({f.name: pa.array(range(n), f.type) if pa.types.is_integer(f.type) else pa.nulls(n, f.type)
                      for f in SCHEMA})
    cuts = []
    for sizes in ([n], [7, 70_000, 1, 129_992], [65_537] * 3 + [3_389]):
        offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        reader = pa.RecordBatchReader.from_batches(SCHEMA, [table.slice(o, k).to_batches()[0]
                                                            for o, k in zip(offsets, sizes)])
        pieces = [t.num_rows for t in _batches(reader)]
        assert sum(pieces) == n and all(p % ROW_GROUP == 0 for p in pieces[:-1])
        cuts.append(pieces)
    assert len(cuts[0]) > 1  # a long stream is written in pieces, not held whole


def test_export_refuses_what_it_cannot_do(catalog, tmp_path):
    with Catalog(catalog, read_only=True) as cat:
        with pytest.raises(MixtureError, match="format"):
            export_mixture(cat, "m", tmp_path, format="csv")
        with pytest.raises(MixtureError, match="no mixture 'zzz'"):
            export_mixture(cat, "zzz", tmp_path)
        with pytest.raises(MixtureError, match="unknown split"):
            export_mixture(cat, "m", tmp_path, split="dev")
        with pytest.raises(MixtureError, match="text share but split test has no rows"):
            export_mixture(cat, "m", tmp_path, split="test")
        assert list(tmp_path.iterdir()) == []
        (tmp_path / "file").write_text("")
        with pytest.raises(MixtureError, match="is a file"):
            export_mixture(cat, "m", tmp_path / "file")


def test_cli_export(catalog, tmp_path):
    from typer.testing import CliRunner

    from ocrcat.cli import app

    runner = CliRunner()
    env = {"OCRCAT_HOME": str(catalog)}
    result = runner.invoke(app, ["export", "m", "--out", str(tmp_path), "--split", "train", "--json"], env=env)
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.output)
    assert manifest["files"] == ["m.train.parquet"]
    assert pq.read_metadata(tmp_path / "m.train.parquet").num_rows == manifest["rows"]
    result = runner.invoke(app, ["export", "m", "--out", str(tmp_path / "j"), "--format", "jsonl", "--relative-paths"],
                           env=env)
    assert result.exit_code == 0 and "m.all.jsonl" in result.output, result.output
    result = runner.invoke(app, ["export", "m", "--out", str(tmp_path), "--format", "csv"], env=env)
    assert result.exit_code == 2 and "use parquet or jsonl" in result.output


def test_plan_sorted_in_many_buckets_is_the_same_file(catalog, tmp_path, monkeypatch):
    """plan_rows sorts the plan a hash bucket at a time (bounded memory); however many buckets, the
    rows, their order and the file's bytes are those of one sort, and no bucket file is left."""
    import shutil

    import ocrcat.mix.export as export

    buckets = []  # how many bucket folders each export sorted, seen as they are removed
    rmtree = shutil.rmtree

    def counting_rmtree(path, **kwargs):
        buckets.append(len(list(Path(path).glob("bucket=*"))))
        rmtree(path, **kwargs)

    monkeypatch.setattr(export.shutil, "rmtree", counting_rmtree)
    with Catalog(catalog, read_only=True) as cat:
        view = cat.con.execute("SELECT position, sample_id, component, repeat FROM mix_m").fetchall()
        export_mixture(cat, "m", tmp_path / "two")  # this small catalog: the minimum, two buckets
        monkeypatch.setattr(export, "BUCKET_ROWS", 50)  # about 64 buckets
        export_mixture(cat, "m", tmp_path / "many")
    assert buckets[0] == 2 and buckets[1] >= 32, buckets
    many = tmp_path / "many" / "m.all.parquet"
    assert _sha(many) == _sha(tmp_path / "two" / "m.all.parquet")
    table = pq.read_table(many, columns=["position", "sample_id", "component", "repeat"])
    assert list(zip(*(c.to_pylist() for c in table.columns))) == view
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == ["m.all.parquet", "manifest.json"]


def test_cli_export_warns_of_a_component_that_matches_nothing_now(sample_mirror_factory, tmp_path):
    from typer.testing import CliRunner

    from ocrcat.cli import app

    with Catalog(tmp_path / "catalog") as cat:
        for source in ("chartqa", "mathwriting"):
            ingest(cat, source, mirror=sample_mirror_factory(source), splits=["train"])
        create_mixture(cat, "both", [("charts", "source = 'chartqa'", 1), ("hand", "source = 'mathwriting'", 1)])
        cat.con.execute("DELETE FROM samples WHERE source = 'mathwriting'")  # e.g. re-ingested with a typo
    result = CliRunner().invoke(app, ["export", "both", "--out", str(tmp_path / "out")],
                                env={"OCRCAT_HOME": str(tmp_path / "catalog"), "COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "warning: component(s) hand of both matched no rows in this export" in result.output
    assert "charts" not in result.output.split("warning:")[1]


def test_a_reader_takes_one_split_of_a_folder_never_their_union(catalog, tmp_path):
    from ocrcat.mix import MixtureDataset
    from ocrcat.mix.tasks import ExportTask

    with Catalog(catalog, read_only=True) as cat:
        rows = {s: export_mixture(cat, "m", tmp_path, split=s)["exports"][s]["rows"] for s in ("train", "val")}
    for name in ("train", "val", "validation"):  # nanochat's name for val is an alias
        assert len(MixtureDataset(tmp_path, split=name, tokenizer="byte")) == rows[{"validation": "val"}.get(name, name)]
        assert len(ExportTask(tmp_path, split=name)) == rows[{"validation": "val"}.get(name, name)]
    # Two splits and none chosen: an error that says so (reading both put val rows into training
    # and served positions 0.. twice).
    for read in (lambda: MixtureDataset(tmp_path, tokenizer="byte"), lambda: ExportTask(tmp_path)):
        with pytest.raises(FileNotFoundError, match="holds the splits train, val; pass split= to choose one"):
            read()
    with pytest.raises(FileNotFoundError, match="has no split 'test'; it holds train, val"):
        MixtureDataset(tmp_path, split="test", tokenizer="byte")
    # With an `all` export there too, no split means that one.
    with Catalog(catalog, read_only=True) as cat:
        everything = export_mixture(cat, "m", tmp_path)["exports"]["all"]["rows"]
    assert len(MixtureDataset(tmp_path, tokenizer="byte")) == everything == len(ExportTask(tmp_path))


def test_an_embedded_export_is_read_by_split_and_keeps_its_folder_to_itself(catalog, tmp_path):
    from ocrcat.mix import MixtureDataset
    from ocrcat.mix.embed import export_embedded
    from ocrcat.mix.tasks import ExportTask

    with Catalog(catalog) as cat:  # the sources with image files on disk (m's docbank rows have none)
        create_mixture(cat, "real", [("charts", "source = 'chartqa'", 1), ("hand", "source = 'mathwriting'", 1)],
                       replace=True)
    with Catalog(catalog, read_only=True) as cat:
        manifest = export_embedded(cat, "real", tmp_path / "e", split="train", shard_mb=1)
        assert manifest["files"][0] == "real.train-00000.parquet"  # a shard's name is not <name>.<split>.parquet
        ds = MixtureDataset(tmp_path / "e", split="train", tokenizer="byte")
        assert len(ds) == manifest["rows"] and ds.embedded
        assert len(MixtureDataset(tmp_path / "e", tokenizer="byte")) == manifest["rows"]  # the only split
        # Another split, or a plain export, in the same folder would leave the first one's files unlisted.
        with pytest.raises(MixtureError, match="holds the embedded export of split 'train'.*give split 'val' its own --out"):
            export_embedded(cat, "real", tmp_path / "e", split="val")
        with pytest.raises(MixtureError, match="holds an export with embedded images"):
            export_mixture(cat, "real", tmp_path / "e", split="val")
        export_mixture(cat, "real", tmp_path / "p", split="val")
        with pytest.raises(MixtureError, match="holds a plain export"):
            export_embedded(cat, "real", tmp_path / "p", split="val")
        assert export_embedded(cat, "real", tmp_path / "e", split="train", shard_mb=1)["files"] == manifest["files"]
    assert json.loads((tmp_path / "e" / "manifest.json").read_text())["split"] == "train"
    with pytest.raises(ValueError, match="carries its images.*read it with MixtureDataset"):
        ExportTask(tmp_path / "e")


def test_a_corrupt_lake_file_is_named_not_hidden_behind_an_aborted_transaction(sample_mirror_factory, tmp_path):
    from ocrcat.catalog.snapshots import compact

    catalog = tmp_path / "catalog"
    with Catalog(catalog) as cat:
        ingest(cat, "chartqa", mirror=sample_mirror_factory("chartqa", rows=20))
        create_mixture(cat, "charts", [("charts", "source = 'chartqa'", 1)])
        compact(cat)  # rows into Parquet files
    [data] = sorted((catalog / "lake" / "main" / "samples").glob("*.parquet"))
    data.write_bytes(data.read_bytes()[:1000])
    with Catalog(catalog, read_only=True) as cat:
        with pytest.raises(duckdb.Error) as caught:
            export_mixture(cat, "charts", tmp_path / "out")
        assert cat.con.execute("SELECT 1").fetchone() == (1,)  # rolled back: the connection works again
    assert data.name in str(caught.value) and "aborted" not in str(caught.value)


def test_a_killed_exports_plan_folder_is_removed_by_the_next_export(catalog, tmp_path):
    # The plan folder holds a copy of the joined rows; a killed export left it behind for good.
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    out.mkdir()
    script = (f"from ocrcat.catalog import Catalog\nfrom ocrcat.mix.export import export_mixture\n"
              f"with Catalog({str(catalog)!r}, read_only=True) as cat:\n"
              f"    export_mixture(cat, 'm', {str(out)!r}, memory_limit=None)\n")
    for _ in range(5):  # the folder lives for a fraction of a second: catch it
        proc = subprocess.Popen([sys.executable, "-c", script])
        while proc.poll() is None and not list(out.glob(".ocrcat-plan-*")):
            time.sleep(0.002)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            break
    left = list(out.glob(".ocrcat-plan-*"))
    assert left, "the export ended before it could be killed"
    live = out / f".ocrcat-plan-{os.getpid()}-x"  # a running export's folder (this process is alive)
    live.mkdir()
    with Catalog(catalog, read_only=True) as cat:
        export_mixture(cat, "m", out)
    assert list(out.glob(".ocrcat-plan-*")) == [live]
    assert (out / "m.all.parquet").is_file()
