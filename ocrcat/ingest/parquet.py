"""Hub Parquet files: planning shards from footers, reading rows, the `datasets` Image encoding.

On the hub an `Image` column is a struct `{bytes: binary, path: string}`, and the file's schema
metadata (`huggingface` key) names the feature types so that `datasets` decodes it back. Sources
describe their columns in that same serialised form (IMAGE, STRING, list_of below): `datasets`, slow
to import, is then only loaded to write sample mirrors, never by ingest workers or the CLI.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ocrcat.ingest.base import MirrorError, Shard

ROWS_PER_SHARD = 512

# Feature types as the hub's `huggingface` schema metadata spells them.
IMAGE = {"_type": "Image"}
STRING = {"dtype": "string", "_type": "Value"}


def list_of(feature: dict) -> dict:
    return {"feature": feature, "_type": "List"}


class SchemaMismatch(MirrorError):
    """A Parquet file whose columns are not the source's: caught at planning, before any work."""


def plan_files(files: list[Path], root: Path, rows_per_shard: int = ROWS_PER_SHARD,
               features: dict | None = None, merge_groups: bool = False) -> list[Shard]:
    """Shards of at most `rows_per_shard` rows, one record per row.

    A large row group is cut into several shards. With `merge_groups`, consecutive small row
    groups of a file share a shard up to `rows_per_shard` rows (the hub writes image datasets in
    100-row groups; one commit per 100 rows costs the main process more than the rows do).
    With `features` (the source's columns in the hub's serialised form) every file's schema is
    checked first, so a file of another dataset fails the plan instead of every record.
    """
    shards = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        try:
            parquet = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as exc:
            raise MirrorError(f"{path} is not a readable Parquet file ({exc}); it is corrupt or "
                              "incomplete: fetch it again") from None
        if features:
            check_schema(parquet.schema_arrow, features, path)
        meta = parquet.metadata
        base = {"path": str(path), "file": rel}
        merged: list[int] = []  # consecutive whole groups waiting to become one shard
        merged_rows = 0

        def close_merged() -> None:
            nonlocal merged, merged_rows
            if len(merged) == 1:
                shards.append(_slice_shard(rel, base, meta, merged[0], 0, merged_rows, rows_per_shard))
            elif merged:
                shards.append(Shard(f"{rel}:g{merged[0]}-{merged[-1]}", merged_rows,
                                    {**base, "groups": merged, "first_row": _rows_before(meta, merged[0])}))
            merged, merged_rows = [], 0

        for group in range(meta.num_row_groups):
            n = meta.row_group(group).num_rows
            if merge_groups and n <= rows_per_shard:
                if merged_rows + n > rows_per_shard:
                    close_merged()
                merged.append(group)
                merged_rows += n
                continue
            close_merged()
            for start in range(0, n, rows_per_shard):
                shards.append(_slice_shard(rel, base, meta, group, start, min(n, start + rows_per_shard),
                                           rows_per_shard))
        close_merged()
    return shards


def _slice_shard(rel: str, base: dict, meta: pq.FileMetaData, group: int, start: int, stop: int,
                 per_shard: int) -> Shard:
    return Shard(f"{rel}:g{group}:{start}", stop - start,
                 {**base, "group": group, "start": start, "stop": stop, "per_shard": per_shard,
                  "first_row": _rows_before(meta, group) + start})


def check_schema(schema: pa.Schema, features: dict, path: Path) -> None:
    """SchemaMismatch naming every missing or mistyped column of `features` in the file at `path`."""
    problems = []
    for name, feature in features.items():
        if name not in schema.names:
            problems.append(f"column {name!r} is missing")
        elif not _matches(schema.field(name).type, feature):
            problems.append(f"column {name!r} is {schema.field(name).type}, expected {_describe(feature)}")
    if problems:
        raise SchemaMismatch(f"{path} does not have this source's columns: {'; '.join(problems)} "
                             f"(it has: {', '.join(schema.names)}); is it a file of another dataset or config?")


def _matches(arrow: pa.DataType, feature) -> bool:
    """Whether an Arrow type can hold a feature of the hub's serialised form."""
    if isinstance(feature, list):  # the old spelling of a list: [feature]
        return _is_list(arrow) and _matches(arrow.value_type, feature[0])
    kind = feature.get("_type")
    if kind == "Image":
        return pa.types.is_struct(arrow) and any(
            f.name == "bytes" and (pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)) for f in arrow)
    if kind in ("List", "Sequence", "LargeList"):
        return _is_list(arrow) and _matches(arrow.value_type, feature["feature"])
    if kind == "ClassLabel":
        return pa.types.is_integer(arrow)
    if kind == "Value":
        if feature["dtype"] in ("string", "large_string"):
            return pa.types.is_string(arrow) or pa.types.is_large_string(arrow)
        return not (pa.types.is_nested(arrow) or pa.types.is_binary(arrow))
    if kind is None:  # a dict of fields: a struct
        return pa.types.is_struct(arrow) and all(
            arrow.get_field_index(k) >= 0 and _matches(arrow.field(k).type, v) for k, v in feature.items())
    return True  # feature types ocrcat does not use: not checked


def _is_list(arrow: pa.DataType) -> bool:
    return pa.types.is_list(arrow) or pa.types.is_large_list(arrow) or pa.types.is_fixed_size_list(arrow)


def _describe(feature) -> str:
    if isinstance(feature, list):
        return f"a list of {_describe(feature[0])}"
    kind = feature.get("_type")
    if kind == "Image":
        return "an Image struct {bytes, path}"
    if kind in ("List", "Sequence", "LargeList"):
        return f"a list of {_describe(feature['feature'])}"
    if kind == "ClassLabel":
        return "an integer class label"
    if kind == "Value":
        return feature["dtype"]
    return "a struct {" + ", ".join(feature) + "}"


def _rows_before(meta: pq.FileMetaData, group: int) -> int:
    return sum(meta.row_group(g).num_rows for g in range(group))


def read_rows(shard: Shard, columns: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row index within the file, row as a dict) for each row of a shard planned by plan_files."""
    p = shard.payload
    pf = pq.ParquetFile(p["path"])
    if "groups" in p:  # several whole groups
        table = pf.read_row_groups(p["groups"], columns=columns)
    elif p["start"] == 0 and p["stop"] == pf.metadata.row_group(p["group"]).num_rows:
        table = pf.read_row_group(p["group"], columns=columns)
    else:
        # A slice of a large row group: stream it in shard-sized batches and stop after this one,
        # rather than decoding the whole group for every shard cut from it.
        per, size = p.get("per_shard") or 0, p["stop"] - p["start"]
        if per and p["start"] % per == 0 and size <= per:
            batches = pf.iter_batches(batch_size=per, row_groups=[p["group"]], columns=columns)
            table = pa.Table.from_batches([next(itertools.islice(batches, p["start"] // per, None))])
        else:
            table = pf.read_row_group(p["group"], columns=columns).slice(p["start"], size)
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


def plan_split(root: Path, pattern: str, features: dict | None = None) -> list[Shard]:
    """Shards of every Parquet file of one split (`pattern` relative to the source's mirror)."""
    return plan_files(sorted(root.glob(pattern)), root, features=features, merge_groups=True)


def row_key(shard: Shard, index: int) -> str:
    """A row's identity inside its source: file path in the repo and row number in the file."""
    return f"{shard.payload['file']}#{index}"
