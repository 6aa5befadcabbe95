"""`ocrcat sql` without `--write`: a query that can read the catalog and nothing can change anything.

DuckDB's own switches do most of the work, set on the connection once the catalog is open:
- `enable_external_access = false`: no file outside the allowed list can be read or written
  (COPY … TO, EXPORT DATABASE, read_csv('/etc/…')), no ATTACH of a file, no extension INSTALL or
  LOAD, no network;
- `allowed_paths` / `allowed_directories`: the only exceptions, the files and folders the user
  named with `--allow` (and the files the catalog itself is read from, where it has any);
- `autoinstall/autoload_known_extensions = false`: a function of an unloaded extension stays unknown;
- `lock_configuration = true`: no SET, RESET or PRAGMA can undo any of the above;
- the catalog itself is opened read-only, so its tables cannot change.

What those switches cannot stop is a write *into* an allowed path (DuckDB does not tell reads from
writes there): `COPY … TO` an allowed folder, `EXPLAIN ANALYZE` of such a COPY, or a DuckLake
maintenance function that deletes or writes data files before it fails on the read-only metadata.
So, second, every statement must be a query: DuckDB's own parser classifies them
(`extract_statements`), and anything but SELECT (which covers FROM, WITH, VALUES, DESCRIBE, SHOW,
SUMMARIZE and PRAGMA table_info) is refused before anything runs; and `--allow` may not name the
catalog folder or anything inside it.

One statement per call: DuckDB would run several and return only the last one's result, so the
others' would vanish without a word. With `--write` (`write_query`) several statements run as one
script (BEGIN; …; COMMIT), but only the last may be a query, as only its result is shown.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import duckdb

from ocrcat.catalog import Catalog, CatalogError
from ocrcat.catalog.snapshots import metadata_table
from ocrcat.catalog.sqltext import bind_json_arrows

QUERY_TYPES = {duckdb.StatementType.SELECT}


class Refused(CatalogError):
    """A statement the read-only `ocrcat sql` does not run; nothing was executed."""


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple]


def read_only_query(catalog: str | os.PathLike | None, sql: str, allow: Sequence[str | os.PathLike] = ()) -> QueryResult:
    """Run `sql` on the catalog through a connection that cannot write anything anywhere.

    `allow`: files or folders the query may read besides the catalog (Parquet exports, CSV files);
    they must lie outside the catalog folder. The catalog is opened by this call and closed before
    it returns. Raises Refused for a statement that is not a query,
    CatalogError for a path it may not read, duckdb.Error for anything else DuckDB rejects.
    """
    with tempfile.TemporaryDirectory(prefix="ocrcat-sql-") as spill, Catalog(catalog, read_only=True) as cat:
        con = cat.con
        # One transaction, so one snapshot: the data files listed as readable below are exactly
        # those the query reads, whatever an ingest commits meanwhile.
        con.execute("BEGIN TRANSACTION")
        files, folders = _readable(cat, allow)
        con.execute("SET temp_directory = ?", [spill])  # a big sort spills here, never into the catalog
        con.execute("SET allowed_paths = ?", [files])
        con.execute("SET allowed_directories = ?", [folders])
        con.execute("SET autoinstall_known_extensions = false")
        con.execute("SET autoload_known_extensions = false")
        con.execute("SET enable_external_access = false")  # one-way: DuckDB never turns it back on
        con.execute("SET lock_configuration = true")
        sql = bind_json_arrows(sql)  # `a AND meta->>'k' = 'v'` as users mean it (catalog/sqltext.py)
        statements = con.extract_statements(sql)
        if not statements:
            raise CatalogError("no SQL statement given, e.g. ocrcat sql \"SELECT count(*) FROM samples\"")
        for statement in statements:
            if statement.type not in QUERY_TYPES:
                raise Refused(
                    f"ocrcat sql is read-only without --write: it runs queries only (SELECT, FROM, WITH, "
                    f"DESCRIBE, SHOW, SUMMARIZE); refused a {statement.type.name} statement before running "
                    "anything, so nothing changed"
                )
        if len(statements) > 1:
            raise Refused(f"ocrcat sql runs one query at a time and got {len(statements)} (only the last result "
                          "would be shown); run each with its own ocrcat sql call")
        try:
            return _result(con.execute(sql))
        except duckdb.PermissionException as exc:
            raise CatalogError(_permission_message(exc)) from None


def write_query(catalog: str | os.PathLike | None, sql: str) -> QueryResult:
    """Run `sql` (`ocrcat sql --write`) on the catalog opened for writing: one statement, or a
    script of several run in order (BEGIN; …; COMMIT), whose last statement's result is returned.
    A query before the last is refused before anything runs: its result would never be shown.
    """
    with Catalog(catalog, create=False) as cat:
        sql = bind_json_arrows(sql)
        statements = cat.con.extract_statements(sql)
        hidden = [i for i, s in enumerate(statements[:-1], 1) if s.type in QUERY_TYPES]
        if hidden:
            raise Refused(f"statement {hidden[0]} of {len(statements)} is a query whose result would not be shown "
                          "(only the last statement's is); run it with its own ocrcat sql call, nothing ran")
        result = cat.con.execute(sql)  # None for an empty script
        return _result(result) if result is not None else QueryResult([], [])


def _result(result: duckdb.DuckDBPyConnection) -> QueryResult:
    columns = [d[0] for d in result.description] if result.description else []
    return QueryResult(columns, result.fetchall() if columns else [])


def _readable(cat: Catalog, allow: Sequence[str | os.PathLike]) -> tuple[list[str], list[str]]:
    """(files, folders) the query may read: the --allow paths, checked, plus the catalog's own files."""
    root = Path(os.path.realpath(cat.dir))
    files, folders = list(_catalog_files(cat)), []
    for given in allow:
        path = Path(os.path.realpath(given))
        if not path.exists():
            raise CatalogError(f"--allow {given}: no such file or folder")
        if path == root or root in path.parents or path in root.parents:
            raise CatalogError(
                f"--allow {given} is or holds the catalog folder {cat.dir}; the catalog is read through its "
                "tables: allow only paths outside it (an export folder, a file)"
            )
        # DuckDB compares the path as the query spells it (made absolute, symlinks kept): allow both.
        for spelling in dict.fromkeys([os.path.abspath(given), str(path)]):
            if path.is_dir():
                folders.append(spelling.rstrip(os.sep) + os.sep)  # the separator: /data/x must not allow /data/xy
            else:
                files.append(spelling)
    return files, folders


