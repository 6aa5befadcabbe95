"""A shared catalog on the real services scripts/services.sh starts: lake metadata in PostgreSQL, lake
data and images on an S3 server (moto), ingest through a two-node Ray cluster; it equals the local
default, a second process with only the catalog file reads it, and the sweep stays under its prefix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from ocrcat.catalog import Catalog
from ocrcat.catalog.objects import filesystem
from ocrcat.catalog.snapshots import compact
from ocrcat.ingest.runner import ingest
from ocrcat.inspection.report import _thumbnail
from ocrcat.inspection.show import sample_facts
from ocrcat.inspection.validate import validate
from ocrcat.mix.embed import export_embedded
from ocrcat.mix.export import export_mixture
from ocrcat.mix.mixtures import create_mixture

from conftest import image_files, mirror_and_local_catalog

PG = os.environ.get("OCRCAT_TEST_POSTGRES")
S3 = os.environ.get("OCRCAT_TEST_S3_ENDPOINT")
RAY = os.environ.get("OCRCAT_TEST_RAY")
pytestmark = pytest.mark.skipif(not (PG and S3 and RAY),
                                reason="no PostgreSQL/S3/Ray services: eval \"$(scripts/services.sh start)\"")

OCRCAT = [sys.executable, "-m", "ocrcat.cli"]
SOURCES = ["chartqa", "figureqa", "pubtables"]
BUCKET = "ocrcat-tests"


@pytest.fixture(scope="module", autouse=True)
def aws_environment():
    """moto's server accepts any keys; the code under test reads only these standard variables."""
    saved = dict(os.environ)
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=S3 or "")
    host = S3.split("://", 1)[-1] if S3 else None
    pafs.S3FileSystem(endpoint_override=host, scheme="http", allow_bucket_creation=True).create_dir(BUCKET)
    yield
    os.environ.clear()
    os.environ.update(saved)


def shared_catalog(tmp_path: Path) -> tuple[Path, str]:
    """A catalog file with a fresh PostgreSQL schema and S3 prefix; returns (file, data URL)."""
    tag = uuid.uuid4().hex[:10]
    data = f"s3://{BUCKET}/{tag}"
    path = tmp_path / "shared.toml"
    path.write_text(f'metadata = "postgres:{PG}"\ndata = "{data}"\nmetadata_schema = "t{tag}"\n'
                    f'work = "{tmp_path / "work"}"\n')
    return path, data


def rows(catalog) -> list[tuple]:
    with Catalog(catalog, read_only=True) as cat:
        return cat.con.execute("SELECT * EXCLUDE (ingest_run) FROM samples ORDER BY sample_id").fetchall()


def s3_objects(url: str) -> dict[str, bytes]:
    fs, base = filesystem(url)
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    out = {}
    for info in infos:
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as f:
                out[info.path.removeprefix(base + "/")] = f.read()
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    return mirror_and_local_catalog(tmp_path_factory, "shared", SOURCES, seed=5)


@pytest.fixture(scope="module")
def mirror(reference) -> Path:
    return reference[0]


@pytest.fixture(scope="module")
def local_catalog(reference) -> Path:
    return reference[1]


