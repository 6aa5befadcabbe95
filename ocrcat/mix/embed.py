"""Exports with the images inside, in shards sized for streaming to many GPU nodes.

`ocrcat export NAME --embed-images --out DIR|s3://bucket/prefix` writes the plan as Parquet shards
`<name>.<split|all>-NNNNN.parquet` of about `shard_mb` each. Every row carries its image in the
hub's Image encoding (a struct of `bytes` and `path`, with the `huggingface` schema metadata that
names the feature), so `datasets.load_dataset("parquet", …)` decodes it as an image, and a trainer
on another machine needs nothing but the shards. Row groups hold EMBED_ROW_GROUP rows: a reader
fetches a few MB to reach any position. `manifest.json` (written last) lists the shards with their
first position, rows and sha256, as the plain export's manifest does for its files.

Object storage goes through pyarrow's filesystems; credentials and endpoint come from the standard
AWS environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, …; ocrcat.catalog.objects).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ocrcat.catalog import Catalog
from ocrcat.catalog.objects import filesystem
from ocrcat.catalog.snapshots import stable_snapshot
from ocrcat.mix.export import ROW_GROUP, SCHEMA, _batches, catalog_state, plan_rows
from ocrcat.mix.mixtures import MixtureError, check_split, get_mixture

EMBED_ROW_GROUP = 64
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _hub_features() -> dict:
    """The export's columns plus the image, as the hub's `huggingface` schema metadata names them,
    so that `datasets` decodes `image` as an image."""
    dtypes = {pa.int64(): "int64", pa.uint64(): "uint64", pa.int32(): "int32", pa.string(): "string"}
    features = {f.name: {"dtype": dtypes[f.type], "_type": "Value"} for f in SCHEMA}
    return features | {"image": {"_type": "Image"}}


EMBED_SCHEMA = SCHEMA.append(pa.field("image", IMAGE_TYPE)).with_metadata(
    {b"huggingface": json.dumps({"info": {"features": _hub_features()}}).encode()})


def open_destination(out: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) of a local folder or an object-storage URL such as s3://bucket/prefix."""
    text = str(out)
    if "://" in text:
        try:
            return filesystem(text)
        except (pa.ArrowInvalid, OSError) as exc:
            raise MixtureError(f"cannot open {text}: {exc}") from None
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise MixtureError(f"--out {path} is a file; give a folder (it is created if missing)")
    path.mkdir(parents=True, exist_ok=True)
    return pafs.LocalFileSystem(), path.resolve().as_posix()


def export_embedded(catalog: Catalog, name: str, out: str | os.PathLike, split: str | None = None,
                    shard_mb: int = 256, row_group: int = EMBED_ROW_GROUP) -> dict:
    """Write the plan of mixture `name` with its image bytes to `out` (folder or URL); the manifest.

    >>> export_embedded(cat, "stage2", "s3://training/stage2", split="train")
    """
    if shard_mb <= 0:
        raise MixtureError(f"--shard-mb must be positive, not {shard_mb}")
    if row_group <= 0 or ROW_GROUP % row_group:
        raise MixtureError(f"row_group must divide {ROW_GROUP} (so every row group but the last is full)")
    # One transaction: one snapshot read throughout, whatever commits meanwhile (as export_mixture).
    catalog.con.execute("BEGIN TRANSACTION")
    try:
        return _export_embedded(catalog, name, out, split, shard_mb, row_group)
    finally:
        catalog.con.execute("ROLLBACK")


