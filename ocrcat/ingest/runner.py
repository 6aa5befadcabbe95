"""The ingest machinery shared by every source.

A split of a source is planned into shards. Worker processes read a shard, validate and store its
images and map its records to rows; the main process, the only one with the catalog connection,
writes each shard's rows (into `samples_pending`), errors and a "shard done" mark in one
transaction. So a crash leaves whole shards or nothing, and rerunning the same command skips the
shards already done. When every shard is done and the error rate is within `--max-error-rate`,
one last transaction replaces the split's rows in `samples` by the pending ones: readers see the
old rows until then, and a failed run never changes them.

Bad records (a truncated image, a missing field) become `ingest_errors` rows and the rest of the
shard lands. Faults (an I/O error, a full disk, a corrupt file, a worker that dies) fail the
whole shard and the run, with a message naming the shard, the file and the cause.

The catalog is a lake (ocrcat.catalog.store): every commit above is one snapshot, made through
`Catalog.commit`, which takes turns with other writers and retries a commit that lost a race, so
ingests of other sources or splits run side by side; a second ingest of the same split is refused.
A lake commit costs a fraction of a second whatever its size, so finished shards are gathered
(COMMIT_RECORDS, COMMIT_SECONDS) and committed together: still whole shards or nothing.

Images are written to their content address before their rows commit; files that no kept snapshot
references (from a killed run, or a replaced one once its snapshots expire) are swept by the
compaction that ends every ingest (`ocrcat.catalog.snapshots.compact`).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import itertools
import json
import multiprocessing
import multiprocessing.forkserver
import os
import random
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import pyarrow as pa

from ocrcat import vision
from ocrcat.catalog import Catalog, ImageStore, sample_id
from ocrcat.catalog.images import open_store
from ocrcat.catalog.images import UnsafeSweep
from ocrcat.catalog.snapshots import compact
from ocrcat.catalog.store import insert_rows, interrupted, process_alive
from ocrcat.catalog.schema import SAMPLE_COLUMN_NAMES
from ocrcat.ingest import limits as caps
from ocrcat.ingest import registry
from ocrcat.ingest.base import MirrorError, Rejected, Sample, Shard, Skipped
from ocrcat.ingest.parquet import image_bytes
from ocrcat.ingest.ray_pool import TaskLost, connect as connect_ray, run_on_ray

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
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
PLAN_VERSION = 2  # 2: small Parquet row groups merged into one shard

# Finished shards are committed together once this many records or seconds have gathered: a lake
# commit (a Parquet file, a snapshot, SQLite writes) costs a fraction of a second whatever its size,
# and sources cut into 100-row shards would otherwise spend most of their time committing.
# An interruption loses at most this much finished work.
COMMIT_RECORDS = 5000
COMMIT_SECONDS = 5.0


class IngestFailed(RuntimeError):
    """A run that ended `failed`; the message names the split, shard, file and real cause."""


class ErrorRateExceeded(IngestFailed):
    """More records were rejected than --max-error-rate allows; the old rows stay."""


class ShardFault(Exception):
    """Raised in a worker when a shard as a whole cannot be read or written (picklable: one str)."""


@dataclass
class ShardResult:
    """What a worker sends back for one shard. Its rows travel as one Arrow table (SAMPLE_SCHEMA):
    a few buffers to pickle, and nothing for the main process to convert before its insert."""

    shard_key: str
    rows: pa.Table = field(default_factory=SAMPLE_SCHEMA.empty_table)
    errors: list[Rejected] = field(default_factory=list)
    skipped: int = 0
    images: int = 0
    landed: int = 0  # filled in by the commit: rows inserted, error rows written
    rejected: int = 0

    @property
    def records(self) -> int:
        return self.landed + self.rejected + self.skipped


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
    warning: str | None = None  # something the user should know although the run completed

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
    max_error_rate: float | None = None,
    limits: caps.Limits | None = None,
    ray: str | None = None,
) -> list[RunSummary]:
    """Ingest every requested split of one source from `<mirror>/<source>/`; one summary per split.

    Each split's rows replace the old ones in one commit at the end of its run, and only when the
    run completes with at most `max_error_rate` of its records rejected; otherwise IngestFailed.
    Rerunning after an interruption or a fault with the same arguments resumes. `ray` (an address,
    "auto" or "local") runs the shards as tasks on a Ray cluster instead of `workers` local processes;
    the commits, and so every guarantee above, stay in this process.
    """
    root = check_request(catalog.dir, source_name, mirror, splits, limit)
    if ray:
        connect_ray(ray)  # before planning: an unreachable cluster is said at once
        root = root.resolve()  # tasks run in other working directories
    elif workers > 1:
        _start_fork_server()  # it imports the ingest code while this process plans and opens the run
    source = registry.get(source_name)
    info = source.INFO
    opts = registry.parse_options(source, []) | (options or {})
    planning = opts | {"_catalog": str(catalog.dir)}  # where a source may keep work files (staging)
    limits = limits or caps.Limits()
    summaries = []
    with caps.using(limits):  # planning reads archives too (PubTables staging)
        for split in splits or list(info.splits):
            shards = _plan(source, root, split, planning)
            if not shards:
                if splits is None:
                    continue  # a mirror may hold only some splits; ingest those it has
                raise MirrorError(f"the mirror at {root} has no {split} files for {info.name}")
            shards = _apply_limit(shards, limit)
            # Ingests of other sources or splits run side by side; two of the same split would
            # replace each other's rows, so the second is refused while the first runs.
            busy = (f"{info.name}/{split} is being ingested into {catalog.dir} by another process; wait for "
                    "it to finish (or stop it), then rerun: an interrupted run resumes")
            with catalog.exclusive(f"ingest-{info.name}-{split}", busy):
                summaries.append(_ingest_split(catalog, info.name, split, shards, opts, limit, workers,
                                               progress or NoProgress(), max_error_rate, limits, ray))
    if not summaries:
        raise MirrorError(f"the mirror at {root} has no files for {info.name}; expected {', '.join(info.files)}")
    # Merge the small files, expire the shard snapshots, sweep this source's images that no kept
    # snapshot references (`ocrcat compact` sweeps every source and flushes inlined rows).
    try:
        compact(catalog, source=info.name, flush_inlined=False)
    except UnsafeSweep as exc:
        summaries[-1].warning = str(exc)
    except OSError as exc:  # the rows are committed; leftover files are only wasted space
        summaries[-1].warning = f"unreferenced images were not all swept: {_cause(exc)}"
    return summaries


def check_request(catalog_dir: str | Path, source_name: str, mirror: str | Path | None,
                  splits: list[str] | None, limit: int | None) -> Path:
    """Check what a user asked for before anything is created; returns the source's mirror folder."""
    info = registry.get(source_name).INFO
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be 1 or more (got {limit}); leave it out to ingest every record")
    for split in splits or []:
        if split not in info.splits:
            raise ValueError(f"{info.name} has no split {split!r}; its splits are: {', '.join(info.splits)}")
    root = Path(mirror or Path(catalog_dir) / "mirror") / info.name
    if not root.is_dir():
        raise MirrorError(
            f"no mirror of {info.name} at {root}; run `ocrcat fetch {info.name}` "
            f"or `ocrcat sample-mirror {root.parent}`, or pass --mirror"
        )
    return root


