"""The ingest machinery shared by every source.

A split of a source is planned into shards. Worker processes read a shard, validate and store its
images and map its records to rows; the main process, the only one with the DuckDB connection,
writes each shard's rows, errors and a "shard done" mark in one transaction. So a crash leaves
whole shards or nothing, and rerunning the same command skips the shards already done.

Images are written to their content address before their rows commit; files that no kept
snapshot references (from a killed run, or a replaced one once its snapshots expire) are swept by
the compaction that ends every ingest (`ocrcat.catalog.snapshots.compact`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

import pyarrow as pa

from ocrcat import vision
from ocrcat.catalog import Catalog, ImageStore, sample_id
from ocrcat.catalog.schema import SAMPLE_COLUMN_NAMES
from ocrcat.catalog.snapshots import compact
from ocrcat.ingest import registry
from ocrcat.ingest.base import MirrorError, Rejected, Sample, Shard, Skipped
from ocrcat.ingest.parquet import image_bytes

SAMPLE_SCHEMA = pa.schema(
    [
        ("sample_id", pa.uint64()),
        ("source", pa.string()),
        ("split", pa.string()),
        ("source_key", pa.string()),
        ("kind", pa.string()),
        ("text", pa.string()),
        ("response", pa.string()),
        ("messages", pa.string()),
        ("image_path", pa.string()),
        ("image_sha256", pa.string()),
        ("image_format", pa.string()),
        ("image_width", pa.int32()),
        ("image_height", pa.int32()),
        ("image_bytes", pa.int64()),
        ("image_tokens", pa.int32()),
        ("meta", pa.string()),
        ("ingest_run", pa.int32()),
    ]
)
assert SAMPLE_SCHEMA.names == SAMPLE_COLUMN_NAMES


@dataclass
class ShardResult:
    shard_key: str
    rows: list[dict] = field(default_factory=list)
    errors: list[Rejected] = field(default_factory=list)
    skipped: int = 0
    images: int = 0


@dataclass
class RunSummary:
    run_id: int
    source: str
    split: str
    rows: int = 0
    errors: int = 0
    skipped: int = 0
    images: int = 0
    shards_total: int = 0
    shards_resumed: int = 0  # shards already done by an earlier, interrupted run
    seconds: float = 0.0
    status: str = "running"

    @property
    def error_rate(self) -> float:
        seen = self.rows + self.errors
        return self.errors / seen if seen else 0.0


class Progress(Protocol):
    """What the runner reports to; the CLI draws a rich progress bar from it."""

    def start(self, source: str, split: str, total: int, done: int) -> None: ...
    def advance(self, records: int, rows: int, errors: int, images: int) -> None: ...
    def finish(self) -> None: ...


class NoProgress:
    def start(self, source: str, split: str, total: int, done: int) -> None:
        pass

    def advance(self, records: int, rows: int, errors: int, images: int) -> None:
        pass

    def finish(self) -> None:
        pass


def ingest(
    catalog: Catalog,
    source_name: str,
    *,
    mirror: str | Path | None = None,
    splits: list[str] | None = None,
    limit: int | None = None,
    workers: int = 1,
    options: dict | None = None,
    progress: Progress | None = None,
) -> list[RunSummary]:
    """Ingest every requested split of one source from `<mirror>/<source>/`; one summary per split.

    Rerunning after an interruption with the same arguments resumes; running with other
    arguments (or after a completed run) replaces the split's rows.
    """
    source = registry.get(source_name)
    info = source.INFO
    root = Path(mirror or catalog.dir / "mirror") / info.name
    if not root.is_dir():
        raise MirrorError(
            f"no mirror of {info.name} at {root}; run `ocrcat fetch {info.name}` "
            f"or `ocrcat sample-mirror {root.parent}`, or pass --mirror"
        )
    opts = registry.parse_options(source, []) | (options or {})
    for split in splits or []:
        if split not in info.splits:
            raise ValueError(f"{info.name} has no split {split!r}; its splits are: {', '.join(info.splits)}")
    summaries = []
    for split in splits or list(info.splits):
        shards = source.plan(root, split, opts)
        if not shards:
            if splits is None:
                continue  # a mirror may hold only some splits; ingest those it has
            raise MirrorError(f"the mirror at {root} has no {split} files for {info.name}")
        shards = _apply_limit(shards, limit)
        # Ingests of other sources or splits run side by side; two of the same split would
        # replace each other's rows, so the second is refused while the first runs.
        busy = (f"{info.name}/{split} is being ingested into {catalog.dir} by another process; wait for it "
                "to finish (or stop it), then rerun: an interrupted run resumes")
        with catalog.exclusive(f"ingest-{info.name}-{split}", busy):
            summaries.append(_ingest_split(catalog, info.name, split, shards, opts, limit, workers,
                                           progress or NoProgress()))
    if not summaries:
        raise MirrorError(f"the mirror at {root} has no files for {info.name}; expected {', '.join(info.files)}")
    # One commit per shard leaves many small files and snapshots: merge them, expire the shard
    # snapshots, and sweep image files that no kept snapshot references.
    compact(catalog)
    return summaries


def _apply_limit(shards: list[Shard], limit: int | None) -> list[Shard]:
    """The shards that hold the first `limit` records; the last one is cut short."""
    if limit is None:
        return shards
    kept, left = [], limit
    for shard in shards:
        if left <= 0:
            break
        if shard.size > left:
            shard = Shard(f"{shard.key}[:{left}]", left, {**shard.payload, "_limit": left})
        kept.append(shard)
        left -= shard.size
    return kept


def _fingerprint(source: str, split: str, options: dict, limit: int | None, mode: str) -> str:
    """What shapes the rows of a run: same fingerprint = an interrupted run may be resumed."""
    text = json.dumps([source, split, options, limit, mode], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _ingest_split(
    catalog: Catalog,
    source: str,
    split: str,
    shards: list[Shard],
    options: dict,
    limit: int | None,
    workers: int,
    progress: Progress,
) -> RunSummary:
    con = catalog.con
    fingerprint = _fingerprint(source, split, options, limit, catalog.vision_mode)
    arguments = json.dumps({"options": options, "limit": limit, "workers": workers}, default=str)

    def start(con) -> tuple[int, bool]:
        last = con.execute(
            "SELECT run_id, status, fingerprint FROM ingest_runs WHERE source = ? AND split = ? "
            "ORDER BY run_id DESC LIMIT 1",
            [source, split],
        ).fetchone()
        resume = last is not None and last[1] != "completed" and last[2] == fingerprint
        if not resume:
            # A fresh run replaces whatever the catalog holds for this source and split.
            for table in ("samples", "ingest_errors", "ingest_shards"):
                con.execute(f"DELETE FROM {table} WHERE source = ? AND split = ?", [source, split])
        # No sequences in the lake: max + 1, safe because commits take turns (Catalog.commit).
        run_id = con.execute("SELECT coalesce(max(run_id), 0) + 1 FROM ingest_runs").fetchone()[0]
        con.execute(
            "INSERT INTO ingest_runs (run_id, source, split, fingerprint, arguments, started_at, status, "
            "resumed_from) VALUES (?, ?, ?, ?, ?, now(), 'running', ?)",
            [run_id, source, split, fingerprint, arguments, last[0] if resume else None],
        )
        return run_id, resume

    run_id, _ = catalog.commit(start, f"ingest {source}/{split}: start", kind="run-start",
                               source=source, split=split)

    done = {
        key: (rows, errors, skipped)
        for key, rows, errors, skipped in con.execute(
            "SELECT shard_key, rows, errors, skipped FROM ingest_shards "
            "WHERE source = ? AND split = ? AND fingerprint = ?",
            [source, split, fingerprint],
        ).fetchall()
    }
    summary = RunSummary(run_id, source, split, shards_total=len(shards), shards_resumed=len(done))
    for rows, errors, skipped in done.values():
        summary.rows += rows
        summary.errors += errors
        summary.skipped += skipped
    pending = [s for s in shards if s.key not in done]
    progress.start(source, split, sum(s.size for s in shards), sum(s.size for s in shards if s.key in done))

    started = time.perf_counter()
    try:
        for result in _process(pending, source, split, catalog.dir, catalog.vision_mode, options, workers):
            rows, errors = _commit_shard(catalog, source, split, fingerprint, run_id, result)
            summary.rows += rows
            summary.errors += errors
            summary.skipped += result.skipped
            summary.images += result.images
            progress.advance(rows + errors + result.skipped, rows, errors, result.images)
        summary.status = "completed"
    except KeyboardInterrupt:
        summary.status = "interrupted"
        raise
    except BaseException:
        summary.status = "failed"
        raise
    finally:
        summary.seconds = time.perf_counter() - started
        progress.finish()

        def finish(con):
            con.execute(
                "UPDATE ingest_runs SET status = ?, finished_at = now(), rows = ?, errors = ?, skipped = ?, "
                "snapshot = ? WHERE run_id = ?",
                [summary.status, summary.rows, summary.errors, summary.skipped, catalog.next_snapshot(), run_id],
            )

        catalog.commit(finish, f"ingest {source}/{split}: {summary.status}, {summary.rows} rows "
                               f"(run {run_id})", kind="run-end", run_id=run_id, source=source, split=split,
                       status=summary.status)
    return summary


def _process(
    shards: list[Shard], source: str, split: str, catalog_dir: Path, mode: str, options: dict, workers: int
) -> Iterator[ShardResult]:
    """Results of `process_shard` for every shard, in completion order, in `workers` processes."""
    args = (source, split, str(catalog_dir), mode, options)
    if workers <= 1 or len(shards) <= 1:
        for shard in shards:
            yield process_shard(shard, *args)
        return
    # spawn, not fork: the parent holds a DuckDB connection and threads that must not be copied.
    ctx = multiprocessing.get_context("spawn")
    queue = iter(shards)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        running = {pool.submit(process_shard, s, *args) for s in itertools.islice(queue, workers * 2)}
        try:
            while running:
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield future.result()
                    nxt = next(queue, None)
                    if nxt is not None:
                        running.add(pool.submit(process_shard, nxt, *args))
        finally:
            for future in running:
                future.cancel()


def process_shard(shard: Shard, source_name: str, split: str, catalog_dir: str, mode: str,
                  options: dict) -> ShardResult:
    """Read one shard and turn its records into rows, storing images. Runs in a worker."""
    source = registry.get(source_name)
    store = ImageStore(catalog_dir)
    result = ShardResult(shard.key)
    limit = shard.payload.get("_limit")
    records = source.read(shard, options)
    try:
        for record in itertools.islice(records, limit):
            if isinstance(record, Skipped):
                result.skipped += 1
            elif isinstance(record, Rejected):
                result.errors.append(record)
            else:
                row = _to_row(record, source.INFO.kind, source_name, split, store, mode, result)
                if row is not None:
                    result.rows.append(row)
    except Exception as exc:  # a reader that fails mid-shard (corrupt file): the rest of it is an error
        result.errors.append(Rejected(shard.key, "read", f"{type(exc).__name__}: {exc}"))
    return result


def _to_row(record: Sample, kind: str, source: str, split: str, store: ImageStore, mode: str,
            result: ShardResult) -> dict | None:
    """The catalog row of a sample; None (and an error) when a vision sample's image is unusable."""
    row = {
        "sample_id": sample_id(source, split, record.source_key),
        "source": source,
        "split": split,
        "source_key": record.source_key,
        "kind": kind,
        "text": record.text,
        "response": record.response,
        "messages": json.dumps(record.messages, ensure_ascii=False) if record.messages is not None else None,
        "meta": json.dumps(record.meta or {}, ensure_ascii=False, sort_keys=True),
    }
    if kind == "vision":
        try:
            image = store.put(source, image_bytes(record.image))
        except ValueError as exc:  # BadImage, or a hub cell that is null or has no bytes
            result.errors.append(Rejected(record.source_key, "image", str(exc)))
            return None
        result.images += 1
        row.update(
            image_path=image.path,
            image_sha256=image.sha256,
            image_format=image.format,
            image_width=image.width,
            image_height=image.height,
            image_bytes=image.bytes,
            image_tokens=vision.count_image_tokens(image.width, image.height, mode),
        )
    return row


