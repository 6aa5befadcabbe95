"""Faults injected for real (SPEC §6): a full disk, I/O errors, a corrupt Parquet page, a file of
another schema, a worker that dies, the main process killed; each asserts the exact outcome
(exit status, run status, rows present or unchanged, files left)."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import re
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
from ocrcat.catalog.images import ImageKeys
from ocrcat.catalog.snapshots import referenced_images
from ocrcat.ingest import chartqa, smoltalk
from ocrcat.ingest.parquet import split_file_name, write_hub_parquet

OCRCAT = [sys.executable, "-m", "ocrcat.cli"]
WORKTREE = Path(__file__).resolve().parents[1]
TRAIN = f"data/{split_file_name('train')}"


def noise_png(seed: int, size: int = 48) -> bytes:
    """A PNG of random pixels: distinct per seed and incompressible (~7 KB at 48 px)."""
    img = Image.frombytes("RGB", (size, size), random.Random(seed).randbytes(size * size * 3))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def write_chartqa(root: Path, n: int, seed: int = 0, group: int = 20, bad: set[int] = frozenset()) -> Path:
    """A ChartQA mirror with `n` train rows of distinct images in row groups of `group` rows;
    rows in `bad` have an empty label list (a bad record, stage map)."""
    rows = [{"image": noise_png(seed * 100_000 + i), "query": f"q{seed}-{i}?", "label": [] if i in bad else [str(i)],
             "human_or_machine": i % 2} for i in range(n)]
    write_hub_parquet(root / "chartqa" / TRAIN, rows, chartqa.FEATURES, row_group_size=group)
    return root


def run(args: list[str], env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(OCRCAT + args, capture_output=True, text=True, env=env, timeout=600, **kw)


def ingest_args(mirror: Path, catalog: Path, *extra: str) -> list[str]:
    return ["ingest", "chartqa", "--mirror", str(mirror), "--catalog", str(catalog), *extra]


def with_hook(tmp_path: Path, body: str) -> dict:
    """Environment whose Python processes (the CLI and its spawned workers) run `body` at start-up."""
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(textwrap.dedent(body))
    return {**os.environ, "PYTHONPATH": f"{hook}{os.pathsep}{WORKTREE}"}


def write_fault(after: int, action: str) -> str:
    """Hook: the image store's write path does `action` from its (after+1)-th file on, per process."""
    return f"""
        import errno, os, time
        from ocrcat.catalog import images
        _real, _calls = images.ImageStore._write, [0]
        def _write(self, final, data):
            _calls[0] += 1
            if _calls[0] > {after}:
                {action}
            return _real(self, final, data)
        images.ImageStore._write = _write
    """


def snapshot(catalog: Path) -> list[tuple]:
    with Catalog(catalog, read_only=True) as cat:
        return cat.con.execute("SELECT * EXCLUDE (ingest_run) FROM samples ORDER BY sample_id").fetchall()


def last_run(catalog: Path) -> dict:
    with Catalog(catalog, read_only=True) as cat:
        rel = cat.con.execute("SELECT * FROM ingest_runs ORDER BY run_id DESC LIMIT 1")
        return dict(zip([d[0] for d in rel.description], rel.fetchone()))


def pending_rows(catalog: Path) -> int:
    with Catalog(catalog, read_only=True) as cat:
        return cat.con.execute("SELECT count(*) FROM samples_pending").fetchone()[0]


def clean_snapshot(tmp_path: Path, mirror: Path) -> list[tuple]:
    clean = tmp_path / "clean"
    assert run(ingest_args(mirror, clean)).returncode == 0
    return snapshot(clean)


def image_files(catalog: Path) -> set[str]:
    """Every file and link under images/, found without following links."""
    return {(Path(d) / name).relative_to(catalog).as_posix()
            for d, dirs, names in os.walk(catalog / "images") for name in names + [x for x in dirs
                                                                                  if (Path(d) / x).is_symlink()]}


def referenced(catalog: Path) -> ImageKeys:
    """Images some kept snapshot's rows reference: the ones the sweep must keep (rollback, --at)."""
    with Catalog(catalog, read_only=True) as cat:
        return referenced_images(cat)


