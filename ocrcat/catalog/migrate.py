"""Convert a catalog of the first version (one `catalog.duckdb` file) into a lake, in place.

Rows, runs, errors, resume marks and mixtures are copied table by table (columns by name: the
lake's tables may have more of them), the mixture views are recreated from their SQL, and the
image store is left exactly as it is: nothing is re-ingested. It is one commit, so an interrupted
migration leaves an empty lake and the old file, and running it again starts over. At the end the
old file is renamed `catalog.duckdb.migrated` (delete it once you are satisfied).
"""

from __future__ import annotations

import os

import duckdb

from ocrcat.catalog.schema import TABLES
from ocrcat.catalog.store import LAKE, LEGACY_NAME, Catalog, CatalogError, resolve_dir

OLD = "legacy"


def migrate(path: str | os.PathLike | None = None) -> dict[str, int]:
    """Turn `<catalog>/catalog.duckdb` into the lake; returns rows copied per table."""
    directory = resolve_dir(path)
    legacy = directory / LEGACY_NAME
    if not legacy.exists():
        raise CatalogError(f"no {LEGACY_NAME} in {directory}: nothing to migrate"
                           + (" (it is a lake already)" if (directory / "catalog.sqlite").exists() else ""))
    try:
        with duckdb.connect(str(legacy), read_only=True) as old:
            mode = old.execute("SELECT value FROM catalog_info WHERE key = 'vision_mode'").fetchone()
    except duckdb.Error as exc:
        raise CatalogError(f"cannot read {legacy}: {str(exc).splitlines()[0]} (is an old ocrcat still using it?)") from None
    with Catalog(directory, vision_mode=mode[0] if mode else None, _migrating=True) as cat:
        con = cat.con
        if con.execute("SELECT (SELECT count(*) FROM samples) + (SELECT count(*) FROM ingest_runs)").fetchone()[0]:
            raise CatalogError(f"the lake in {directory} already holds rows; migrate only into a new lake")
        con.execute(f"ATTACH '{legacy.resolve().as_posix()}' AS {OLD} (READ_ONLY)")
        try:
            old_tables = {name for (name,) in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = ?", [OLD]).fetchall()}
            views = con.execute("SELECT view_name, sql FROM duckdb_views() WHERE database_name = ? AND NOT internal "
                                "ORDER BY view_name", [OLD]).fetchall()

            def copy(con) -> dict[str, int]:
                counts = {}
                for table in TABLES:
                    if table not in old_tables:
                        continue
                    con.execute(f"DELETE FROM {LAKE}.{table}")
                    counts[table] = con.execute(
                        f"INSERT INTO {LAKE}.{table} BY NAME SELECT * FROM {OLD}.{table}").fetchone()[0]
                for name, sql in views:
                    body = sql.strip().rstrip(";").split(" AS ", 1)[1]
                    con.execute(f'CREATE OR REPLACE VIEW {LAKE}.main."{name}" AS {body}')
                return counts

            counts = cat.commit(copy, f"migrate from {LEGACY_NAME}", kind="migrate")
            for table, n in counts.items():
                if con.execute(f"SELECT count(*) FROM {LAKE}.{table}").fetchone()[0] != n or \
                        con.execute(f"SELECT count(*) FROM {OLD}.{table}").fetchone()[0] != n:
                    raise CatalogError(f"migration check failed: {table} has not the same rows in both catalogs")
        finally:
            con.execute(f"DETACH {OLD}")
    os.replace(legacy, legacy.with_name(LEGACY_NAME + ".migrated"))
    return counts