def _commit_shard(catalog: Catalog, source: str, split: str, fingerprint: str, run_id: int,
                  result: ShardResult) -> tuple[int, int]:
    """Write a shard's rows, errors and done-mark in one transaction; returns (rows, errors)."""
    errors = list(result.errors)
    rows, seen = [], set()
    for row in result.rows:
        if row["sample_id"] in seen:
            errors.append(Rejected(row["source_key"], "insert", "duplicate source_key in this shard; first kept"))
            continue
        seen.add(row["sample_id"])
        rows.append({**row, "ingest_run": run_id})
    batch = pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)

    def write(con) -> tuple[int, int]:
        found = list(errors)
        con.register("shard_batch", batch)
        try:
            # No primary key in the lake: ids already in this split (a source repeating a key across
            # shards) are found by a semi-join against the split's ids, and the first row is kept.
            existing = con.execute(
                "SELECT source_key FROM shard_batch WHERE sample_id IN "
                "(SELECT sample_id FROM samples WHERE source = ? AND split = ?) ORDER BY source_key",
                [source, split],
            ).fetchall()
            for (key,) in existing:
                found.append(Rejected(key, "insert", "duplicate source_key: already in the catalog; first kept"))
            inserted = con.execute(
                "INSERT INTO samples SELECT * FROM shard_batch WHERE sample_id NOT IN "
                "(SELECT sample_id FROM samples WHERE source = ? AND split = ?)",
                [source, split],
            ).fetchone()[0] if existing else con.execute("INSERT INTO samples SELECT * FROM shard_batch").fetchone()[0]
            if found:
                con.executemany(
                    "INSERT INTO ingest_errors VALUES (?, ?, ?, ?, ?, ?)",
                    [[run_id, source, split, e.source_key, e.stage, e.message] for e in found],
                )
            con.execute(
                "INSERT INTO ingest_shards VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [source, split, fingerprint, result.shard_key, run_id, inserted, len(found), result.skipped],
            )
        finally:
            con.unregister("shard_batch")
        return inserted, len(found)

    return catalog.commit(write, f"ingest {source}/{split}: shard {result.shard_key} (run {run_id})",
                          kind="shard", run_id=run_id)