def unreferenced(catalog: Path) -> set[str]:
    """Files and links under images/ that are not a referenced image."""
    keys = referenced(catalog)

    def kept(path: str) -> bool:
        sha = Path(path).name.split(".")[0]
        return bool(re.fullmatch("[0-9a-f]{64}", sha)) and bool(keys.contains([sha])[0])

    return {path for path in image_files(catalog) if not kept(path)}


@pytest.fixture
def tmpfs(tmp_path):
    """mount(path, size) -> True when a small tmpfs is mounted there (CI runs as root), else False."""
    mounted = []

    def mount(path: Path, size: str) -> bool:
        path.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
        if r.returncode == 0:
            mounted.append(path)
        return r.returncode == 0

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


# --- Faults while writing images: a full disk, an I/O error.


def test_full_image_disk_fails_the_run_keeps_old_rows_and_resumes(tmp_path, tmpfs):
    old, new = write_chartqa(tmp_path / "old", 10, seed=1), write_chartqa(tmp_path / "new", 900, seed=2, group=300)
    catalog = tmp_path / "catalog"
    real_fs = tmpfs(catalog / "images", "3200k")  # the old 10 images and ~390 new ones fit, not all 900
    env = None if real_fs else with_hook(tmp_path, write_fault(400, "raise OSError(errno.ENOSPC, "
                                                                    "os.strerror(errno.ENOSPC), str(final))"))
    assert run(ingest_args(old, catalog)).returncode == 0
    before = snapshot(catalog)
    assert len(before) == 10

    failed = run(ingest_args(new, catalog), env=env)
    assert failed.returncode == 1, failed.stderr
    message = " ".join(failed.stderr.split())
    assert "No space left on device" in message and "ENOSPC" in message and "images/chartqa/" in message
    assert f"chartqa/train: shard {TRAIN}:g" in message and str(new / "chartqa" / TRAIN) in message
    assert "Traceback" not in failed.stderr
    assert snapshot(catalog) == before  # readers still see the old rows, unchanged
    run_row = last_run(catalog)
    assert run_row["status"] == "failed" and "No space left on device" in run_row["message"]
    landed = pending_rows(catalog)
    assert landed % 300 == 0 and 0 < landed < 900  # whole shards only, kept for the resume
    assert not [p for p in image_files(catalog) if p.endswith(".tmp")]  # no partial file left

    # The cause fixed (more room), the same command resumes at the failed shard.
    if real_fs:
        subprocess.run(["mount", "-o", "remount,size=64m", str(catalog / "images")], check=True)
    resumed = run(ingest_args(new, catalog))
    assert resumed.returncode == 0, resumed.stderr
    assert last_run(catalog)["resumed_from"] == run_row["run_id"]
    assert snapshot(catalog) == clean_snapshot(tmp_path, new)
    # the killed shard's images were swept, and every referenced image is there
    assert unreferenced(catalog) == set() and len(referenced(catalog)) == len(image_files(catalog))
    assert pending_rows(catalog) == 0


def test_io_error_in_a_worker_fails_the_shard_not_one_error_row(tmp_path):
    mirror, catalog = write_chartqa(tmp_path / "m", 1200, seed=3, group=300), tmp_path / "catalog"
    env = with_hook(tmp_path, write_fault(3, "raise OSError(errno.EIO, os.strerror(errno.EIO), str(final))"))
    failed = run(ingest_args(mirror, catalog, "--workers", "2"), env=env)
    assert failed.returncode == 1
    message = " ".join(failed.stderr.split())
    assert "Input/output error (EIO)" in message and f"shard {TRAIN}:g" in message
    with Catalog(catalog, read_only=True) as cat:
        assert cat.con.execute("SELECT count(*) FROM samples").fetchone()[0] == 0
        assert cat.con.execute("SELECT count(*) FROM ingest_errors").fetchone()[0] == 0  # a fault is not bad input
    assert last_run(catalog)["status"] == "failed"
    assert pending_rows(catalog) % 300 == 0
    resumed = run(ingest_args(mirror, catalog, "--workers", "2"))
    assert resumed.returncode == 0, resumed.stderr
    assert snapshot(catalog) == clean_snapshot(tmp_path, mirror)