def _catalog_files(cat: Catalog) -> list[str]:
    """Files the catalog's tables are read from while external access is off: exactly the Parquet
    data and delete files the lake records, those of older kept snapshots too (what `AT (VERSION
    => N)` reads), never the folder, which would let DuckLake's maintenance functions write and
    delete in it. The metadata file (catalog.sqlite) is opened by SQLite itself, not through
    DuckDB's file checks. Paths are resolved as DuckLake resolves them: a relative file path under
    its table's, the table's under its schema's, the schema's under the data path."""
    data_path = (cat.shared["data"] + "/lake/") if cat.shared else cat.data_path.resolve().as_posix() + "/"

    def under(parent: str, path: str, relative: str) -> str:
        return f"CASE WHEN {relative} THEN {parent} || {path} ELSE {path} END"

    schema = under("?", "s.path", "s.path_is_relative")
    table = under(schema, "t.path", "t.path_is_relative")
    rows = cat.con.execute(f"""
        WITH tables AS (SELECT DISTINCT table_id, schema_id, path, path_is_relative FROM {metadata_table(cat, 'ducklake_table')}),
             files AS (SELECT table_id, path, path_is_relative FROM {metadata_table(cat, 'ducklake_data_file')}
                       UNION ALL SELECT table_id, path, path_is_relative FROM {metadata_table(cat, 'ducklake_delete_file')})
        SELECT DISTINCT {under(table, "f.path", "f.path_is_relative")}
        FROM files f JOIN tables t USING (table_id)
             JOIN (SELECT DISTINCT schema_id, path, path_is_relative FROM {metadata_table(cat, 'ducklake_schema')}) s USING (schema_id)
    """, [data_path]).fetchall()
    return [path for (path,) in rows if path]


def _permission_message(exc: duckdb.PermissionException) -> str:
    path = re.search(r'"([^"]*)"', str(exc))
    what = f"{path.group(1)} is not readable here" if path else str(exc).splitlines()[0]
    return (f"{what}: ocrcat sql reads only the catalog and the files or folders given with --allow PATH, "
            "and writes nothing (use --write to change the catalog, ocrcat export for files)")