def test_ray_ingest_into_postgres_and_s3_equals_the_local_default(mirror, local_catalog, tmp_path):
    config, data = shared_catalog(tmp_path)
    done = subprocess.run([*OCRCAT, "ingest", *SOURCES, "--mirror", str(mirror), "--catalog", str(config),
                           "--ray", RAY], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    expected = rows(local_catalog)
    assert len(expected) > 50 and rows(config) == expected

    objects = s3_objects(data)
    images = {k: v for k, v in objects.items() if k.startswith("images/")}
    assert images == image_files(local_catalog)  # the same keys and bytes as the local store
    assert any(k.startswith("lake/") and k.endswith(".parquet") for k in objects)  # lake data on S3 too
    assert all(k.startswith(("images/", "lake/")) for k in objects)  # nothing else written there
    assert not (tmp_path / "work" / "catalog.sqlite").exists() and not (tmp_path / "work" / "images").exists()

    # Another machine's view: a new process given only the catalog file (and the standard environment).
    query = "SELECT count(*) AS n, bit_xor(sample_id) AS x FROM samples"
    other = subprocess.run([*OCRCAT, "sql", query, "--json", "--catalog", str(config)], capture_output=True,
                           text=True, timeout=300, cwd=tmp_path)
    assert other.returncode == 0, other.stderr
    with Catalog(local_catalog, read_only=True) as cat:
        n, x = cat.con.execute(query).fetchone()
    assert json.loads(other.stdout) == [{"n": n, "x": x}]

    # Exports: the plain one names images by their URL; the embedded one carries the bytes from S3.
    for cat_path in (config, local_catalog):
        with Catalog(cat_path) as cat:
            create_mixture(cat, "charts", [("charts", "source <> 'pubtables'", 1.5)], seed=3, replace=True)
    with Catalog(config, read_only=True) as cat:
        plain = export_mixture(cat, "charts", tmp_path / "plain")
        embedded = export_embedded(cat, "charts", tmp_path / "shared-export")
    with Catalog(local_catalog, read_only=True) as cat:
        local_embedded = export_embedded(cat, "charts", tmp_path / "local-export")
    paths = pq.read_table(tmp_path / "plain" / plain["files"][0], columns=["image_path"]).column(0).to_pylist()
    assert paths and all(p.startswith(data + "/images/") for p in paths if p)
    assert plain["missing_images_count"] == 0
    shared_rows = pq.read_table(tmp_path / "shared-export" / embedded["files"][0]).drop(["image_path"])
    local_rows = pq.read_table(tmp_path / "local-export" / local_embedded["files"][0]).drop(["image_path"])
    assert shared_rows.num_rows > 0 and shared_rows.equals(local_rows)


def test_validate_checks_a_shared_catalogs_images_as_objects(mirror, tmp_path):
    # It used to look for every image as a local file: a healthy shared catalog failed validate.
    config, data = shared_catalog(tmp_path)
    with Catalog(config) as cat:
        ingest(cat, "chartqa", mirror=mirror, splits=["train"])
        [(rows, first)] = cat.con.execute("SELECT count(*), min(image_path) FROM samples").fetchall()
        checks = {(r.source, r.check): r for r in validate(cat, deep=True)}
        assert checks[("chartqa", "image_path")].failed == 0 and checks[("chartqa", "image_decodes")].failed == 0
        [(sid,)] = cat.con.execute("SELECT sample_id FROM samples WHERE image_path = ? LIMIT 1", [first]).fetchall()
        image = sample_facts(cat, sid)["image"]  # `ocrcat show`
        assert image["problem"] is None and image["file"] == f"{data}/{first}"
        uri, why = _thumbnail(cat, first)  # `ocrcat report`
        assert why is None and uri.startswith("data:image/jpeg")
        fs, base = filesystem(data)
        fs.delete_file(f"{base}/{first}")
        checks = {(r.source, r.check): r for r in validate(cat, deep=True)}
    gone = checks[("chartqa", "image_path")]
    assert gone.failed >= 1 and f"{first}: object missing under {data}" in gone.note
    assert rows > gone.failed


def test_sweep_deletes_only_unreferenced_images_under_its_prefix(mirror, tmp_path):
    config, data = shared_catalog(tmp_path)
    with Catalog(config) as cat:
        ingest(cat, "chartqa", mirror=mirror)
    fs, base = filesystem(data)
    bucket = base.split("/")[0]
    orphan = f"images/chartqa/ab/{'ab' + '0' * 62}.png"  # ocrcat's naming, no row: swept
    strangers = [f"{base}/images/chartqa/ab/notes.txt", f"{base}/images/chartqa/readme.png",
                 f"{base}-sibling/images/chartqa/ab/{'ab' + '1' * 62}.png", f"{bucket}/elsewhere.png"]
    for key in [f"{base}/{orphan}", *strangers]:
        with fs.open_output_stream(key) as f:
            f.write(b"x")
    before = s3_objects(data)
    with Catalog(config) as cat:
        result = compact(cat)
    after = s3_objects(data)
    assert result["images_swept"] == 1 and orphan not in after
    # lake/ files may go too: compact merges them (rows the ingest left inline are flushed first)
    assert {key for key in set(before) - set(after) if not key.startswith("lake/")} == {orphan}
    for key in strangers:  # not named as ocrcat names images, or outside the prefix: untouched
        assert fs.get_file_info(key).type == pafs.FileType.File

    # A run in progress (on another machine: only its `running` row is visible here) keeps objects
    # written since it started, even those no row references yet; once it has ended they go.
    late = f"images/chartqa/cd/{'cd' + '0' * 62}.png"
    with Catalog(config) as cat:
        cat.commit(lambda con: con.execute(
            "INSERT INTO ingest_runs (run_id, source, split, fingerprint, arguments, started_at, status) "
            "VALUES (999, 'figureqa', 'train', 'x', '{}', now(), 'running')"), "a run elsewhere")
        with fs.open_output_stream(f"{base}/{late}") as f:
            f.write(b"x")
        assert compact(cat)["images_swept"] == 0
        cat.commit(lambda con: con.execute("UPDATE ingest_runs SET status = 'failed' WHERE run_id = 999"), "it ended")
        assert compact(cat)["images_swept"] == 1
    assert fs.get_file_info(f"{base}/{late}").type == pafs.FileType.NotFound

    # A run in progress of the same source keeps even objects written long before it started: its
    # workers find them stored and do not write them again, and its rows will point to them. (moto
    # cannot backdate an object: a start an hour ahead makes this one "older" than the run by as much.)
    old = f"images/chartqa/ef/{'ef' + '0' * 62}.png"
    with fs.open_output_stream(f"{base}/{old}") as f:
        f.write(b"x")
    with Catalog(config) as cat:
        cat.commit(lambda con: con.execute(
            "INSERT INTO ingest_runs (run_id, source, split, fingerprint, arguments, started_at, status) "
            "VALUES (998, 'chartqa', 'val', 'x', '{}', now() + INTERVAL 1 HOUR, 'running')"), "a chartqa run elsewhere")
        assert compact(cat)["images_swept"] == 0
        assert fs.get_file_info(f"{base}/{old}").type == pafs.FileType.File
        cat.commit(lambda con: con.execute("UPDATE ingest_runs SET status = 'failed' WHERE run_id = 998"), "it ended")
        assert compact(cat)["images_swept"] == 1

    # Write-once: storing an image that exists does not rewrite the object.
    image = next(k for k in after if k.startswith("images/chartqa/") and k.endswith(".png"))
    mtime = fs.get_file_info(f"{base}/{image}").mtime
    with Catalog(config) as cat:
        stored = cat.images.put("chartqa", after[image])
    assert stored.path == image and fs.get_file_info(f"{base}/{image}").mtime == mtime


def test_a_password_in_the_catalog_file_is_refused(tmp_path):
    path = tmp_path / "shared.toml"
    path.write_text(f'metadata = "postgres:{PG} password=secret"\ndata = "s3://{BUCKET}/x"\n')
    result = subprocess.run([*OCRCAT, "stats", "--catalog", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "holds a password" in result.stderr and "PGPASSWORD" in result.stderr and "Traceback" not in result.stderr


def test_two_machines_ingesting_other_sources_at_once_equal_the_sequential_result(mirror, local_catalog, tmp_path):
    """Two writers with separate work folders (so no shared lock file: as on two machines) commit to one
    shared catalog at the same time; DuckLake's conflict detection and Catalog.commit's retry order them."""
    config, data = shared_catalog(tmp_path)
    text = config.read_text()
    machines = []
    for name in ("a", "b"):
        path = tmp_path / f"machine-{name}.toml"
        path.write_text(text.replace(str(tmp_path / "work"), str(tmp_path / f"work-{name}")))
        machines.append(path)
    with Catalog(machines[0]):
        pass  # the lake exists before both start (its creation is not what is raced here)
    running = [subprocess.Popen([*OCRCAT, "ingest", source, "--mirror", str(mirror), "--catalog", str(path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for source, path in zip(["chartqa", "figureqa"], machines)]
    for proc in running:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, out + err
    with Catalog(local_catalog, read_only=True) as cat:
        expected = cat.con.execute("SELECT * EXCLUDE (ingest_run) FROM samples WHERE source IN ('chartqa', 'figureqa') "
                                   "ORDER BY sample_id").fetchall()
    assert rows(config) == expected
    with Catalog(config, read_only=True) as cat:
        assert cat.con.execute("SELECT source, status FROM ingest_runs WHERE split = 'train' ORDER BY 1").fetchall() \
            == [("chartqa", "completed"), ("figureqa", "completed")]