def test_a_worker_that_dies_fails_the_run(tmp_path):
    mirror, catalog = write_chartqa(tmp_path / "m", 1200, seed=4, group=300), tmp_path / "catalog"
    failed = run(ingest_args(mirror, catalog, "--workers", "2"), env=with_hook(tmp_path, write_fault(5, "os._exit(3)")))
    assert failed.returncode == 1
    assert "a worker process died" in failed.stderr and f"{TRAIN}:g" in failed.stderr
    assert last_run(catalog)["status"] == "failed"
    assert snapshot(catalog) == []
    resumed = run(ingest_args(mirror, catalog, "--workers", "2"))
    assert resumed.returncode == 0 and snapshot(catalog) == clean_snapshot(tmp_path, mirror)


def test_full_catalog_disk_says_no_space_left(tmp_path, tmpfs):
    """The catalog's own files on a full disk: the real cause, not DuckDB's follow-up error."""
    catalog = tmp_path / "catalog"
    if not tmpfs(catalog, "1m"):
        pytest.skip("cannot mount a small filesystem here (needs root)")
    rng = random.Random(0)
    rows = [{"messages": [{"role": "user", "content": rng.randbytes(4000).hex()},
                          {"role": "assistant", "content": rng.randbytes(4000).hex()}], "source": "x"}
            for _ in range(400)]  # 3 MB of text rows (no images): the catalog database fills the disk
    write_hub_parquet(tmp_path / "m/smoltalk/data/all" / split_file_name("train"), rows, smoltalk.FEATURES,
                      row_group_size=50)
    failed = run(["ingest", "smoltalk", "--mirror", str(tmp_path / "m"), "--catalog", str(catalog)])
    assert failed.returncode == 1
    message = " ".join(failed.stderr.split())
    assert "smoltalk/train: writing shard(s) data/all/train-00000-of-00001.parquet:g" in message
    assert "No space left on device" in message
    assert "no transaction is active" not in message and "Traceback" not in failed.stderr


def test_a_reader_on_a_full_disk_says_the_disk_is_full(tmp_path, tmpfs, sample_mirror_factory):
    # SQLite creates the write-ahead log when a catalog is opened; on a full disk it cannot, and the
    # reader saw only "PRAGMA journal_mode=WAL: disk I/O error".
    catalog = tmp_path / "catalog"
    if not tmpfs(catalog, "4m"):
        pytest.skip("cannot mount a small filesystem here (needs root)")
    assert run(["ingest", "chartqa", "--mirror", str(sample_mirror_factory("chartqa", rows=10)),
                "--catalog", str(catalog)]).returncode == 0
    filler = catalog / "filler"
    with open(filler, "wb") as f:
        with pytest.raises(OSError):  # ENOSPC
            while True:
                f.write(b"\0" * 65536)
                f.flush()
    read = run(["validate", "--catalog", str(catalog)])
    assert read.returncode == 2 and "the disk holding it is full" in read.stderr, read.stderr
    filler.unlink()
    assert run(["validate", "--catalog", str(catalog)]).returncode == 0


# --- Faults in the input files.


def test_corrupt_parquet_page_fails_its_shard_and_resumes_when_replaced(tmp_path):
    mirror, catalog = write_chartqa(tmp_path / "m", 900, seed=6, group=300), tmp_path / "catalog"
    path = mirror / "chartqa" / TRAIN
    good = path.read_bytes()
    column = pq.ParquetFile(path).metadata.row_group(1).column(0)  # image.bytes of the 2nd row group
    corrupt = bytearray(good)
    corrupt[column.data_page_offset:column.data_page_offset + 16] = b"\xff" * 16
    path.write_bytes(bytes(corrupt))

    failed = run(ingest_args(mirror, catalog))
    assert failed.returncode == 1
    message = " ".join(failed.stderr.split())
    assert f"shard {TRAIN}:g1:0 ({path})" in message and "Deserializing page header failed" in message
    assert snapshot(catalog) == [] and pending_rows(catalog) == 300  # shard g0 kept, g1 nothing, g2 not reached
    assert last_run(catalog)["status"] == "failed"

    path.write_bytes(good)
    resumed = run(ingest_args(mirror, catalog))
    assert resumed.returncode == 0, resumed.stderr
    assert last_run(catalog)["resumed_from"] is not None
    assert snapshot(catalog) == clean_snapshot(tmp_path, mirror)


