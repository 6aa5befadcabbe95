"""Export a mixture's plan: every column a trainer needs, one row per position, in plan order.

Files in the output folder:
- `<name>.<split or all>.parquet` (row groups of ROW_GROUP rows, so that reading one position
  decodes at most that many rows) or `.jsonl` (the data plan's index format: "text", "response",
  "image_path" first, then the other columns);
- `manifest.json`: the definition, seed, vision mode, catalog and its state (the lake snapshot read:
  `ocrcat export NAME --at SNAPSHOT` writes the same bytes again later), row counts, files.

Data files are written by pyarrow / json from an ordered stream with fixed row-group boundaries,
so the same plan exported twice gives byte-identical files. Each file appears under its final
name only when complete, so an interrupted export can simply be run again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ocrcat.catalog import Catalog
from ocrcat.catalog.snapshots import stable_snapshot
from ocrcat.catalog.sqltext import sql_string
from ocrcat.catalog.store import process_alive
from ocrcat.mix.mixtures import PLAN_ORDER, MixtureError, check_split, entries_sql, get_mixture

ROW_GROUP = 1024
BUCKET_ROWS = 250_000  # rows sorted at a time (plan_rows): about 100-300 MB of joined rows
FORMATS = ("parquet", "jsonl")

# The agreed export schema (read by ocrcat.mix.dataset); columns may be added at the end.
SCHEMA = pa.schema([
    ("position", pa.int64()),
    ("sample_id", pa.uint64()),
    ("component", pa.string()),
    ("repeat", pa.int32()),
    ("source", pa.string()),
    ("split", pa.string()),
    ("kind", pa.string()),
    ("text", pa.string()),
    ("response", pa.string()),
    ("messages", pa.string()),
    ("image_path", pa.string()),
    ("image_width", pa.int32()),
    ("image_height", pa.int32()),
    ("image_tokens", pa.int32()),
    ("meta", pa.string()),
    ("source_key", pa.string()),
    ("image_sha256", pa.string()),
])
JSONL_FIRST = ("text", "response", "image_path")


@contextmanager
def plan_rows(catalog: Catalog, definition: dict, split: str | None, image_prefix: str,
              work: Path) -> Iterator[pa.RecordBatchReader]:
    """The plan's entries joined to their samples, in plan order and SCHEMA's column order, as an
    Arrow stream (positions are left NULL: `_batches` numbers the rows as they stream out).

    One ORDER BY over the joined wide rows would have to hold them all: at 5 M rows DuckDB's sort
    went far past its memory limit. But the plan's first sort key is a uniform 64-bit hash, so its
    top bits cut the plan into buckets that are already in plan order among themselves. One pass
    writes the joined rows into a Parquet file per bucket (a hidden folder under `work`, removed
    afterwards), then each bucket of a few hundred thousand rows is sorted on its own: memory is
    one bucket's, whatever the catalog's size, and the output is the very same rows in the same order.
    """
    n = catalog.con.execute("SELECT count(*) FROM samples").fetchone()[0]
    bits = min(8, max(1, math.ceil(math.log2(max(n, 1) / BUCKET_ROWS))))
    _remove_abandoned_plans(work)
    parts = Path(tempfile.mkdtemp(prefix=f"{PLAN_PREFIX}{os.getpid()}-", dir=work))
    try:
        catalog.con.execute(f"""
            COPY (WITH e AS ({entries_sql(definition, split)})
                  SELECT e.key >> {64 - bits} AS bucket, e.key, s.sample_id, e.component, e.repeat, s.source,
                         s.split, s.kind, s.text, s.response, CAST(s.messages AS VARCHAR) AS messages, s.image_path,
                         s.image_width, s.image_height, s.image_tokens, CAST(s.meta AS VARCHAR) AS meta,
                         s.source_key, s.image_sha256
                  FROM e JOIN samples s USING (sample_id))
            TO {sql_string(str(parts))} (FORMAT parquet, PARTITION_BY (bucket), COMPRESSION lz4_raw)""")
        buckets = sorted(int(p.name.removeprefix("bucket=")) for p in parts.glob("bucket=*"))
        columns = ", ".join({"position": "CAST(NULL AS BIGINT) AS position",
                             "image_path": f"CASE WHEN image_path IS NULL THEN NULL ELSE {sql_string(image_prefix)} || image_path END AS image_path",
                             }.get(name, name) for name in SCHEMA.names)

        def sorted_bucket(con, b: int) -> pa.Table:
            bucket = sql_string(f"{parts}/bucket={b}/*.parquet")  # a literal: see sql_string
            return con.sql(f"SELECT {columns} FROM read_parquet({bucket}) ORDER BY {PLAN_ORDER}").to_arrow_table()

        def ordered() -> Iterator[pa.RecordBatch]:
            # DuckDB sorts the next bucket (on a cursor of its own: the bucket files are plain
            # Parquet) while the caller writes this one; both release the GIL.
            if not buckets:  # an empty plan
                return
            with catalog.con.cursor() as con, ThreadPoolExecutor(1) as pool:
                ahead = pool.submit(sorted_bucket, con, buckets[0])
                for following in buckets[1:] + [None]:
                    table = ahead.result()
                    if following is not None:
                        ahead = pool.submit(sorted_bucket, con, following)
                    yield from table.cast(SCHEMA).to_batches(64 * ROW_GROUP)

        rows = ordered()
        try:
            yield pa.RecordBatchReader.from_batches(SCHEMA, rows)
        finally:
            rows.close()  # waits for a bucket still being sorted before its files go
    finally:
        shutil.rmtree(parts, ignore_errors=True)


PLAN_PREFIX = ".ocrcat-plan-"  # + the pid of the export writing it


def _remove_abandoned_plans(work: Path) -> None:
    """Delete the plan folders of exports that were killed (their process is gone): a copy of the
    joined rows each, which nothing else would ever remove."""
    for folder in work.glob(f"{PLAN_PREFIX}*"):
        pid = folder.name.removeprefix(PLAN_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def catalog_state(catalog: Catalog) -> dict:
    """What the plan was computed from: row count and an order-free checksum of the sample ids."""
    rows, xor, total = catalog.con.execute(
        "SELECT count(*), coalesce(bit_xor(sample_id), 0), coalesce(sum(sample_id::HUGEINT), 0) % 18446744073709551616 "
        "FROM samples"
    ).fetchone()
    checksum = hashlib.md5(f"{rows}:{xor}:{total}".encode()).hexdigest()
    return {"samples": rows, "sample_ids_checksum": checksum}


def export_mixture(
    catalog: Catalog,
    name: str,
    out: str | os.PathLike,
    format: str = "parquet",
    split: str | None = None,
    relative_paths: bool = False,
    memory_limit: str | None = "1GB",
    require_images: bool = False,
) -> dict:
    """Write the plan of mixture `name` (restricted to `split` if given) to `out`; returns the manifest.

    >>> export_mixture(cat, "stage2", "exports/stage2", split="train")

    `memory_limit` caps DuckDB while it sorts the joined rows into plan order (it spills to disk
    beyond it) and is restored afterwards; without a cap DuckDB may take most of the machine's RAM.
    Image files of the plan that are missing are counted and listed in the manifest (the CLI
    warns: a training job would fail on them hours later); `require_images` refuses such a plan.
    """
    # Everything is read in one transaction, so from one snapshot, whatever commits meanwhile;
    # the manifest names it, and `Catalog(at=snapshot)` reads the very same state later.
    previous = catalog.con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    catalog.con.execute("BEGIN TRANSACTION")
    try:
        return _export(catalog, name, out, format, split, relative_paths, memory_limit, require_images)
    finally:
        # After the ROLLBACK: in a transaction a failed statement aborted, any statement fails
        # again, and that error would hide the one that says what went wrong.
        catalog.con.execute("ROLLBACK")
        catalog.con.execute(f"SET memory_limit = '{previous}'")


def _export(catalog: Catalog, name: str, out, format: str, split: str | None, relative_paths: bool,
            memory_limit: str | None, require_images: bool) -> dict:
    if format not in FORMATS:
        raise MixtureError(f"unknown export format {format!r}; use parquet or jsonl")
    definition = get_mixture(catalog, name)
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise MixtureError(f"--out {out} is a file; give a folder (it is created if missing)")
    out.mkdir(parents=True, exist_ok=True)
    if _read_json(out / "manifest.json").get("embedded_images"):
        raise MixtureError(f"{out} holds an export with embedded images; give this export its own --out "
                           "(one manifest lists one kind of export)")
    root = catalog.image_root if catalog.shared else catalog.dir.resolve()
    data = out / f"{name}.{split or 'all'}.{format}"
    tmp = data.with_name(f".{data.name}.tmp")
    check_split(catalog, definition, split)
    if memory_limit and not re.fullmatch(r"\d+(\.\d+)?\s*[KMGT]i?B", memory_limit):
        raise MixtureError(f"memory limit {memory_limit!r} is not a size like 1GB or 512MiB")
    con = catalog.con
    try:
        if memory_limit:  # export_mixture restores the previous limit
            con.execute(f"SET memory_limit = '{memory_limit}'")
        missing = missing_images(catalog, definition, split)
        if missing["count"] and require_images:
            raise MixtureError(
                f"{missing['count']} image files of this plan are missing from {root} (first: {missing['first'][0]}); "
                "nothing was written; run ocrcat validate to see which rows, and re-ingest their sources")
        with plan_rows(catalog, definition, split, "" if relative_paths else f"{root}/", out) as reader:
            counts = (_write_parquet if format == "parquet" else _write_jsonl)(reader, tmp)
        os.replace(tmp, data)
    finally:
        tmp.unlink(missing_ok=True)
    entry = {"file": data.name, "split": split or "all", "rows": sum(counts.values()),
             "components": dict(sorted(counts.items())), "sha256": _sha256(data)}
    manifest = {
        "mixture": definition,
        "seed": definition["seed"],
        "vision_mode": catalog.vision_mode,
        "catalog": str(root),
        "catalog_state": catalog_state(catalog),
        "snapshot": stable_snapshot(catalog),
        "image_root": str(root),
        "relative_paths": relative_paths,
        "format": format,
        "columns": SCHEMA.names,
        "row_group_size": ROW_GROUP if format == "parquet" else None,
        "missing_images": missing["first"],
        "missing_images_count": missing["count"],
    }
    manifest["exports"] = _earlier_exports(out / "manifest.json", manifest) | {entry["split"]: entry}
    exports = [manifest["exports"][k] for k in sorted(manifest["exports"])]
    manifest["files"] = [e["file"] for e in exports]
    manifest["rows"] = sum(e["rows"] for e in exports)
    manifest["components"] = {c["name"]: 0 for c in definition["components"]}
    for e in exports:
        for component, n in e["components"].items():
            manifest["components"][component] = manifest["components"].get(component, 0) + n
    _write_json(out / "manifest.json", manifest)
    return manifest


def missing_images(catalog: Catalog, definition: dict, split: str | None = None) -> dict:
    """How many of the plan's distinct image files are not on disk, and the first 100 of them.

    DuckDB lists the image store (glob, in C++) and anti-joins it with the plan's paths: no
    Python stat per image, so millions of rows cost a directory listing.
    """
    root = catalog.image_root if catalog.shared else catalog.dir.resolve().as_posix()
    # A semi-join (the plan's ids are narrow) and a top-100 instead of a list of every missing path:
    # a catalog without its images (a copy of the lake alone) has millions of them.
    count, first = catalog.con.execute(
        f"""WITH paths AS (SELECT DISTINCT image_path AS path FROM samples
                           WHERE image_path IS NOT NULL
                             AND sample_id IN (SELECT sample_id FROM ({entries_sql(definition, split)}))),
                 missing AS (SELECT path FROM paths ANTI JOIN glob(? || '/images/*/*/*') disk
                             ON ? || '/' || path = disk.file)
            SELECT (SELECT count(*) FROM missing),
                   (SELECT list(path) FROM (SELECT path FROM missing ORDER BY path LIMIT 100))""",
        [root, root],
    ).fetchone()
    return {"count": count, "first": first or []}


def _earlier_exports(path: Path, manifest: dict) -> dict:
    """Other splits exported into the same folder from the same definition and catalog state:
    kept in the manifest, so that train and val can live side by side. Anything else is dropped."""
    old = _read_json(path)
    same = ("mixture", "vision_mode", "catalog", "catalog_state", "snapshot", "relative_paths", "format", "columns")
    if any(old.get(k) != manifest[k] for k in same) or not isinstance(old.get("exports"), dict):
        return {}
    return {k: e for k, e in old["exports"].items() if (path.parent / e.get("file", "")).is_file()}


def _read_json(path: Path) -> dict:
    """A manifest already there, or {} where there is none (or it is unreadable)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _batches(reader: pa.RecordBatchReader):
    """The ordered stream cast to SCHEMA and numbered (`position`), re-cut so that every piece but
    the last is a multiple of ROW_GROUP rows: row groups then fall on the same rows however DuckDB
    chunked its output."""
    pending: list[pa.RecordBatch] = []
    rows = position = 0

    def numbered(table: pa.Table) -> pa.Table:
        ids = pa.array(np.arange(position, position + table.num_rows, dtype=np.int64))
        return table.set_column(0, SCHEMA.field(0), ids)

    for batch in reader:
        pending.append(batch)
        rows += batch.num_rows
        if rows >= 64 * ROW_GROUP:
            table = pa.Table.from_batches(pending).cast(SCHEMA)
            cut = rows - rows % ROW_GROUP
            yield numbered(table.slice(0, cut))
            position += cut
            pending = table.slice(cut).to_batches()
            rows -= cut
    if pending:
        yield numbered(pa.Table.from_batches(pending).cast(SCHEMA))