def _export_embedded(catalog: Catalog, name: str, out: str | os.PathLike, split: str | None, shard_mb: int,
                     row_group: int) -> dict:
    definition = get_mixture(catalog, name)
    check_split(catalog, definition, split)
    fs, root = open_destination(out)
    fs.create_dir(root, recursive=True)
    _check_destination(fs, root, out, split or "all")
    stem = f"{name}.{split or 'all'}"
    # The plan's rows are bucketed on local disk (plan_rows) even when the shards go to S3.
    with plan_rows(catalog, definition, split, "", Path(tempfile.gettempdir())) as reader:
        shards = _write_shards(catalog, reader, fs, root, stem, shard_mb, row_group)
    manifest = {
        "mixture": definition, "seed": definition["seed"], "vision_mode": catalog.vision_mode,
        "catalog": catalog.shared["file"] if catalog.shared else str(catalog.dir.resolve()),
        "catalog_state": catalog_state(catalog), "snapshot": stable_snapshot(catalog),
        "embedded_images": True, "format": "parquet", "split": split or "all",
        "columns": EMBED_SCHEMA.names, "row_group_size": row_group,
        "rows": sum(s["rows"] for s in shards), "shards": shards, "files": [s["file"] for s in shards],
    }
    with fs.open_output_stream(f"{root}/manifest.json") as f:
        f.write((json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode())
    return manifest


def _check_destination(fs, root: str, out, split: str) -> None:
    """An embedded export is one split a folder: its manifest lists that split's shards only, so
    writing another split (or over a plain export) there would leave the first one's files unlisted."""
    try:
        with fs.open_input_stream(f"{root}/manifest.json") as f:
            old = json.loads(f.read())
    except (OSError, ValueError):
        return  # nothing there yet (or nothing readable, which this export replaces)
    if not old.get("embedded_images"):
        raise MixtureError(f"{out} holds a plain export; give the embedded export its own --out")
    if old.get("split") != split:
        raise MixtureError(f"{out} holds the embedded export of split {old.get('split')!r}; an embedded "
                           f"export is one split a folder: give split {split!r} its own --out")


def _write_shards(catalog: Catalog, reader: pa.RecordBatchReader, fs, root: str, stem: str, shard_mb: int,
                  row_group: int) -> list[dict]:
    """Shards of about `shard_mb` MB, each under its final name only once complete."""
    shards, writer, current = [], None, None
    try:
        for table in _batches(reader):
            # _batches cuts at multiples of ROW_GROUP, so every row group but the last has
            # `row_group` rows: readers can deal whole row groups to ranks (PlanBatchSampler block).
            for start in range(0, table.num_rows, row_group):
                group = _with_images(catalog, table.slice(start, row_group))
                if writer is None:
                    current = {"file": f"{stem}-{len(shards):05d}.parquet", "first_position": group["position"][0].as_py(),
                               "rows": 0, "bytes": 0}
                    writer = pq.ParquetWriter(f"{root}/.{current['file']}.tmp", EMBED_SCHEMA, filesystem=fs,
                                              compression="zstd", write_statistics=["position", "sample_id"])
                writer.write_table(group, row_group_size=row_group)
                current["rows"] += group.num_rows
                current["bytes"] += group.nbytes
                if current["bytes"] >= shard_mb << 20:
                    shards.append(_close(fs, root, writer, current))
                    writer = None
        if writer is not None:
            shards.append(_close(fs, root, writer, current))
            writer = None
    finally:
        if writer is not None:
            writer.close()
            fs.delete_file(f"{root}/.{current['file']}.tmp")
    return shards


def _with_images(catalog: Catalog, table: pa.Table) -> pa.Table:
    """`table` with the `image` column: each row's stored bytes and its content-addressed name."""
    images = []
    for rel in table.column("image_path").to_pylist():
        if rel is None:
            images.append(None)
            continue
        try:
            images.append({"bytes": catalog.images.read(rel), "path": Path(rel).name})
        except OSError as exc:
            raise MixtureError(f"image {rel} of the plan cannot be read from {catalog.image_root} "
                               f"({exc.strerror or exc}); if the storage is reachable, the image is gone: run "
                               "`ocrcat validate --deep` and re-ingest its source, then export again") from None
    return table.append_column(EMBED_SCHEMA.field("image"), pa.array(images, IMAGE_TYPE)).replace_schema_metadata(
        EMBED_SCHEMA.metadata)


def _close(fs: pafs.FileSystem, root: str, writer: pq.ParquetWriter, shard: dict) -> dict:
    """Finish a shard: close, checksum, and move it to its final name (a reader never sees half)."""
    writer.close()
    tmp, final = f"{root}/.{shard['file']}.tmp", f"{root}/{shard['file']}"
    digest = hashlib.sha256()
    with fs.open_input_stream(tmp) as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    fs.move(tmp, final)
    info = fs.get_file_info(final)
    return {"file": shard["file"], "first_position": shard["first_position"], "rows": shard["rows"],
            "bytes": info.size, "sha256": digest.hexdigest()}
