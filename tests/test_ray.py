"""Ingest on a real Ray cluster (two nodes on this machine, started by scripts/services.sh) gives
the catalog the local process pool gives."""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from ocrcat.catalog import Catalog

from conftest import image_files, mirror_and_local_catalog
from ocrcat.ingest import chartqa
from ocrcat.ingest.parquet import split_file_name, write_hub_parquet
from ocrcat.ingest.runner import ingest

RAY = os.environ.get("OCRCAT_TEST_RAY")
pytestmark = pytest.mark.skipif(not RAY, reason="no Ray cluster: start one with scripts/services.sh start")

OCRCAT = [sys.executable, "-m", "ocrcat.cli"]
WORKTREE = Path(__file__).resolve().parents[1]
TRAIN = f"data/{split_file_name('train')}"
SOURCES = ["chartqa", "figureqa", "pubtables"]


def snapshot(catalog_dir: Path) -> tuple[list, dict]:
    """Every samples row but the run id, and every image file's bytes."""
    with Catalog(catalog_dir, read_only=True) as cat:
        rows = cat.con.execute(
            "SELECT * EXCLUDE (ingest_run) FROM samples ORDER BY sample_id").fetchall()
    return rows, image_files(catalog_dir)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    return mirror_and_local_catalog(tmp_path_factory, "ray", SOURCES, seed=3)


@pytest.fixture(scope="module")
def mirror(reference) -> Path:
    return reference[0]


@pytest.fixture(scope="module")
def local_catalog(reference) -> Path:
    return reference[1]


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


# --- SPEC §6 on Ray: a task's fault fails its shard loudly; a killed driver resumes.


def write_chartqa(root: Path, n: int, group: int = 300, bad: frozenset = frozenset()) -> Path:
    """A ChartQA mirror of `n` train rows with distinct noise images, `group` rows a row group (a
    shard); rows in `bad` have an empty label list (a bad record)."""
    def png(i: int) -> bytes:
        buf = io.BytesIO()
        Image.frombytes("RGB", (32, 32), random.Random(i).randbytes(32 * 32 * 3)).save(buf, "PNG")
        return buf.getvalue()

    rows = [{"image": png(i), "query": f"q{i}?", "label": [] if i in bad else [str(i)], "human_or_machine": i % 2}
            for i in range(n)]
    write_hub_parquet(root / "chartqa" / TRAIN, rows, chartqa.FEATURES, row_group_size=group)
    return root


def table(catalog_dir: Path, sql: str) -> list[tuple]:
    with Catalog(catalog_dir, read_only=True) as cat:
        return cat.con.execute(sql).fetchall()


def ray_ingest(mirror: Path, catalog_dir: Path, env: dict | None = None, args: list[str] = (), **kw):
    command = [*OCRCAT, "ingest", "chartqa", "--mirror", str(mirror), "--catalog", str(catalog_dir), "--ray", RAY,
               *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, **kw)