def _plan(source, root: Path, split: str, options: dict) -> list[Shard]:
    """The source's shards; a file that cannot be planned (corrupt, wrong schema) fails the run."""
    try:
        return source.plan(root, split, options)
    except (MirrorError, ValueError, IngestFailed):
        raise
    except Exception as exc:
        raise IngestFailed(f"{source.INFO.name}/{split}: planning failed: {_cause(exc)}; "
                           "nothing was written; fix or re-fetch that file and rerun") from None


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


def _fingerprint(source: str, split: str, options: dict, limit: int | None, mode: str, limits: caps.Limits) -> str:
    """What shapes the rows of a run: same fingerprint = an interrupted run may be resumed."""
    # PLAN_VERSION: shards planned differently by another version are not resumed, but redone.
    text = json.dumps([source, split, options, limit, mode, PLAN_VERSION]
                      + ([limits.as_dict()] if limits != caps.Limits() else []), sort_keys=True, default=str)
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
    max_error_rate: float | None,
    limits: caps.Limits,
    ray: str | None = None,
) -> RunSummary:
    fingerprint = _fingerprint(source, split, options, limit, catalog.vision_mode, limits)
    arguments = {"options": options, "limit": limit, "workers": workers, "max_error_rate": max_error_rate,
                 "limits": limits.as_dict(), **({"ray": ray} if ray else {})}
    run_id, done = _start_run(catalog, source, split, fingerprint, arguments)
    summary = RunSummary(run_id, source, split, shards_total=len(shards), shards_resumed=len(done))
    for rows, errors, skipped in done.values():
        summary.rows += rows
        summary.errors += errors
        summary.skipped += skipped
    pending = [s for s in shards if s.key not in done]
    progress.start(source, split, sum(s.size for s in shards), sum(s.size for s in shards if s.key in done))

    started = time.perf_counter()
    message = None
    try:
        seen = _pending_ids(catalog.con, source, split)
        results = _process(pending, (source, split, catalog.image_root, catalog.vision_mode, options, limits, run_id),
                           workers, ray)
        with closing(results):  # an early exit kills the workers now, not when garbage is collected
            _land_in_batches(catalog, source, split, fingerprint, run_id, results, summary, seen, progress)
        if max_error_rate is not None and summary.error_rate > max_error_rate:
            raise ErrorRateExceeded(
                f"{source}/{split}: {summary.errors} of {summary.rows + summary.errors} records rejected "
                f"(error rate {summary.error_rate:.2%}) is above --max-error-rate {max_error_rate:.2%}; "
                "the previous rows are unchanged; see the rejected records with "
                f"ocrcat sql \"SELECT * FROM ingest_errors WHERE source = '{source}' AND split = '{split}'\""
            )
        try:
            _commit_run(catalog, source, split, fingerprint, summary)
        except Exception as exc:
            if interrupted(exc):
                raise KeyboardInterrupt from None
            raise IngestFailed(f"{source}/{split}: the final commit to the catalog at {catalog.dir} failed: "
                               f"{_cause(exc)}; the previous rows are unchanged; fix the cause and rerun "
                               "the same command (its shards are kept)") from None
        summary.status = "completed"
    except BaseException as exc:
        if interrupted(exc):  # Ctrl-C or `kill`, also when DuckDB caught it mid-query
            summary.status, message = "interrupted", "interrupted"
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise KeyboardInterrupt from None
        summary.status, message = "failed", str(exc) or type(exc).__name__
        raise
    finally:
        summary.seconds = time.perf_counter() - started
        progress.finish()
        if summary.status != "completed":
            _end_run(catalog, summary, message)
    return summary


