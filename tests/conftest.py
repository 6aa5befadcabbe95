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
