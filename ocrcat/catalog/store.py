"""The catalog: one directory holding a DuckLake lake and the image store `images/`.

    <catalog>/catalog.sqlite   table metadata and snapshots (SQLite, no server)
    <catalog>/lake/            table data, plain Parquet files
    <catalog>/images/          the content-addressed image store
    <catalog>/locks/           lock files of running writers (empty files)

The lake is attached as `lake` and made the connection's default catalog, so `SELECT … FROM samples`
works as with a plain DuckDB file. Readers attach read-only and see the last committed snapshot,
whatever writers do meanwhile; several writers may commit, each commit is a snapshot.

Writers on one machine take a short lock (`locks/commit.lock`) around each commit: SQLite lets one
writer commit at a time and fails the others at once ("database is locked") instead of waiting,
and DuckLake fails a commit that raced a delete from the same table; taking turns avoids both.
The lock is held only while a commit runs (milliseconds to seconds), never by readers, and the
kernel drops it when a process dies. Commits that still fail on a conflict (a writer on another
machine, or one that is not ocrcat) are retried from the start.

A shared catalog (several machines) is named by a TOML file instead of a folder:

    metadata = "postgres:host=db.internal dbname=ocrcat"   # libpq; password from PG* / ~/.pgpass
    data = "s3://bucket/ocrcat"        # lake data under <data>/lake/, images under <data>/images/
    work = "/var/tmp/ocrcat-work"      # optional, local: locks, staging, caches (default: next to the file)
    metadata_schema = "ocrcat"         # optional: several catalogs in one PostgreSQL database

Credentials never go in it (a `password=` is refused): libpq reads PG* variables and ~/.pgpass,
S3 access comes from the AWS_* variables (ocrcat.catalog.objects). The commit lock above is
per machine; between machines, DuckLake's own conflict detection fails the later of two racing
commits and `commit` runs it again (no lock server is needed; PostgreSQL serialises the metadata).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import duckdb
import pyarrow as pa

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from ocrcat import vision
from ocrcat.catalog import extensions
from ocrcat.catalog.images import open_store
from ocrcat.catalog.schema import DDL, SCHEMA_VERSION, TABLES
from ocrcat.catalog.sqltext import sql_string

DEFAULT_DIR = "ocrcat-data"
METADATA_NAME = "catalog.sqlite"
DATA_DIR = "lake"
LEGACY_NAME = "catalog.duckdb"  # the single-file catalog of the first version; `ocrcat migrate` converts it
LAKE = "lake"  # the name the lake is attached under
AUTHOR = "ocrcat"
COMMIT_RETRIES = 20
PARQUET_OPTIONS = {"parquet_row_group_size": "8192"}

T = TypeVar("T")


class CatalogError(RuntimeError):
    """Something about the catalog the user has to fix; the message says what."""


class CatalogBusy(CatalogError):
    """Another process is doing the same write (the same source and split)."""


def resolve_dir(path: str | os.PathLike | None = None) -> Path:
    """Catalog location: the explicit path, else $OCRCAT_HOME, else ./ocrcat-data; for a shared
    catalog's TOML file, its local work folder."""
    return locate(path)[0]