def _land_in_batches(catalog: Catalog, source: str, split: str, fingerprint: str, run_id: int,
                     results: Iterator[list[ShardResult]], summary: RunSummary, seen: SeenIds,
                     progress: Progress) -> None:
    """Commit finished shards in batches (COMMIT_RECORDS / COMMIT_SECONDS). When a later shard
    fails, the shards already finished are committed first, so a rerun resumes after them."""
    batch: list[ShardResult] = []
    gathered, since = 0, time.monotonic()

    def land() -> None:
        nonlocal gathered, since
        if batch:
            _land_shards(catalog, source, split, fingerprint, run_id, batch, summary, seen)
            for result in batch:
                progress.advance(result.records, result.landed, result.rejected, result.images)
        batch.clear()
        gathered, since = 0, time.monotonic()

    while True:
        try:
            finished = next(results)
        except StopIteration:
            break
        except BaseException:
            land()
            raise
        batch.extend(finished)
        gathered += sum(r.rows.num_rows + len(r.errors) + r.skipped for r in finished)
        if gathered >= COMMIT_RECORDS or time.monotonic() - since >= COMMIT_SECONDS:
            land()
    land()


def _land_shards(catalog: Catalog, source: str, split: str, fingerprint: str, run_id: int,
                 batch: list[ShardResult], summary: RunSummary, seen: SeenIds) -> None:
    """Commit finished shards and count them; a catalog write error fails the run."""
    try:
        _commit_shards(catalog, source, split, fingerprint, run_id, batch, seen)
    except Exception as exc:
        if interrupted(exc):
            raise KeyboardInterrupt from None
        keys = ", ".join(r.shard_key for r in batch[:3]) + (f" and {len(batch) - 3} more" if len(batch) > 3 else "")
        raise IngestFailed(f"{source}/{split}: writing shard(s) {keys} to the catalog at {catalog.dir} "
                           f"failed: {_cause(exc)}; nothing of them landed and the previous rows are "
                           "unchanged; fix the cause and rerun the same command to resume") from None
    for result in batch:
        summary.rows += result.landed
        summary.errors += result.rejected
        summary.skipped += result.skipped
        summary.images += result.images