def test_file_of_another_schema_is_caught_at_planning(tmp_path):
    rows = [{"image": noise_png(i), "question": f"q{i}", "label": "yes", "human_or_machine": 0} for i in range(5)]
    features = {**chartqa.FEATURES, "label": {"dtype": "string", "_type": "Value"}}
    features["question"] = features.pop("query")
    write_hub_parquet(tmp_path / "m/chartqa" / TRAIN, rows, features)
    r = run(ingest_args(tmp_path / "m", tmp_path / "catalog"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    message = " ".join(r.stderr.split())
    assert str(tmp_path / "m/chartqa" / TRAIN) in message
    assert "column 'query' is missing" in message and "column 'label' is string, expected a list of string" in message
    with Catalog(tmp_path / "catalog", read_only=True) as cat:
        assert cat.con.execute("SELECT count(*) FROM ingest_runs").fetchone()[0] == 0


# --- Atomic replace and --max-error-rate in records.


def test_max_error_rate_counts_records_and_is_checked_before_the_replace(tmp_path):
    catalog = tmp_path / "catalog"
    assert run(ingest_args(write_chartqa(tmp_path / "old", 5, seed=7), catalog)).returncode == 0
    before = snapshot(catalog)
    bad = write_chartqa(tmp_path / "bad", 12, seed=8, group=4, bad=set(range(2, 12)))  # 10 of 12 records fail
    over = run(ingest_args(bad, catalog, "--max-error-rate", "0.5"))
    assert over.returncode == 1
    assert "10 of 12 records rejected (error rate 83.33%) is above --max-error-rate 50.00%" in " ".join(over.stderr.split())
    assert snapshot(catalog) == before  # the old rows stay
    assert last_run(catalog)["status"] == "failed"
    within = run(ingest_args(bad, catalog, "--max-error-rate", "0.9"))  # same run, a looser limit: it commits
    assert within.returncode == 0, within.stderr
    with Catalog(catalog, read_only=True) as cat:
        assert cat.con.execute("SELECT count(*) FROM samples").fetchone()[0] == 2
        assert cat.con.execute("SELECT count(*) FROM ingest_errors").fetchone()[0] == 10


# --- Workers never outlive the command.


def process_tree(root_pid: int) -> set[int]:
    """Pids of every live descendant of `root_pid`, from /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
    found, frontier = set(), {root_pid}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    """Running or sleeping, not gone and not a zombie waiting for init to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "SIGINT"])