def locate(path: str | os.PathLike | None = None) -> tuple[Path, dict | None]:
    """(local folder, shared-catalog settings or None) of a catalog folder or TOML file."""
    given = Path(path or os.environ.get("OCRCAT_HOME") or DEFAULT_DIR).expanduser()
    if given.suffix != ".toml":
        return given, None
    try:
        settings = tomllib.loads(given.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CatalogError(f"cannot read the catalog file {given}: {exc}") from None
    metadata, data = settings.get("metadata"), settings.get("data")
    if not isinstance(metadata, str) or not metadata.startswith("postgres:") or not isinstance(data, str) \
            or "://" not in data:
        raise CatalogError(f"{given} must set metadata = \"postgres:host=… dbname=…\" and "
                           "data = \"s3://bucket/prefix\"")
    if "password" in metadata.lower():
        raise CatalogError(f"{given} holds a password: remove it and give it to libpq through PGPASSWORD or "
                           "~/.pgpass (credentials are never stored in a catalog file)")
    work = Path(settings.get("work") or given.with_suffix(".work")).expanduser()
    return work, {"metadata": metadata, "data": data.rstrip("/"),
                  "schema": str(settings.get("metadata_schema", "ocrcat")), "file": str(given)}


def sample_id(source: str, split: str, source_key: str) -> int:
    """Stable 64-bit id of a sample: the same on every machine, Python and DuckDB version."""
    digest = hashlib.blake2b(f"{source}\x1f{split}\x1f{source_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _unfinished(where) -> CatalogError:
    return CatalogError(f"the catalog at {where} is not laid out yet: it is being created, or its creation was "
                        "interrupted; wait, or run the ingest (or ocrcat init) again")


class Catalog:
    """An open catalog. Use as a context manager; `read_only=True` for queries; `at=N` reads
    snapshot N (read-only) as it was when committed; `create=False` refuses a path that holds no
    catalog (what every command but init, ingest and migrate wants: a mistyped path is an error).

    >>> with Catalog("ocrcat-data", read_only=True) as cat:
    ...     cat.con.sql("SELECT source, count(*) FROM samples GROUP BY 1").show()
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        *,
        read_only: bool = False,
        create: bool = True,
        vision_mode: str | None = None,
        at: int | None = None,
        _migrating: bool = False,
    ):
        if vision_mode is not None:
            vision.get_mode(vision_mode)  # an unknown mode is refused before anything is created
        self.dir, self.shared = locate(path)
        self.metadata_path = self.dir / METADATA_NAME
        self.data_path = self.dir / DATA_DIR
        # Where images live: this folder, or the shared catalog's data URL (row paths are relative to it).
        self.image_root = self.shared["data"] if self.shared else str(self.dir)
        self.at = at
        self.read_only = read_only or at is not None
        if self.dir.exists() and not self.dir.is_dir():
            raise CatalogError(f"the catalog path {self.dir} is a file, not a folder; give --catalog (or "
                               "$OCRCAT_HOME) a folder (created if missing) or a shared catalog's .toml file")
        if self.shared:
            self.dir.mkdir(parents=True, exist_ok=True)
        elif not self.metadata_path.exists():
            if (self.dir / LEGACY_NAME).exists() and not _migrating:
                raise CatalogError(
                    f"{self.dir} holds a catalog in the old single-file format ({LEGACY_NAME}); "
                    f"convert it once, keeping rows and images, with: ocrcat migrate --catalog {self.dir}"
                )
            if self.read_only or not create:
                raise CatalogError(
                    f"no catalog at {self.dir}: ingest something first (ocrcat ingest …) "
                    "or point --catalog / $OCRCAT_HOME at an existing one"
                )
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CatalogError(f"cannot create the catalog folder {self.dir}: {exc.strerror}") from None
        self.con = connect(shared=self.shared is not None)
        if self.read_only:
            self._attach()
            self._check_laid_out()
        else:
            with self.commit_lock():  # two processes creating one lake must not both lay it out
                self._attach()
                self._create_tables(vision_mode)
        self.vision_mode = self.info("vision_mode") or vision.DEFAULT_MODE
        if vision_mode and vision_mode != self.vision_mode:
            raise CatalogError(
                f"catalog {self.dir} uses vision mode {self.vision_mode!r}, not {vision_mode!r}; "
                "a catalog has one mode (its image_tokens depend on it): use another --catalog"
            )
        self.images = open_store(self.image_root)

    # --- opening -------------------------------------------------------------------------------

    def _attach(self) -> None:
        # The data path is given on every attach (and overrides the stored one), so a catalog
        # folder can be moved or mounted elsewhere; data file paths are stored relative to it.
        if self.shared:
            options = [f"DATA_PATH {sql_string(self.shared['data'] + '/' + DATA_DIR + '/')}", "OVERRIDE_DATA_PATH TRUE",
                       f"METADATA_SCHEMA {sql_string(self.shared['schema'])}"]
        else:
            options = [
                f"DATA_PATH {sql_string(self.data_path.resolve().as_posix() + '/')}",
                "OVERRIDE_DATA_PATH TRUE",
                # WAL: a reader never blocks a writer nor the other way round. busy_timeout: wait
                # (instead of failing) for the moment SQLite needs to switch between them.
                "METADATA_PARAMETERS MAP {'busy_timeout': '60000', 'journal_mode': 'WAL'}",
            ]
        if self.read_only:
            options.append("READ_ONLY")
        if self.at is not None:
            options.append(f"SNAPSHOT_VERSION {int(self.at)}")
        target = sql_string(f"ducklake:{self.shared['metadata']}" if self.shared
                        else f"ducklake:sqlite:{self.metadata_path.resolve().as_posix()}")
        try:
            self.con.execute(f"ATTACH {target} AS {LAKE} ({', '.join(options)})")
        except duckdb.Error as exc:
            message = str(exc).strip().splitlines()[0]
            if self.at is not None and "snapshot" in message.lower():
                raise CatalogError(f"catalog {self.dir} has no snapshot {self.at}; list them with "
                                   "`ocrcat history`") from None
            where = self.shared["file"] if self.shared else self.dir
            empty = not self.shared and self.metadata_path.is_file() and self.metadata_path.stat().st_size == 0
            if self.read_only and (empty or "creating a new DuckLake is explicitly disabled" in message):
                raise _unfinished(where) from None
            if not self.shared and "disk I/O error" in message and shutil.disk_usage(self.dir).free < 1 << 20:
                message += " (the disk holding it is full: SQLite cannot open its write-ahead log; free some space)"
            raise CatalogError(f"cannot open the catalog at {where}: {message}") from None
        self.con.execute(f"USE {LAKE}")

    def _check_laid_out(self) -> None:
        """A reader found a lake whose creation has not finished (still under way, or killed)."""
        if not self._tables() >= set(TABLES):
            raise _unfinished(self.dir)

    def _tables(self) -> set[str]:
        return {name for (name,) in self.con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = ?", [LAKE]).fetchall()}

    def _create_tables(self, vision_mode: str | None) -> None:
        present = self._tables()
        if present >= set(TABLES):
            return  # an existing catalog: no empty snapshot for every open
        mode = vision.get_mode(vision_mode or vision.DEFAULT_MODE).name

        def create(con):
            for statement in DDL:
                con.execute(statement)
            # A Parquet writer holds a whole row group in memory before writing it: DuckDB's default
            # (122 880 rows) would make the writer's memory grow with a split's size up to there
            # (600 MB of DocBank transcripts); 8192-row groups keep it flat.
            for option, value in PARQUET_OPTIONS.items():
                con.execute(f"CALL {LAKE}.set_option(?, ?)", [option, value])
            if "catalog_info" not in present:
                con.executemany("INSERT INTO catalog_info VALUES (?, ?)",
                                [["vision_mode", mode], ["schema_version", str(SCHEMA_VERSION)]])

        self.commit(create, "create the catalog", locked=True)

    # --- writing -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def commit_lock(self) -> Iterator[None]:
        """Hold the machine-wide turn to commit to this catalog (see the module docstring)."""
        locks = self.dir / "locks"
        locks.mkdir(exist_ok=True)
        with open(locks / "commit.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def exclusive(self, what: str, message: str) -> Iterator[None]:
        """Hold the lock named `what` for the block, or raise CatalogBusy(message) at once if another
        process holds it (a second ingest of the same split). The kernel drops it when we die."""
        locks = self.dir / "locks"
        locks.mkdir(exist_ok=True)
        with open(locks / f"{what}.lock", "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip()
                raise CatalogBusy(message + (f" (process {holder})" if holder else "")) from None
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            try:
                yield
            finally:
                f.truncate(0)
                fcntl.flock(f, fcntl.LOCK_UN)

    def commit(self, work: Callable[[duckdb.DuckDBPyConnection], T], message: str, *,
               locked: bool = False, **extra) -> T:
        """Run `work(con)` in one transaction and commit it as one snapshot with `message` (and
        `extra` as JSON) for `ocrcat history`. A commit that loses a race is run again from the start,
        so `work` must only depend on what it reads inside the transaction and on its arguments."""
        self._writable()
        for attempt in range(COMMIT_RETRIES):
            with contextlib.nullcontext() if locked else self.commit_lock():
                self.con.execute("BEGIN TRANSACTION")
                try:
                    result = work(self.con)
                    self.con.execute(f"CALL {LAKE}.set_commit_message(?, ?, extra_info => ?)",
                                     [AUTHOR, message, json.dumps(extra, sort_keys=True, default=str)])
                    self.con.execute("COMMIT")
                    return result
                except duckdb.Error as exc:
                    _rollback(self.con)
                    if not _lost_race(exc) or attempt == COMMIT_RETRIES - 1:
                        raise
                except BaseException:
                    _rollback(self.con)
                    raise
            time.sleep(min(5.0, 0.05 * 1.5 ** attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    def _writable(self) -> None:
        if self.read_only:
            raise CatalogError("this needs the catalog open for writing (it is open read-only)")

    # --- facts ---------------------------------------------------------------------------------

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A second connection to the open catalog, also defaulting to the lake (a plain
        `con.cursor()` would start in DuckDB's in-memory database, where there is no `samples`)."""
        cursor = self.con.cursor()
        cursor.execute(f"USE {LAKE}")
        return cursor

    def snapshot(self) -> int:
        """The snapshot this connection reads now (inside a transaction: the transaction's)."""
        return self.con.execute(f"SELECT id FROM {LAKE}.current_snapshot()").fetchone()[0]

    def next_snapshot(self) -> int:
        """The id the commit being prepared will get: call it inside `commit` (under the lock)."""
        return self.con.execute(f"SELECT max(snapshot_id) + 1 FROM {LAKE}.snapshots()").fetchone()[0]

    def info(self, key: str) -> str | None:
        row = self.con.execute("SELECT value FROM catalog_info WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    def set_info(self, key: str, value: str) -> None:
        def put(con):
            con.execute("DELETE FROM catalog_info WHERE key = ?", [key])
            con.execute("INSERT INTO catalog_info VALUES (?, ?)", [key, value])

        self.commit(put, f"set {key}")

    def count_image_tokens(self, width: int, height: int) -> int:
        return vision.count_image_tokens(width, height, self.vision_mode)

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def interrupted(exc: BaseException) -> bool:
    """Whether `exc` is Ctrl-C (or a `kill` made one): Python's KeyboardInterrupt, or DuckDB's form of
    it when the signal arrives during a query (InterruptException, or RuntimeError "Query interrupted"
    from its Python client), which would otherwise read as a fault."""
    return (isinstance(exc, (KeyboardInterrupt, duckdb.InterruptException))
            or (type(exc) is RuntimeError and str(exc) == "Query interrupted"))


def insert_rows(con: duckdb.DuckDBPyConnection, table: str, rows: pa.Table) -> None:
    """Append an Arrow table's rows (in `table`'s column order) in one INSERT: executemany runs one
    INSERT a row, 0.36 s for 1000 error rows where this takes 0.03 s."""
    if rows.num_rows == 0:
        return
    con.register("new_rows", rows)
    try:
        con.execute(f"INSERT INTO {table} SELECT * FROM new_rows")
    finally:
        con.unregister("new_rows")


def connect(shared: bool = False) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the lake's extensions loaded and no network use (but
    the shared catalog's servers: PostgreSQL, and S3 with the environment's settings)."""
    from ocrcat.catalog.objects import duckdb_secret

    con = duckdb.connect(config={"autoinstall_known_extensions": False, "temp_directory": str(_spill_folder())})
    try:
        extensions.load(con, extensions.LOCAL + (("postgres", "httpfs") if shared else ()))
        if shared:
            duckdb_secret(con)
    except extensions.ExtensionError as exc:
        con.close()
        raise CatalogError(str(exc)) from None
    return con


def _spill_folder() -> Path:
    """A folder of its own for this connection's spilled buffers.

    DuckDB names its temporary files the same in every process (duckdb_temp_storage_DEFAULT-0.tmp)
    and removes the folder when a connection closes, so two ocrcat processes sharing one folder
    would overwrite and delete each other's spilled data. DuckDB creates the folder on first use
    and removes it on close; folders of processes that died are removed here.
    """
    parent = Path(tempfile.gettempdir()) / f"ocrcat-duckdb-{os.getuid()}"
    parent.mkdir(mode=0o700, exist_ok=True)
    for old in parent.iterdir():
        pid = old.name.partition("-")[0]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return parent / f"{os.getpid()}-{next(_SPILL_IDS)}"


_SPILL_IDS = itertools.count()


def process_alive(pid: int) -> bool:
    """Whether process `pid` is running (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    # A zombie still answers kill(0): it is dead all the same.
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return True  # no /proc: trust kill(0)


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    try:
        con.execute("ROLLBACK")
    except duckdb.Error:
        pass  # a failed COMMIT has already ended the transaction


def _lost_race(exc: duckdb.Error) -> bool:
    """A commit that failed only because another writer committed first: worth running again."""
    text = str(exc).lower()
    # SQLite: "database is locked"; DuckLake: "conflict"; PostgreSQL (shared catalogs): a
    # serialization failure when another machine's commit touched the same metadata rows.
    return any(s in text for s in ("database is locked", "conflict", "could not serialize", "deadlock detected"))


def retry_lost_races(work: Callable[[], T]) -> T:
    """Run `work()` (a maintenance call outside `Catalog.commit`) again while it loses races."""
    for attempt in range(COMMIT_RETRIES):
        try:
            return work()
        except duckdb.Error as exc:
            if not _lost_race(exc) or attempt == COMMIT_RETRIES - 1:
                raise
        time.sleep(min(5.0, 0.05 * 1.5 ** attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")