# --- The runner's SQL. Kept in these few functions so that the storage can change under them.
# Plain INSERTs with explicit filters: no ON CONFLICT / INSERT OR IGNORE / primary keys relied on.


def _start_run(catalog: Catalog, source: str, split: str, fingerprint: str,
               arguments: dict) -> tuple[int, dict[str, tuple[int, int, int]]]:
    """Record a new run; returns its id and the shards already done by the run it resumes.

    A run resumes the last run of its source and split when that one did not complete and had the
    same fingerprint; otherwise it starts over, dropping what unfinished runs left pending. The
    split's visible rows are not touched here: only `_commit_run` replaces them.
    """

    def start(con) -> tuple[int, dict[str, tuple[int, int, int]]]:
        # max + 1: commits take turns (Catalog.commit), so no two runs get one id
        next_id, last, status, last_fingerprint, running = con.execute(
            "SELECT (SELECT coalesce(max(run_id), 0) + 1 FROM ingest_runs), "
            "max(run_id), arg_max(status, run_id), arg_max(fingerprint, run_id), count(*) FILTER (status = 'running') "
            "FROM ingest_runs WHERE source = ? AND split = ?",
            [source, split],
        ).fetchone()
        resume = last is not None and status != "completed" and last_fingerprint == fingerprint
        if running:
            # A run of this split still marked running was killed before it could say so (kill -9,
            # a lost machine): the split's lock is ours. It ends here, whether this run resumes it or
            # not, or it would hold back a shared catalog's image sweep forever.
            con.execute("UPDATE ingest_runs SET status = 'interrupted', finished_at = now(), message = ? "
                        "WHERE source = ? AND split = ? AND status = 'running'",
                        [f"ended without recording how (killed?); run {next_id} took over", source, split])
        if resume:
            done = {key: (rows, errors, skipped) for key, rows, errors, skipped in con.execute(
                "SELECT shard_key, rows, errors, skipped FROM ingest_shards "
                "WHERE source = ? AND split = ? AND fingerprint = ?", [source, split, fingerprint]).fetchall()}
        else:
            done = {}
            for table in ("samples_pending", "ingest_shards"):
                con.execute(f"DELETE FROM {table} WHERE source = ? AND split = ?", [source, split])
            # Errors of unfinished runs go too; those of the split's current rows stay until replaced.
            con.execute(
                "DELETE FROM ingest_errors WHERE source = ? AND split = ? AND run_id NOT IN "
                "(SELECT run_id FROM ingest_runs WHERE status = 'completed')",
                [source, split],
            )
        con.execute(
            "INSERT INTO ingest_runs (run_id, source, split, fingerprint, arguments, started_at, status, "
            "resumed_from) VALUES (?, ?, ?, ?, ?, now(), 'running', ?)",
            [next_id, source, split, fingerprint, json.dumps(arguments, default=str), last if resume else None],
        )
        return next_id, done

    run_id, done = catalog.commit(start, f"ingest {source}/{split}: run started", kind="run-start",
                                  source=source, split=split)
    return _unique_run_id(catalog, run_id, source, split), done


def _unique_run_id(catalog: Catalog, run_id: int, source: str, split: str) -> int:
    """`run_id`, or a new id when another run took the same one; returns the run's id.

    Machines sharing a catalog do not share the commit lock: two runs that start at the same moment
    can both take max + 1, and then each one's updates would land on the other's row. After its
    start is committed, a run that finds its id twice moves to a new one (the one that committed
    last always sees both rows); if both move, they check again.
    """
    while catalog.con.execute("SELECT count(*) FROM ingest_runs WHERE run_id = ?", [run_id]).fetchone()[0] > 1:
        time.sleep(random.random() * 0.2)  # two runs that both moved should not meet again

        def move(con, old=run_id) -> int:
            [[new]] = con.execute("SELECT max(run_id) + 1 FROM ingest_runs").fetchall()
            con.execute("UPDATE ingest_runs SET run_id = ? WHERE run_id = ? AND source = ? AND split = ?",
                        [new, old, source, split])
            return new

        run_id = catalog.commit(move, f"ingest {source}/{split}: run {run_id} renumbered (another run took its id)",
                                kind="run-renumber", source=source, split=split)
    return run_id