def test_a_failed_ray_task_fails_its_shard_loudly_and_the_rerun_resumes(tmp_path):
    mirror, catalog_dir = write_chartqa(tmp_path / "m", 900), tmp_path / "catalog"  # 3 shards of 300
    path = mirror / "chartqa" / TRAIN
    good = path.read_bytes()
    page = pq.ParquetFile(path).metadata.row_group(1).column(0).data_page_offset  # image bytes of shard g1
    path.write_bytes(good[:page] + b"\xff" * 16 + good[page + 16:])

    failed = ray_ingest(mirror, catalog_dir)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    message = " ".join(failed.stderr.split())
    assert f"shard {TRAIN}:g1:0 ({path})" in message and "Deserializing page header failed" in message
    assert "Traceback" not in failed.stderr
    assert table(catalog_dir, "SELECT count(*) FROM samples") == [(0,)]  # a failed run changes no visible row
    assert table(catalog_dir, "SELECT status FROM ingest_runs") == [("failed",)]
    # Other shards may have finished on the other node before the fault: whole ones, never g1.
    done = [k for (k,) in table(catalog_dir, "SELECT shard_key FROM ingest_shards")]
    assert f"{TRAIN}:g1:0" not in done
    assert table(catalog_dir, "SELECT count(*) FROM samples_pending") == [(300 * len(done),)]

    path.write_bytes(good)
    resumed = ray_ingest(mirror, catalog_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert table(catalog_dir, "SELECT resumed_from IS NOT NULL, status FROM ingest_runs ORDER BY run_id DESC "
                              "LIMIT 1") == [(True, "completed")]
    clean = tmp_path / "clean"
    assert ray_ingest(mirror, clean).returncode == 0
    assert snapshot(catalog_dir) == snapshot(clean) and len(snapshot(clean)[0]) == 900


def test_kill_9_of_the_driver_mid_run_then_rerun_equals_uninterrupted(tmp_path):
    mirror, catalog_dir = write_chartqa(tmp_path / "m", 2400), tmp_path / "catalog"  # 8 shards of 300
    # Slow image writes in the Ray workers (they import this sitecustomize through the PYTHONPATH the
    # driver hands them), so the run spans several commits and can be killed between them.
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(textwrap.dedent("""
        import time
        from ocrcat.catalog import images
        _real = images.ImageStore._write
        def _write(self, final, data):
            time.sleep(0.01)
            return _real(self, final, data)
        images.ImageStore._write = _write
    """))
    env = {**os.environ, "PYTHONPATH": f"{hook}{os.pathsep}{WORKTREE}"}
    args = [*OCRCAT, "ingest", "chartqa", "--mirror", str(mirror), "--catalog", str(catalog_dir), "--ray", RAY]
    driver = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    committed, deadline = 0, time.monotonic() + 300
    try:
        while committed == 0 and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            try:  # readers never wait on the lake: this polls while the driver commits
                committed = table(catalog_dir, "SELECT count(*) FROM ingest_shards")[0][0]
            except Exception:
                pass  # the catalog is not created yet
        assert driver.poll() is None, "the ingest ended before it could be killed: " + driver.stderr.read()
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.kill()
        driver.wait()
    assert driver.returncode == -9
    shards = 2400 // 300
    assert 0 < table(catalog_dir, "SELECT count(*) FROM ingest_shards")[0][0] < shards
    assert table(catalog_dir, "SELECT status FROM ingest_runs") == [("running",)]  # killed: nothing recorded it

    rerun = ray_ingest(mirror, catalog_dir)
    assert rerun.returncode == 0, rerun.stderr
    assert table(catalog_dir, "SELECT resumed_from IS NOT NULL, status FROM ingest_runs ORDER BY run_id DESC "
                              "LIMIT 1") == [(True, "completed")]
    clean = tmp_path / "clean"
    assert ray_ingest(mirror, clean).returncode == 0
    assert snapshot(catalog_dir) == snapshot(clean)  # rows and image files: the killed run's leftovers swept
    assert len(snapshot(clean)[0]) == 2400


def test_max_error_rate_on_ray_fails_the_split_and_keeps_the_old_rows(tmp_path):
    good, catalog_dir = write_chartqa(tmp_path / "good", 60), tmp_path / "catalog"
    assert ray_ingest(good, catalog_dir).returncode == 0
    before = snapshot(catalog_dir)[0]
    bad = write_chartqa(tmp_path / "bad", 60, bad=frozenset(range(0, 60, 5)))  # 12 of 60 records rejected
    result = ray_ingest(bad, catalog_dir, args=["--max-error-rate", "0.1"])
    assert result.returncode == 1, result.stdout + result.stderr
    assert "12 of 60 records rejected (error rate 20.00%) is above --max-error-rate 10.00%" in " ".join(
        result.stderr.split())
    assert snapshot(catalog_dir)[0] == before  # the previous rows are unchanged
    assert table(catalog_dir, "SELECT status FROM ingest_runs ORDER BY run_id DESC LIMIT 1") == [("failed",)]
    assert ray_ingest(bad, catalog_dir, args=["--max-error-rate", "0.25"]).returncode == 0
    assert len(snapshot(catalog_dir)[0]) == 48
