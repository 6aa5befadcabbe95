"""Ingest on a real Ray cluster (two nodes on this machine, started by scripts/services.sh) gives
the catalog the local process pool gives."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ocrcat.catalog import Catalog
from ocrcat.ingest.runner import ingest

RAY = os.environ.get("OCRCAT_TEST_RAY")
pytestmark = pytest.mark.skipif(not RAY, reason="no Ray cluster: start one with scripts/services.sh start")

OCRCAT = [sys.executable, "-m", "ocrcat.cli"]
SOURCES = ["chartqa", "figureqa", "pubtables"]


def snapshot(catalog_dir: Path) -> tuple[list, dict]:
    """Every samples row but the run id, and every image file's bytes."""
    with Catalog(catalog_dir, read_only=True) as cat:
        rows = cat.con.execute(
            "SELECT * EXCLUDE (ingest_run) FROM samples ORDER BY sample_id").fetchall()
    images = {p.relative_to(catalog_dir).as_posix(): p.read_bytes()
              for p in sorted((catalog_dir / "images").rglob("*")) if p.is_file()}
    return rows, images


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Path:
    from ocrcat.ingest.mirror import write_sample_mirror

    root = tmp_path_factory.mktemp("ray-mirror")
    write_sample_mirror(root, SOURCES, rows=24, seed=3)
    return root


@pytest.fixture(scope="module")
def local_catalog(mirror, tmp_path_factory) -> Path:
    catalog_dir = tmp_path_factory.mktemp("local") / "catalog"
    with Catalog(catalog_dir) as cat:
        for source in SOURCES:
            ingest(cat, source, mirror=mirror, workers=2)
    return catalog_dir


def test_ray_ingest_equals_the_local_pool(mirror, local_catalog, tmp_path):
    catalog_dir = tmp_path / "catalog"
    result = subprocess.run([*OCRCAT, "ingest", *SOURCES, "--mirror", str(mirror), "--catalog", str(catalog_dir),
                             "--ray", RAY], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    rows, images = snapshot(catalog_dir)
    assert len(rows) > 50
    assert (rows, images) == snapshot(local_catalog)


def test_unreachable_cluster_is_a_clear_error(mirror, tmp_path):
    result = subprocess.run([*OCRCAT, "ingest", "chartqa", "--mirror", str(mirror), "--catalog",
                             str(tmp_path / "catalog"), "--ray", "127.0.0.1:1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "cannot reach a Ray cluster at '127.0.0.1:1'" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout
