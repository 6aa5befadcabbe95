"""DuckDB extensions the lake needs (`ducklake`, `sqlite`; a shared catalog also `postgres` and
`httpfs`), loaded without waiting on a network.

Where the binaries come from, in order:
1. the PyPI packages `duckdb-extension-<name>` (DuckDB's own signed binaries, pinned to the duckdb
   version in pyproject.toml): always there after `pip install ocrcat`, offline included;
2. DuckDB's extension directory, if the extension was installed there before (`INSTALL ducklake`);
3. DuckDB's extension repository (`INSTALL`), which needs the network.

The packages lay their file out as `extensions/v<version>/<name>.duckdb_extension`, while `LOAD`
by path wants the file named after the extension's entry point (`sqlite_scanner`, not `sqlite`).
So we keep a small folder of correctly named symbolic links to the package files, laid out as a
DuckDB extension directory (`v<version>/<platform>/<name>.duckdb_extension`), and LOAD by path.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

import duckdb

# extension -> (the package that carries it, the file name its entry point expects)
NEEDED = {
    "ducklake": ("duckdb_extension_ducklake", "ducklake"),
    "sqlite": ("duckdb_extension_sqlite", "sqlite_scanner"),
    "postgres": ("duckdb_extension_postgres", "postgres_scanner"),  # shared catalogs: metadata in PostgreSQL
    "httpfs": ("duckdb_extension_httpfs", "httpfs"),  # shared catalogs: data on S3-compatible storage
}
LOCAL = ("ducklake", "sqlite")


class ExtensionError(RuntimeError):
    """An extension the catalog needs could not be loaded; the message says how to get it."""


def load(con: duckdb.DuckDBPyConnection, names=LOCAL) -> None:
    """Load each extension of `names` into `con` (the packages first, then installed, then online)."""
    for name in names:
        if _loaded(con, NEEDED[name][1]):
            continue
        tried = []
        path = _packaged(name)
        if path is not None:
            try:
                con.execute(f"LOAD '{path}'")
                continue
            except duckdb.Error as exc:
                tried.append(f"the package file {path}: {_first_line(exc)}")
        for statements in ([f"LOAD {name}"], [f"INSTALL {name}", f"LOAD {name}"]):  # installed, online
            try:
                for statement in statements:
                    con.execute(statement)
                break
            except duckdb.Error as exc:
                tried.append(f"{statement}: {_first_line(exc)}")
        if not _loaded(con, NEEDED[name][1]):
            version = duckdb.__version__
            raise ExtensionError(
                f"cannot load DuckDB's {name} extension, which the catalog needs; install it with "
                f"`pip install duckdb-extension-{name}=={version}` (works offline from a wheel) or run "
                f"once with network access. Tried: " + "; ".join(tried)
            )


def _loaded(con: duckdb.DuckDBPyConnection, canonical: str) -> bool:
    row = con.execute("SELECT loaded FROM duckdb_extensions() WHERE extension_name = ?", [canonical]).fetchone()
    return bool(row and row[0])


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _packaged(name: str) -> Path | None:
    """A correctly named link to the package's binary for this duckdb version, or None."""
    package, canonical = NEEDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    version = f"v{duckdb.__version__}"
    binary = Path(list(spec.submodule_search_locations)[0]) / "extensions" / version / f"{name}.duckdb_extension"
    if not binary.is_file():
        return None  # a package built for another duckdb version: fall through to the other ways
    if canonical == name:
        return binary
    link = _link_dir() / version / _platform() / f"{canonical}.duckdb_extension"
    try:
        if link.resolve() != binary.resolve():
            link.parent.mkdir(parents=True, exist_ok=True)
            tmp = link.with_name(f"{link.name}.{os.getpid()}.tmp")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(binary)
            os.replace(tmp, link)  # atomic: a concurrent process sees the old link or the new one
    except OSError:
        return None
    return link


def _link_dir() -> Path:
    """Per-user cache folder for the links (not the catalog: it may be read-only or shared)."""
    base = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache" if Path.home().is_dir() else None)
    root = Path(base) if base else Path(tempfile.gettempdir()) / f"ocrcat-{os.getuid()}"
    return root / "ocrcat" / "duckdb-extensions"


_PLATFORM: list[str] = []


def _platform() -> str:
    if not _PLATFORM:
        _PLATFORM.append(duckdb.connect().execute("PRAGMA platform").fetchone()[0])
    return _PLATFORM[0]