class SeenIds:
    """Sample ids this run (with the runs it resumes) has written so far: the duplicate check.

    Sorted uint64 arrays, 8 bytes an id (a Python set of ints costs ~70, which made the writer's
    memory grow with the split); each commit adds one array, and every few commits they are merged,
    so a lookup searches a handful of arrays.
    """

    MERGE_AT = 8

    def __init__(self, ids: np.ndarray | None = None):
        self.chunks = [np.sort(ids.astype(np.uint64))] if ids is not None and len(ids) else []

    def known(self, ids: np.ndarray) -> np.ndarray:
        """A boolean mask: which of `ids` were written already."""
        mask = np.zeros(len(ids), dtype=bool)
        for chunk in self.chunks:
            at = np.searchsorted(chunk, ids).clip(max=len(chunk) - 1)
            mask |= chunk[at] == ids
        return mask

    def add(self, ids: np.ndarray) -> None:
        if len(ids):
            self.chunks.append(np.sort(ids))
        if len(self.chunks) > self.MERGE_AT:
            self.chunks = [np.sort(np.concatenate(self.chunks))]


def _pending_ids(con, source: str, split: str) -> SeenIds:
    """The ids the unfinished run(s) of this split have written (read as one array, not row by row)."""
    ids = con.execute("SELECT sample_id FROM samples_pending WHERE source = ? AND split = ?",
                      [source, split]).fetchnumpy()["sample_id"]
    return SeenIds(np.asarray(ids, dtype=np.uint64))


def _commit_shards(catalog: Catalog, source: str, split: str, fingerprint: str, run_id: int, batch: list[ShardResult],
                   seen: SeenIds) -> None:
    """Write shards' rows (pending until the run commits), errors and done-marks in one transaction.

    Several shards that finished together share a commit (the main process keeps up with the
    workers; each shard is still all or nothing). Fills each result's `landed` and `rejected`.
    A key seen twice (in this batch, or in an earlier shard of this run: `seen`, updated once the
    commit succeeded) is an error row; the first one is kept. The check is in memory rather than a
    join per commit (SeenIds: 8 bytes an id in the main process).
    """
    table = pa.concat_tables([result.rows for result in batch])
    ids = table.column("sample_id").to_numpy()
    keep = np.zeros(len(ids), dtype=bool)
    keep[np.unique(ids, return_index=True)[1]] = True  # the first of each id in this batch
    keep &= ~seen.known(ids)
    errors, marks, at = [], [], 0
    for result in batch:
        n = result.rows.num_rows
        kept = keep[at:at + n]
        duplicates = [] if kept.all() else [
            Rejected(key, "insert", "duplicate source_key: an earlier record had it; first kept")
            for key in result.rows.column("source_key").filter(pa.array(~kept)).to_pylist()]
        errors += result.errors + duplicates
        result.landed, result.rejected = int(kept.sum()), len(result.errors) + len(duplicates)
        marks.append([source, split, fingerprint, result.shard_key, run_id, result.landed, result.rejected,
                      result.skipped])
        at += n
    if not keep.all():
        table = table.filter(keep)

    def write(con) -> None:
        insert_rows(con, "samples_pending", table)
        insert_rows(con, "ingest_errors", _columns([[run_id, source, split, _printable(e.source_key), e.stage,
                                                 _printable(e.message)] for e in errors]))
        insert_rows(con, "ingest_shards", _columns(marks))

    first = batch[0].shard_key + (f" (+{len(batch) - 1} more)" if len(batch) > 1 else "")
    catalog.commit(write, f"ingest {source}/{split}: shards {first} (run {run_id})", kind="shard", run_id=run_id)
    seen.add(ids[keep])


def _columns(rows: list[list]) -> pa.Table:
    """Rows (lists of Python values, in a table's column order) as an Arrow table."""
    return pa.table({f"c{i}": list(column) for i, column in enumerate(zip(*rows))}) if rows else pa.table({})


