"""Snapshots of the lake: history, rollback, compaction, and which images a kept snapshot needs.

Every commit is a snapshot (DuckLake numbers them 0, 1, 2, …) carrying a message and, in its extra
info, what kind of commit it was: `shard` (rows of one shard of a running ingest), `run-start`,
`run-end`, `mixture`, `rollback`, `compact`, `migrate`. Shard snapshots are scaffolding: once their
run has ended, `compact` expires them, so `history` lists the states a user can name.
"""

from __future__ import annotations

import fcntl
import json
import tempfile

from ocrcat.catalog.images import ImageKeys
from ocrcat.catalog.schema import TABLES
from ocrcat.catalog.sqltext import sql_string
from ocrcat.catalog.store import LAKE, Catalog, CatalogBusy, CatalogError, insert_rows, retry_lost_races

METADATA = f"__ducklake_metadata_{LAKE}"  # DuckLake's own tables, in catalog.sqlite


def metadata_table(catalog: Catalog, table: str) -> str:
    """A DuckLake metadata table: in catalog.sqlite, or in the shared catalog's PostgreSQL schema."""
    schema = f'"{catalog.shared["schema"]}".' if catalog.shared else ""
    return f"{METADATA}.{schema}{table}"


def history(catalog: Catalog, *, shards: bool = False, limit: int | None = None) -> list[dict]:
    """Snapshots, newest first: id, time (UTC), message, what changed, the commit's extra facts.
    Shard commits of ingests are left out unless `shards`."""
    rows = catalog.con.execute(
        f"""SELECT snapshot_id, strftime(snapshot_time AT TIME ZONE 'UTC', '%Y-%m-%d %H:%M:%S'),
                   coalesce(commit_message, ''), CAST(changes AS VARCHAR), coalesce(commit_extra_info, '{{}}')
            FROM {LAKE}.snapshots() ORDER BY snapshot_id DESC"""
    ).fetchall()
    out = []
    for snapshot, time, message, changes, extra in rows:
        try:
            facts = json.loads(extra)
        except ValueError:
            facts = {}
        if not shards and facts.get("kind") == "shard":
            continue
        out.append({"snapshot": snapshot, "time": time, "message": message or _describe(changes),
                    "changes": changes, "kind": facts.get("kind", "")} | {"extra": facts})
        if limit is not None and len(out) >= limit:
            break
    return out


def stable_snapshot(catalog: Catalog) -> int:
    """The newest snapshot at or before the one read now that is not a shard commit. Shard commits
    change only the pending rows of running ingests, so `samples` and the mixtures read the same
    there; and unlike a shard snapshot it is never expired by `compact`: the id to record."""
    return catalog.con.execute(
        f"""SELECT max(snapshot_id) FROM {LAKE}.snapshots()
            WHERE snapshot_id <= ? AND coalesce(json_extract_string(commit_extra_info, '$.kind'), '') <> 'shard'""",
        [catalog.snapshot()]).fetchone()[0]


def _describe(changes: str) -> str:
    """A message for commits that did not set one (schema creation, `ocrcat sql --write`)."""
    return changes.strip("{}") or "(no change recorded)"


def _check_snapshot(catalog: Catalog, snapshot: int) -> None:
    known = catalog.con.execute(f"SELECT count(*) FROM {LAKE}.snapshots() WHERE snapshot_id = ?",
                                [snapshot]).fetchone()[0]
    if not known:
        raise CatalogError(f"catalog {catalog.dir} has no snapshot {snapshot} (expired by compact, or never made); "
                           "list them with `ocrcat history`")
    first = first_whole_snapshot(catalog)
    if snapshot < first:
        raise CatalogError(f"snapshot {snapshot} predates the catalog's tables (the lake was still being laid "
                           f"out); the earliest you can go back to is snapshot {first}")


