"""Shared fixtures: sample mirrors are generated once per test session and reused read-only."""

from __future__ import annotations

from pathlib import Path

import pytest

from ocrcat.ingest.mirror import write_sample_mirror

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"


@pytest.fixture(scope="session")
def sample_mirror_factory(tmp_path_factory):
    """Return a function source -> mirror root holding that source's sample mirror (cached)."""
    cache: dict[tuple[str, int], Path] = {}

    def make(source: str, rows: int = 40) -> Path:
        if (source, rows) not in cache:
            root = tmp_path_factory.mktemp(f"mirror-{source}")
            write_sample_mirror(root, [source], rows=rows, seed=1)
            cache[(source, rows)] = root
        return cache[(source, rows)]

    return make


@pytest.fixture
def catalog_dir(tmp_path) -> Path:
    return tmp_path / "catalog"


@pytest.fixture(scope="session")
def add_synthetic_rows():
    """Return a function (con, source, rows) that inserts made-up rows into `samples` with SQL.

    Fast and image-free: for mixture tests that need sources, sizes or splits no sample mirror has.
    Sample ids are MD5 of (source, i); splits cycle train×8, val, test.
    """

    def add(con, source: str, rows: int, offset: int = 0) -> None:
        text = source == "smoltalk"
        con.execute(
            """
            INSERT INTO samples
            SELECT CAST('0x' || substr(md5(?1 || ':' || i), 1, 16) AS UBIGINT), ?1,
                   ['train', 'train', 'train', 'train', 'train', 'train', 'train', 'train', 'val', 'test'][i % 10 + 1],
                   'synthetic-' || i, CASE WHEN ?2 THEN 'text' ELSE 'vision' END,
                   CASE WHEN ?2 THEN 'user: question ' || i ELSE '<image>\nQuestion: what is ' || i || '?' END,
                   CASE WHEN ?1 IN ('docbank', 'olmocr') THEN NULL ELSE 'answer ' || i END,
                   CASE WHEN ?2 THEN json_array(json_object('role', 'user', 'content', 'question ' || i),
                                                json_object('role', 'assistant', 'content', 'answer ' || i)) END,
                   CASE WHEN ?2 THEN NULL ELSE 'images/' || ?1 || '/' || substr(md5(?1 || i), 1, 2) || '/'
                                                 || md5(?1 || i) || '.png' END,
                   CASE WHEN ?2 THEN NULL ELSE md5(?1 || i) END, CASE WHEN ?2 THEN NULL ELSE 'png' END,
                   640, 480, 1000, CASE WHEN ?2 THEN 0 ELSE 273 END, json_object('i', i), 0
            FROM range(?3, ?3 + ?4) t(i)
            """,
            [source, text, offset, rows],
        )

    return add


def mirror_and_local_catalog(tmp_path_factory, name: str, sources: list[str], seed: int) -> tuple[Path, Path]:
    """A sample mirror of `sources` and a catalog ingested from it by the local pool: the reference
    the scale-out tests (Ray, a shared catalog) compare their catalogs with."""
    from ocrcat.catalog import Catalog
    from ocrcat.ingest.runner import ingest

    root = tmp_path_factory.mktemp(f"{name}-mirror")
    write_sample_mirror(root, sources, rows=24, seed=seed)
    catalog_dir = tmp_path_factory.mktemp(f"{name}-local") / "catalog"
    with Catalog(catalog_dir) as cat:
        for source in sources:
            ingest(cat, source, mirror=root, workers=2)
    return root, catalog_dir


def image_files(catalog_dir: Path) -> dict[str, bytes]:
    """Every file of a local catalog's image store, by path relative to the catalog, with its bytes."""
    return {p.relative_to(catalog_dir).as_posix(): p.read_bytes()
            for p in sorted((catalog_dir / "images").rglob("*")) if p.is_file()}