def _count(counts: dict, table: pa.Table) -> None:
    for value in table.column("component").value_counts().to_pylist():
        counts[value["values"]] = counts.get(value["values"], 0) + value["counts"]


def _write_parquet(reader: pa.RecordBatchReader, path: Path) -> dict:
    counts: dict[str, int] = {}
    # Statistics only on the numeric keys: min/max of position per row group is what finds a
    # row; statistics of long text columns would bloat the footer of thousands of row groups.
    with pq.ParquetWriter(path, SCHEMA, compression="zstd",
                          write_statistics=["position", "sample_id", "repeat"]) as writer:
        for table in _batches(reader):
            writer.write_table(table, row_group_size=ROW_GROUP)
            _count(counts, table)
    return counts


def _write_jsonl(reader: pa.RecordBatchReader, path: Path) -> dict:
    counts: dict[str, int] = {}
    order = list(JSONL_FIRST) + [c for c in SCHEMA.names if c not in JSONL_FIRST]
    with open(path, "w", encoding="utf-8") as f:
        for table in _batches(reader):
            columns = [table.column(c).to_pylist() for c in order]
            f.writelines(json.dumps(dict(zip(order, values)), ensure_ascii=False) + "\n" for values in zip(*columns))
            _count(counts, table)
    return counts


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