def first_whole_snapshot(catalog: Catalog) -> int:
    """The first snapshot holding every table of the catalog (the lake's first ones predate them)."""
    tables = ", ".join(sql_string(t) for t in TABLES)
    return catalog.con.execute(
        f"SELECT max(created) FROM (SELECT min(begin_snapshot) AS created FROM {metadata_table(catalog, 'ducklake_table')} "
        f"WHERE table_name IN ({tables}) GROUP BY table_name)").fetchone()[0]


def running_ingests(catalog: Catalog) -> list[str]:
    """Source/split pairs whose ingest lock is held by a live process right now."""
    held = []
    for path in sorted((catalog.dir / "locks").glob("ingest-*.lock")):
        with open(path, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(f, fcntl.LOCK_UN)
            except BlockingIOError:
                held.append(path.stem.removeprefix("ingest-"))
    return held


def rollback(catalog: Catalog, snapshot: int) -> int:
    """Make the catalog's current state equal to `snapshot` again, as one new snapshot (so a
    rollback can itself be rolled back). Rows, runs, errors, resume marks, mixtures and views all
    return; image files were never deleted while a kept snapshot needed them. Returns the
    snapshot the rollback made."""
    _check_snapshot(catalog, snapshot)
    if snapshot >= catalog.snapshot():
        raise CatalogError(f"snapshot {snapshot} is the current state or newer; nothing to roll back")
    busy = running_ingests(catalog)
    if busy:
        raise CatalogBusy(f"ingests are running ({', '.join(busy)}); roll back when they have ended")

    def restore(con):
        # Everything of snapshot N is read before anything is deleted: inside a transaction that
        # deleted rows from a data file, DuckLake hides the file's rows deleted since N from a
        # time-travel read as well (and compaction puts several runs' rows in one file), so
        # "DELETE, then INSERT … AT (VERSION => N)" could put back nothing at all.
        def then(table: str) -> str:
            return f"(SELECT * FROM {table} AT (VERSION => {int(snapshot)}))"

        then_rows = {table: con.execute(f"SELECT * FROM {then(table)}").to_arrow_table()
                     for table in TABLES if table not in BIG_TABLES}
        for table in BIG_TABLES:
            # Only the difference moves (a sample's row is fixed by (sample_id, ingest_run)); it may be
            # large, so it waits in Parquet files on disk rather than in memory.
            con.execute(f"COPY (SELECT sample_id, ingest_run FROM {then(table)}) TO {_scratch(work, table, 'keys')}")
            con.execute(f"""COPY (SELECT o.* FROM {then(table)} o WHERE NOT EXISTS (SELECT 1 FROM {table} s
                                  WHERE o.sample_id = s.sample_id AND o.ingest_run = s.ingest_run))
                            TO {_scratch(work, table, 'back')}""")
        for table in TABLES:
            if table in BIG_TABLES:
                con.execute(f"""DELETE FROM {table} s WHERE NOT EXISTS (
                    SELECT 1 FROM {_scratch(work, table, 'keys')} o
                    WHERE o.sample_id = s.sample_id AND o.ingest_run = s.ingest_run)""")
                con.execute(f"INSERT INTO {table} SELECT * FROM {_scratch(work, table, 'back')}")
            else:
                con.execute(f"DELETE FROM {table}")
                insert_rows(con, table, then_rows[table])
        _restore_views(con, snapshot, metadata_table(catalog, "ducklake_view"))
        return catalog.next_snapshot()

    with tempfile.TemporaryDirectory(prefix=".rollback-", dir=catalog.dir) as work:
        return catalog.commit(restore, f"rollback to snapshot {snapshot}", kind="rollback", to=snapshot)


BIG_TABLES = ("samples", "samples_pending")


def _scratch(folder: str, table: str, part: str) -> str:
    """A Parquet file of a rollback's scratch folder, as a SQL string."""
    return sql_string(f"{folder}/{table}.{part}.parquet")


def _restore_views(con, snapshot: int, view_table: str) -> None:
    """Views as they were at `snapshot` (DuckLake keeps every view's SQL with its life span)."""
    then = dict(con.execute(
        f"""SELECT view_name, sql FROM {view_table}
            WHERE begin_snapshot <= ? AND (end_snapshot IS NULL OR end_snapshot > ?)""",
        [snapshot, snapshot]).fetchall())
    now = dict(con.execute("SELECT view_name, sql FROM duckdb_views() WHERE database_name = ? AND NOT internal",
                           [LAKE]).fetchall())
    for name in now:
        if name not in then:
            con.execute(f'DROP VIEW "{name}"')
    for name, sql in then.items():
        if name not in now or _view_body(now[name]) != _view_body(sql):
            con.execute(f'CREATE OR REPLACE VIEW "{name}" AS {sql}')


def _view_body(sql: str) -> str:
    """duckdb_views() gives `CREATE VIEW name AS body;`, DuckLake stores the body: compare bodies."""
    text = sql.strip().rstrip(";")
    if text.upper().startswith("CREATE"):
        text = text.split(" AS ", 1)[1] if " AS " in text else text
    return " ".join(text.split())


def referenced_images(catalog: Catalog, source: str | None = None) -> ImageKeys:
    """The images that some kept (unexpired) snapshot's rows point to: every row of the oldest
    kept snapshot, plus every row inserted since; and the pending rows of unfinished runs (a
    resume needs them). A file outside this set can be swept. Distinct in DuckDB, which spills
    to disk where needed; Python holds 8 bytes an image (ImageKeys)."""
    con = catalog.con
    first, last = con.execute(f"SELECT min(snapshot_id), max(snapshot_id) FROM {LAKE}.snapshots()").fetchone()
    where = "image_path IS NOT NULL" + (" AND source = ?" if source else "")
    params = [source] if source else []
    oldest = f"AT (VERSION => {max(int(first), first_whole_snapshot(catalog))})"
    keys = con.execute(
        f"""WITH paths AS (
                SELECT image_path FROM samples {oldest} WHERE {where}
                UNION ALL SELECT image_path FROM samples_pending {oldest} WHERE {where}
                UNION ALL SELECT image_path FROM ducklake_table_insertions('{LAKE}', 'main', 'samples', ?, ?) WHERE {where}
                UNION ALL SELECT image_path FROM ducklake_table_insertions('{LAKE}', 'main', 'samples_pending', ?, ?)
                WHERE {where}
                UNION ALL SELECT image_path FROM samples WHERE {where}
                UNION ALL SELECT image_path FROM samples_pending WHERE {where})
            SELECT DISTINCT try_cast('0x' || left(parse_filename(image_path), 16) AS UBIGINT) AS key FROM paths
            WHERE key IS NOT NULL""",
        params * 2 + [first, last] + params + [first, last] + params * 3,
    ).fetchnumpy()["key"]
    return ImageKeys(keys)


def sweep_images(catalog: Catalog, source: str | None = None) -> int:
    """Delete image files (of `source`, or all) that no kept snapshot references, and leftovers.
    Sources being ingested right now are left alone: their new files have no committed row yet."""
    sources = [source] if source else catalog.images.sources()
    busy = {pair.split("-", 1)[0] for pair in running_ingests(catalog)}
    sources = [s for s in sources if s not in busy]
    if not sources:
        return 0
    # One source at a time, with the keys of its own rows: an image stored under two sources is
    # judged in each by that source's rows, and memory holds one source's keys.
    if not catalog.shared:
        return sum(catalog.images.sweep(s, referenced_images(catalog, s)) for s in sources)
    # Shared: a run on another machine holds no lock visible here; its `running` row is. Its source
    # is not swept at all: its workers store new images before its rows commit, and reuse images
    # already stored, however old, that its rows will point to. Of other sources, objects written
    # since the oldest running run started (less a margin for clock skew) are kept. A killed run that
    # is never resumed holds this back (the next run of its split marks it interrupted).
    running = {source for (source,) in catalog.con.execute(
        "SELECT DISTINCT source FROM ingest_runs WHERE status = 'running'").fetchall()}
    since = catalog.con.execute(  # started_at is a local TIMESTAMP: as epoch seconds, less 10 minutes
        "SELECT epoch(min(started_at) AT TIME ZONE current_setting('TimeZone')) - 600 FROM ingest_runs "
        "WHERE status = 'running'").fetchone()[0]
    return sum(catalog.images.sweep(s, referenced_images(catalog, s), newer_kept=since)
               for s in sources if s not in running)


def compact(catalog: Catalog, *, older_than_snapshot: int | None = None, source: str | None = None,
            flush_inlined: bool = True) -> dict:
    """Small-file hygiene: expire the shard snapshots of ended runs (and, if asked, every snapshot
    older than `older_than_snapshot`), merge small Parquet files, flush rows DuckLake kept inline
    in the metadata (unless not `flush_inlined`), delete files no kept snapshot needs, and sweep
    unreferenced images: of `source` only when given (an ingest sweeps its own source: listing every
    source's files would grow with the whole catalog), else of all.

    An ingest leaves inlined rows where they are: they are the few rows of its bookkeeping commits
    (run start, shard marks, small error batches), and flushing them wrote new small Parquet files
    on every run, to be merged again (about half of an ingest's compaction). `ocrcat compact`
    flushes them.

    Runs while holding the commit lock: no ocrcat writer has files in flight meanwhile, so
    deleting unreferenced files cannot touch a commit being prepared."""
    catalog._writable()
    con = catalog.con
    files_before = _file_count(catalog)
    with catalog.commit_lock():
        ended = {run for (run,) in con.execute("SELECT run_id FROM ingest_runs WHERE status <> 'running'").fetchall()}
        expire, current = [], catalog.snapshot()
        for snap in history(catalog, shards=True):
            if snap["snapshot"] == current:
                continue  # the current state is never expired
            if snap["kind"] == "shard" and snap["extra"].get("run_id") in ended:
                expire.append(snap["snapshot"])
            elif older_than_snapshot is not None and snap["snapshot"] < older_than_snapshot:
                expire.append(snap["snapshot"])
        # Each SELECT is fetched: DuckDB runs it as its rows are fetched; unfetched, the call does nothing.
        flushed = 0
        if flush_inlined:  # a table whose rows were kept inline gets a data file: the count can rise
            flushed = catalog.commit(lambda con: con.execute(
                f"SELECT count(*) FILTER (rows_flushed > 0) FROM ducklake_flush_inlined_data('{LAKE}')").fetchone()[0],
                "compact", locked=True, kind="compact")
        catalog.commit(lambda con: con.execute(f"SELECT count(*) FROM ducklake_merge_adjacent_files('{LAKE}')").fetchall(),
                       "compact", locked=True, kind="compact")
        if expire:
            retry_lost_races(lambda: con.execute(
                f"SELECT count(*) FROM ducklake_expire_snapshots('{LAKE}', versions => ?)", [expire]).fetchall())
        retry_lost_races(lambda: con.execute(
            f"SELECT count(*) FROM ducklake_cleanup_old_files('{LAKE}', cleanup_all => true)").fetchall())
        # A file no snapshot lists may be another machine's commit in flight when the catalog is
        # shared (the commit lock is per machine): there, only files a day old are orphans.
        orphans = "older_than => now() - INTERVAL 1 DAY" if catalog.shared else "cleanup_all => true"
        retry_lost_races(lambda: con.execute(
            f"SELECT count(*) FROM ducklake_delete_orphaned_files('{LAKE}', {orphans})").fetchall())
        swept = sweep_images(catalog, source)
    return {"expired_snapshots": len(expire), "data_files_before": files_before,
            "data_files_after": _file_count(catalog), "inlined_tables_flushed": flushed, "images_swept": swept}


def _file_count(catalog: Catalog) -> int:
    if catalog.shared:  # object storage: count the lake's live files in its metadata instead of listing
        return catalog.con.execute(f"SELECT count(*) FROM {metadata_table(catalog, 'ducklake_data_file')} "
                                   "WHERE end_snapshot IS NULL").fetchone()[0]
    return sum(1 for p in catalog.data_path.rglob("*.parquet")) if catalog.data_path.is_dir() else 0