def _commit_run(catalog: Catalog, source: str, split: str, fingerprint: str, summary: RunSummary) -> None:
    """Replace the split's rows by the run's pending rows and mark the run completed, in one commit
    (the snapshot `ingest_runs.snapshot` names)."""

    def replace(con) -> None:
        con.execute("DELETE FROM samples WHERE source = ? AND split = ?", [source, split])
        con.execute("INSERT INTO samples SELECT * FROM samples_pending WHERE source = ? AND split = ?",
                    [source, split])
        con.execute("DELETE FROM samples_pending WHERE source = ? AND split = ?", [source, split])
        # The errors that describe the new rows are those of the runs that wrote its shards.
        con.execute(
            "DELETE FROM ingest_errors WHERE source = ? AND split = ? AND run_id NOT IN "
            "(SELECT run_id FROM ingest_shards WHERE source = ? AND split = ? AND fingerprint = ?)",
            [source, split, source, split, fingerprint],
        )
        con.execute(
            "UPDATE ingest_runs SET status = 'completed', finished_at = now(), rows = ?, errors = ?, "
            "skipped = ?, snapshot = ? WHERE run_id = ? AND source = ? AND split = ?",
            [summary.rows, summary.errors, summary.skipped, catalog.next_snapshot(), summary.run_id, source, split],
        )

    catalog.commit(replace, f"ingest {source}/{split}: completed, {summary.rows} rows (run {summary.run_id})",
                   kind="run-end", run_id=summary.run_id, source=source, split=split, status="completed")


def _end_run(catalog: Catalog, summary: RunSummary, message: str | None) -> None:
    """Record how an unfinished run ended. Best effort: never hides the error that ended it."""
    try:
        catalog.commit(lambda con: con.execute(
            "UPDATE ingest_runs SET status = ?, finished_at = now(), rows = ?, errors = ?, skipped = ?, "
            "message = ?, snapshot = ? WHERE run_id = ? AND source = ? AND split = ?",
            [summary.status, summary.rows, summary.errors, summary.skipped, message, catalog.next_snapshot(),
             summary.run_id, summary.source, summary.split],
        ), f"ingest {summary.source}/{summary.split}: {summary.status} (run {summary.run_id})", kind="run-end",
            run_id=summary.run_id, source=summary.source, split=summary.split, status=summary.status)
    except Exception:
        pass  # e.g. the disk under the catalog is full: the run stays `running`, which resumes the same


# --- Workers.


def _process(shards: list[Shard], args: tuple, workers: int, ray: str | None = None) -> Iterator[list[ShardResult]]:
    """Results of `process_shard` for every shard, in completion order, in `workers` processes
    (or as tasks on the Ray cluster at `ray`); in batches of those that finished together.

    A shard that faults raises IngestFailed; so does a worker that dies. On any early exit the
    workers are killed (Ray tasks cancelled) at once rather than left to finish on their own.
    """
    source, split = args[:2]
    if ray:
        yield from _run_ray(shards, args, ray)
        return
    if workers <= 1 or len(shards) <= 1:
        for shard in shards:
            yield [_unwrap(source, split, shard.key, lambda: process_shard(shard, *args))]
        return
    queue = iter(shards)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=_worker_context(), initializer=_worker_init,
                               initargs=(os.getpid(),))
    finished_normally = False
    try:
        yield from _run_pool(pool, queue, args, workers)
        finished_normally = True
    except BrokenProcessPool:  # a worker died while no result was awaited (at start-up, say)
        raise IngestFailed(f"{source}/{split}: a worker process died (killed, out of memory, or it could "
                           "not start); nothing of its shards landed; rerun the same command to resume"
                           + _UNGUARDED_SCRIPT) from None
    finally:
        if not finished_normally:
            # Python 3.11 has no public way to stop busy workers; their Process objects are here.
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                proc.kill()
        pool.shutdown(wait=True, cancel_futures=True)


def _run_pool(pool: ProcessPoolExecutor, queue: Iterator[Shard], args: tuple,
              workers: int) -> Iterator[list[ShardResult]]:
    """Keep `workers * 2` shards submitted; yield the results that completed, then raise a fault
    (so the shards that finished before it still land)."""
    source, split = args[:2]
    running = {pool.submit(process_shard, s, *args): s.key for s in itertools.islice(queue, workers * 2)}
    while running:
        finished, _ = wait(running, return_when=FIRST_COMPLETED)
        batch, fault = [], None
        for future in finished:
            key = running.pop(future)
            try:
                batch.append(_unwrap(source, split, key, future.result, in_flight=list(running.values())))
            except IngestFailed as exc:
                fault = fault or exc
        if fault is None:
            for shard in itertools.islice(queue, len(finished)):
                running[pool.submit(process_shard, shard, *args)] = shard.key
        if batch:
            yield batch
        if fault is not None:
            raise fault


