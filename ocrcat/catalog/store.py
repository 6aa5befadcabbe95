"""The catalog: one directory with `catalog.duckdb` and the image store `images/`."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import duckdb

from ocrcat import vision
from ocrcat.catalog.images import ImageStore
from ocrcat.catalog.schema import ADDED_COLUMNS, DDL, SCHEMA_VERSION

DEFAULT_DIR = "ocrcat-data"
DB_NAME = "catalog.duckdb"


class CatalogError(RuntimeError):
    """Something about the catalog the user has to fix; the message says what."""


class CatalogBusy(CatalogError):
    """Another process holds the catalog open for writing."""


def resolve_dir(path: str | os.PathLike | None = None) -> Path:
    """Catalog location: the explicit path, else $OCRCAT_HOME, else ./ocrcat-data."""
    return Path(path or os.environ.get("OCRCAT_HOME") or DEFAULT_DIR).expanduser()


def sample_id(source: str, split: str, source_key: str) -> int:
    """Stable 64-bit id of a sample: the same on every machine, Python and DuckDB version."""
    digest = hashlib.blake2b(f"{source}\x1f{split}\x1f{source_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class Catalog:
    """An open catalog. Use as a context manager; `read_only=True` for queries.

    >>> with Catalog("ocrcat-data", read_only=True) as cat:
    ...     cat.con.sql("SELECT source, count(*) FROM samples GROUP BY 1").show()
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        *,
        read_only: bool = False,
        vision_mode: str | None = None,
    ):
        self.dir = resolve_dir(path)
        self.db_path = self.dir / DB_NAME
        self.read_only = read_only
        if self.dir.exists() and not self.dir.is_dir():
            raise CatalogError(f"the catalog path {self.dir} is a file, not a folder; give --catalog (or "
                               "$OCRCAT_HOME) a folder, which is created if missing")
        if read_only and not self.db_path.exists():
            raise CatalogError(
                f"no catalog at {self.dir}: ingest something first (ocrcat ingest …) "
                "or point --catalog / $OCRCAT_HOME at an existing one"
            )
        if not read_only:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CatalogError(f"cannot create the catalog folder {self.dir}: {exc.strerror}") from None
        self.con = _connect(self.db_path, read_only)
        if not read_only:
            for statement in DDL:
                self.con.execute(statement)
            self._add_missing_columns()
            self._init_info(vision_mode)
        self.vision_mode = self.info("vision_mode") or vision.DEFAULT_MODE
        if vision_mode and vision_mode != self.vision_mode:
            raise CatalogError(
                f"catalog {self.dir} uses vision mode {self.vision_mode!r}, not {vision_mode!r}; "
                "a catalog has one mode (its image_tokens depend on it): use another --catalog"
            )
        self.images = ImageStore(self.dir)

    def _init_info(self, vision_mode: str | None) -> None:
        if self.info("vision_mode") is None:
            mode = vision.get_mode(vision_mode or vision.DEFAULT_MODE).name
            self.set_info("vision_mode", mode)
            self.set_info("schema_version", str(SCHEMA_VERSION))

    def _add_missing_columns(self) -> None:
        added = False
        for table, column, type_ in ADDED_COLUMNS:
            if not self.con.execute("SELECT 1 FROM information_schema.columns WHERE table_name = ? AND "
                                    "column_name = ?", [table, column]).fetchone():
                self.con.execute(f"ALTER TABLE {table} ADD COLUMN {column} {type_}")
                added = True
        if added:
            self.con.execute("CHECKPOINT")  # DuckDB 1.5 cannot replay this ALTER from its WAL read-only

    def info(self, key: str) -> str | None:
        row = self.con.execute("SELECT value FROM catalog_info WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    def set_info(self, key: str, value: str) -> None:
        self.con.execute("INSERT OR REPLACE INTO catalog_info VALUES (?, ?)", [key, value])

    def count_image_tokens(self, width: int, height: int) -> int:
        return vision.count_image_tokens(width, height, self.vision_mode)

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _connect(db_path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    try:
        return duckdb.connect(str(db_path), read_only=read_only)
    except duckdb.IOException as exc:
        message = str(exc)
        if "lock" not in message.lower():
            raise CatalogError(f"cannot open {db_path}: {message}") from None
        pid = re.search(r"PID (\d+)", message)
        holder = f" (process {pid.group(1)})" if pid else ""
        raise CatalogBusy(
            f"catalog {db_path.parent} is in use by another ocrcat process{holder}; "
            "wait for it to finish (an ingest holds the catalog until it ends) and try again"
        ) from None
