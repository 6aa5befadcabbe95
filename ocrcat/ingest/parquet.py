"""Hub Parquet files: planning shards from footers, reading rows, the `datasets` Image encoding.

On the hub an `Image` column is a struct `{bytes: binary, path: string}`, and the file's schema
metadata (`huggingface` key) names the feature types so that `datasets` decodes it back. Sources
describe their columns in that same serialised form (IMAGE, STRING, list_of below): `datasets`, slow
to import, is then only loaded to write sample mirrors, never by ingest workers or the CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ocrcat.ingest.base import Shard

ROWS_PER_SHARD = 256

# Feature types as the hub's `huggingface` schema metadata spells them.
IMAGE = {"_type": "Image"}
STRING = {"dtype": "string", "_type": "Value"}


def list_of(feature: dict) -> dict:
    return {"feature": feature, "_type": "List"}


def plan_files(files: list[Path], root: Path, rows_per_shard: int = ROWS_PER_SHARD) -> list[Shard]:
    """Shards of at most `rows_per_shard` rows, never crossing a row group; one record per row."""
    shards = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        meta = pq.ParquetFile(path).metadata
        for group in range(meta.num_row_groups):
            n = meta.row_group(group).num_rows
            for start in range(0, n, rows_per_shard):
                stop = min(n, start + rows_per_shard)
                shards.append(
                    Shard(
                        key=f"{rel}:g{group}:{start}",
                        size=stop - start,
                        payload={"path": str(path), "file": rel, "group": group,
                                 "start": start, "stop": stop,
                                 "first_row": _rows_before(meta, group) + start},
                    )
                )
    return shards


def _rows_before(meta: pq.FileMetaData, group: int) -> int:
    return sum(meta.row_group(g).num_rows for g in range(group))


def read_rows(shard: Shard, columns: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row index within the file, row as a dict) for each row of a shard planned by plan_files."""
    p = shard.payload
    table = pq.ParquetFile(p["path"]).read_row_group(p["group"], columns=columns)
    table = table.slice(p["start"], p["stop"] - p["start"])
    for offset, row in enumerate(table.to_pylist()):
        yield p["first_row"] + offset, row


def image_bytes(value: Any) -> bytes:
    """The encoded bytes of a hub Image cell; ValueError when the cell holds none."""
    if value is None:
        raise ValueError("image is missing (null)")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    data = value.get("bytes") if isinstance(value, dict) else None
    if not data:
        path = value.get("path") if isinstance(value, dict) else None
        raise ValueError(f"image cell has no bytes (path={path!r}); only embedded images are supported")
    return data


def write_hub_parquet(path: Path, rows: list[dict], features: dict, row_group_size: int = 100) -> None:
    """Write rows the way the hub stores a `datasets` split: Image structs and feature metadata.

    `features` is the serialised form ({"image": IMAGE, "query": STRING, …}). Image values are
    given as encoded bytes (or None) and stored as {"bytes": …, "path": None}.
    """
    import datasets

    image_columns = [name for name, f in features.items() if f.get("_type") == "Image"]
    features = datasets.Features.from_dict(features)
    encoded = [
        {k: ({"bytes": v, "path": None} if k in image_columns and v is not None else v) for k, v in r.items()}
        for r in rows
    ]
    table = pa.Table.from_pylist(encoded, schema=features.arrow_schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)


def split_file_name(split: str, index: int = 0, count: int = 1) -> str:
    """The hub's shard naming: `train-00000-of-00001.parquet`."""
    return f"{split}-{index:05d}-of-{count:05d}.parquet"


def plan_split(root: Path, pattern: str) -> list[Shard]:
    """Shards of every Parquet file of one split (`pattern` relative to the source's mirror)."""
    return plan_files(sorted(root.glob(pattern)), root)


def row_key(shard: Shard, index: int) -> str:
    """A row's identity inside its source: file path in the repo and row number in the file."""
    return f"{shard.payload['file']}#{index}"