def _run_ray(shards: list[Shard], args: tuple, address: str) -> Iterator[list[ShardResult]]:
    """The Ray counterpart of _run_pool: batches of finished shards, then a fault raised after the
    shards that finished before it were yielded (so they land)."""
    source, split = args[:2]
    for finished in run_on_ray(shards, process_shard, args, address):
        batch, fault = [], None
        for key, get in finished:
            try:
                batch.append(_unwrap(source, split, key, get))
            except IngestFailed as exc:
                fault = fault or exc
        if batch:
            yield batch
        if fault is not None:
            raise fault


def _unwrap(source: str, split: str, key: str, get, in_flight: list[str] = ()) -> ShardResult:
    """A shard's result, or IngestFailed naming the shard and the real cause."""
    try:
        return get()
    except ShardFault as exc:
        raise IngestFailed(f"{source}/{split}: {exc}") from None
    except TaskLost as exc:
        raise IngestFailed(f"{source}/{split}: shard {key}: {exc}; nothing of it landed; rerun the same "
                           "command to resume") from None
    except BrokenProcessPool:
        shards = ", ".join([key, *in_flight])
        raise IngestFailed(f"{source}/{split}: a worker process died (killed, out of memory, or it could "
                           f"not start) while working on shard(s) {shards}; nothing of them landed; rerun the "
                           "same command to resume (with fewer --workers if memory ran out)" + _UNGUARDED_SCRIPT) from None


# Workers start from a fork server that imports the caller's main module: a script that calls
# ingest() at its top level makes that import start an ingest too, which Python refuses.
_UNGUARDED_SCRIPT = ("; from a Python script, put the code that calls ingest() under "
                     "`if __name__ == \"__main__\":` (workers import the script again)")


def _worker_context():
    """Workers are forked from a fork server that imported the ingest code once.

    Not plain fork: the main process holds a DuckDB connection and threads that must not be
    copied. Not spawn: every worker of every split would import pyarrow, DuckDB and PIL again
    (~0.5 s of CPU each). The server is started once per process and reused by every pool; it
    exits when this process dies, and its workers with it (see _worker_init).
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["ocrcat.ingest.runner"])
    return ctx


def _start_fork_server() -> None:
    """Start the fork server now, if this platform has one; returns at once (its imports, ~0.5 s,
    run in the server process)."""
    if _worker_context().get_start_method() == "forkserver":
        multiprocessing.forkserver.ensure_running()


def _worker_init(main_pid: int) -> None:
    """Tie a worker's life to the ingest's: SIGKILL, SIGTERM or Ctrl-C of it ends the worker too.

    The worker's parent is the main process (spawn) or the fork server, which exits as soon as the
    main process is gone; either way the kernel kills the worker when its parent dies
    (PR_SET_PDEATHSIG), and a watchdog thread checks both pids as a second line.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the main process decides
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # the kernel kills us when the parent dies
    except (OSError, AttributeError):
        pass  # not Linux: the watchdog below still ends us within half a second
    if not process_alive(main_pid) or os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)
    threading.Thread(target=_watch, args=(parent, main_pid), daemon=True, name="parent-watchdog").start()


def _watch(parent: int, main_pid: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent or not process_alive(main_pid):
            os._exit(1)


def process_shard(shard: Shard, source_name: str, split: str, image_root: str, mode: str,
                  options: dict, limits: caps.Limits, run_id: int) -> ShardResult:
    """Read one shard and turn its records into rows, storing images. Runs in a worker.

    Bad records become `Rejected` in the result; anything that stops the shard itself (an I/O
    error, a full disk, a corrupt file, a reader that breaks) raises ShardFault instead, so that
    nothing of the shard lands.
    """
    source = registry.get(source_name)
    caps.use(limits)
    store = _run_store(image_root, limits.max_image_pixels, run_id)
    result, rows = ShardResult(shard.key), []
    limit = shard.payload.get("_limit")
    try:
        for record in itertools.islice(source.read(shard, options), limit):
            if isinstance(record, Skipped):
                result.skipped += 1
            elif isinstance(record, Rejected):
                result.errors.append(record)
            else:
                row = _to_row(record, source.INFO.kind, source_name, split, store, mode, result)
                if row is not None:
                    row["ingest_run"] = run_id
                    rows.append(row)
        result.rows = pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)
    except Exception as exc:
        raise ShardFault(f"shard {shard.key} ({_shard_file(shard)}) failed: {_cause(exc)}; nothing of "
                         "this shard landed; fix the cause and rerun the same command to resume") from None
    return result