def test_no_worker_survives_the_main_process(how, tmp_path):
    mirror, catalog = write_chartqa(tmp_path / "m", 1200, seed=9, group=300), tmp_path / "catalog"
    env = with_hook(tmp_path, write_fault(0, "time.sleep(0.5)"))  # slow workers: still busy when killed
    main = subprocess.Popen(OCRCAT + ingest_args(mirror, catalog, "--workers", "2"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        while len(process_tree(main.pid)) < 3 and time.time() < deadline:  # 2 workers + resource tracker
            time.sleep(0.2)
        tree = process_tree(main.pid)
        assert len(tree) >= 3, "the workers did not start"
        time.sleep(1.0)
        if how == "SIGINT":
            os.killpg(main.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group
        else:
            main.send_signal(getattr(signal, how))
        code = main.wait(timeout=60)
        deadline = time.time() + 15
        while any(alive(p) for p in tree) and time.time() < deadline:
            time.sleep(0.2)
        assert not [p for p in tree if alive(p)], f"processes outlived the ingest ({how})"
    finally:
        for pid in [main.pid, *process_tree(main.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    assert code == {"SIGKILL": -9, "SIGTERM": 143, "SIGINT": 130}[how]
    if how != "SIGKILL":
        assert "interrupted" in main.stderr.read() and last_run(catalog)["status"] == "interrupted"
    resumed = run(ingest_args(mirror, catalog, "--workers", "2"))
    assert resumed.returncode == 0 and snapshot(catalog) == clean_snapshot(tmp_path, mirror)


def test_ctrl_c_during_a_duckdb_query_is_an_interrupt_not_a_fault(tmp_path):
    # DuckDB turns a Ctrl-C that arrives mid-query into its own error ("Query interrupted"), which
    # once read as a failed shard commit (exit 1, run `failed`) or a traceback. (SIGTERM waits for
    # the query to end: DuckDB only watches for SIGINT.) The query would take seconds, not forever:
    # a signal that lands just before it starts leaves it running, and the next query waits for it.
    how = "SIGINT"
    mirror, catalog = write_chartqa(tmp_path / "m", 60), tmp_path / "catalog"
    env = with_hook(tmp_path, f"""
        import os, signal, threading
        from ocrcat.ingest import runner
        _real = runner._commit_shards
        def _commit_shards(catalog, *args):
            threading.Timer(0.3, os.kill, (os.getpid(), signal.{how})).start()
            catalog.con.execute("SELECT count(*) FROM range(100000000) t(x) WHERE x % 7 = 3").fetchall()
            return _real(catalog, *args)
        runner._commit_shards = _commit_shards
    """)
    stopped = run(ingest_args(mirror, catalog), env=env)
    assert stopped.returncode == 130, stopped.stderr
    assert "interrupted: rerun the same command" in stopped.stderr and "Traceback" not in stopped.stderr
    assert last_run(catalog)["status"] == "interrupted"
    resumed = run(ingest_args(mirror, catalog))
    assert resumed.returncode == 0 and snapshot(catalog) == clean_snapshot(tmp_path, mirror)


# --- The sweep deletes only what ocrcat created.


def sentinel_tree(folder: Path) -> dict[Path, bytes]:
    """Files someone else owns, some named exactly like ocrcat's content-addressed files."""
    sha = "ab" + "0" * 62
    files = {folder / "ab" / f"{sha}.png": b"another catalog's image", folder / "notes.txt": b"my notes",
             folder / "ab" / "keep.me": b"mine"}
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


@pytest.mark.parametrize("link", ["images", "images/chartqa"])
def test_sweep_refuses_a_symlink_leading_outside(link, tmp_path):
    mirror, catalog = write_chartqa(tmp_path / "m", 10, seed=10), tmp_path / "catalog"
    outside = tmp_path / "elsewhere"
    files = sentinel_tree(outside / ("chartqa" if link == "images" else ""))
    (catalog / link).parent.mkdir(parents=True, exist_ok=True)
    (catalog / link).symlink_to(outside, target_is_directory=True)
    r = run(ingest_args(mirror, catalog))
    assert r.returncode == 0, r.stderr
    assert "outside the catalog" in r.stderr and "not swept" in r.stderr
    assert all(path.read_bytes() == data for path, data in files.items())  # every sentinel survives
    assert len(snapshot(catalog)) == 10


def test_sweep_never_follows_a_symlink_inside_images(tmp_path):
    mirror, catalog = write_chartqa(tmp_path / "m", 10, seed=11), tmp_path / "catalog"
    assert run(ingest_args(mirror, catalog)).returncode == 0
    outside = tmp_path / "elsewhere"
    files = sentinel_tree(outside)
    prefix = catalog / "images/chartqa/cd"
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / ("cd" + "1" * 62 + ".png")).symlink_to(outside / "notes.txt")  # named like ours, a link
    (catalog / "images/chartqa/ef").symlink_to(outside / "ab", target_is_directory=True)  # a linked folder
    own = catalog / "images/chartqa/README.txt"
    own.write_text("a user's file in the store")
    orphan = catalog / "images/chartqa/12" / ("12" + "3" * 62 + ".jpg")  # ours, unreferenced: swept
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"x")
    assert run(ingest_args(write_chartqa(tmp_path / "m2", 10, seed=12), catalog)).returncode == 0
    assert all(path.read_bytes() == data for path, data in files.items())
    assert own.exists() and (prefix / ("cd" + "1" * 62 + ".png")).is_symlink()
    assert not orphan.exists()
    assert unreferenced(catalog) == {
        "images/chartqa/README.txt", "images/chartqa/ef", f"images/chartqa/cd/cd{'1' * 62}.png"}


# --- PubTables staging: locked while in use, replaced only whole, under the catalog by default.


@pytest.fixture(scope="module")
def pubtables_mirror(tmp_path_factory) -> Path:
    from ocrcat.ingest import pubtables

    root = tmp_path_factory.mktemp("pt")
    pubtables.write_sample_mirror(root / "pubtables", 120, seed=3)
    return root


def pubtables_rows(catalog: Path) -> list[tuple]:
    with Catalog(catalog, read_only=True) as cat:
        return cat.con.execute("SELECT split, source_key, response, image_sha256 FROM samples "
                               "ORDER BY split, source_key").fetchall()


def pt_args(mirror: Path, catalog: Path, *extra: str) -> list[str]:
    return ["ingest", "pubtables", "--mirror", str(mirror), "--catalog", str(catalog), "-o", "tables_per_shard=8",
            *extra]


def test_staging_defaults_to_the_catalog_and_leaves_the_mirror_alone(pubtables_mirror, tmp_path):
    before = sorted(p.name for p in (pubtables_mirror / "pubtables").iterdir())
    r = run(pt_args(pubtables_mirror, tmp_path / "catalog"))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (pubtables_mirror / "pubtables").iterdir()) == before
    assert (tmp_path / "catalog/staging/pubtables/manifest.json").exists()
    assert len(pubtables_rows(tmp_path / "catalog")) == 120


def test_two_concurrent_pubtables_ingests_from_one_mirror(pubtables_mirror, tmp_path):
    reference = None
    for attempt in range(2):
        shared = tmp_path / f"stage{attempt}"  # empty: both race to build it
        procs = [subprocess.Popen(OCRCAT + pt_args(pubtables_mirror, tmp_path / f"c{attempt}-{i}", "-o",
                                                   f"staging={shared}", "--workers", "2"),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
        for proc in procs:
            out, errs = proc.communicate(timeout=600)
            assert proc.returncode == 0, errs
        for i in range(2):
            rows = pubtables_rows(tmp_path / f"c{attempt}-{i}")
            reference = reference or rows
            assert len(rows) == 120 and rows == reference
        assert not list(tmp_path.glob(f"stage{attempt}.tmp-*"))


def test_a_held_staging_makes_the_second_ingest_wait_and_say_who(pubtables_mirror, tmp_path):
    import fcntl

    staging = tmp_path / "stage"
    lock = os.open(tmp_path / "stage.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)  # as a process in the middle of building it
    os.write(lock, b"4242")
    proc = subprocess.Popen(OCRCAT + pt_args(pubtables_mirror, tmp_path / "catalog", "-o", f"staging={staging}"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(8)
        assert proc.poll() is None  # waiting, not failing and not building beside the holder
        assert not staging.exists()
    finally:
        os.close(lock)  # released: the ingest goes on
    out, errs = proc.communicate(timeout=600)
    assert proc.returncode == 0, errs
    assert "waiting for process 4242 to finish staging" in errs
    assert len(pubtables_rows(tmp_path / "catalog")) == 120


def test_incomplete_staging_is_never_reused(pubtables_mirror, tmp_path):
    staging = tmp_path / "stage"
    assert run(pt_args(pubtables_mirror, tmp_path / "c1", "-o", f"staging={staging}")).returncode == 0
    pack = next(staging.glob("train-*.jpg.pack"))
    with open(pack, "r+b") as f:
        f.truncate(pack.stat().st_size // 2)  # as a build cut short, or a damaged disk
    (staging.parent / "stage.tmp-999999").mkdir()  # a killed build's leftover
    r = run(pt_args(pubtables_mirror, tmp_path / "c2", "-o", f"staging={staging}"))
    assert r.returncode == 0, r.stderr
    assert pubtables_rows(tmp_path / "c2") == pubtables_rows(tmp_path / "c1")
    assert not (staging.parent / "stage.tmp-999999").exists()