_store: tuple[tuple, ImageStore] | None = None


def _run_store(image_root: str, max_pixels: int, run_id: int) -> ImageStore:
    """One image store per run and process: it remembers the images it verified, so a repeat costs
    a hash. Never longer than a run: a later run's sweep may delete files this one stored."""
    global _store
    key = (image_root, max_pixels, run_id, os.getpid())
    if _store is None or _store[0] != key:
        _store = (key, open_store(image_root, max_pixels))
    return _store[1]


def _shard_file(shard: Shard) -> str:
    p = shard.payload
    return str(p.get("path") or p.get("file") or p.get("root") or "file unknown")


def _cause(exc: BaseException) -> str:
    """The real cause, in one line: OSError's text already names errno and file."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{exc.strerror or os.strerror(exc.errno)} ({errno.errorcode.get(exc.errno, exc.errno)})" + (
            f": {exc.filename}" if exc.filename else "")
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# Built once: json.dumps with options builds a new encoder on every call (a third of its cost here).
_to_json = json.JSONEncoder(ensure_ascii=False).encode
_to_sorted_json = json.JSONEncoder(ensure_ascii=False, sort_keys=True).encode
_image_tokens = functools.lru_cache(maxsize=4096)(vision.count_image_tokens)  # sizes repeat (charts, pages)


def _not_unicode(row: dict) -> str | None:
    """What is wrong when a text column holds a lone surrogate, else None.

    JSON may spell one (an escape like \\ud800 without its pair) and Python keeps it, but it is not
    text: no UTF-8 file, Parquet column or tokenizer takes it. The record is rejected, not mended.
    """
    for column in ("source_key", "text", "response", "messages", "meta"):
        value = row[column]
        if value is None or value.isascii():
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return (f"{column} is not valid Unicode text: a lone surrogate {_printable(value[exc.start])} at "
                    f"character {exc.start} (a JSON escape such as \\ud800 without its pair); record skipped")
    return None


def _placeholders(text: str) -> str | None:
    """What is wrong when a vision row's text does not hold exactly one image placeholder, else None.

    The tokenizer puts the image where `<image>` stands; a transcript or question that contains the
    literal text `<image>` cannot be told apart from it, and training would stop at the row.
    """
    n = text.count(vision.IMAGE_PLACEHOLDER)
    if n == 1:
        return None
    return (f"the text holds {n} {vision.IMAGE_PLACEHOLDER} placeholders; a vision row has exactly one, where its "
            f"image goes (the transcript or question contains the literal text {vision.IMAGE_PLACEHOLDER}, which "
            "the training format reserves); record skipped")


def _printable(text: str) -> str:
    """`text` with lone surrogates written \\udXXX, so that it can be stored (keys, messages)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _to_row(record: Sample, kind: str, source: str, split: str, store: ImageStore, mode: str,
            result: ShardResult) -> dict | None:
    """The catalog row of a sample; None (and an error) when its text is not valid Unicode or, for a
    vision sample, its image is unusable."""
    row = {
        "sample_id": None,  # below, once the key is known to be text
        "source": source,
        "split": split,
        "source_key": record.source_key,
        "kind": kind,
        "text": record.text,
        "response": record.response,
        "messages": _to_json(record.messages) if record.messages is not None else None,
        "meta": _to_sorted_json(record.meta or {}),
    }
    why = _not_unicode(row)
    if why is None and kind == "vision":
        why = _placeholders(record.text)
    if why is not None:
        result.errors.append(Rejected(record.source_key, "map", why))  # the key is made storable on commit
        return None
    row["sample_id"] = sample_id(source, split, record.source_key)
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
            image_tokens=_image_tokens(image.width, image.height, mode),
        )
    return row
