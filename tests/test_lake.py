"""The catalog as a DuckLake lake: readers during an ingest, concurrent writers, snapshots
(export --at, rollback, history), compaction, migration from catalog.duckdb, kill -9 mid-commit."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb

from ocrcat.catalog import Catalog, extensions
from ocrcat.catalog.schema import TABLES
from ocrcat.catalog.snapshots import compact, history, rollback
from ocrcat.ingest.runner import ingest
from ocrcat.mix.export import export_mixture
from ocrcat.mix.mixtures import create_mixture

OCRCAT = [sys.executable, "-m", "ocrcat.cli"]


def rows_of(catalog_dir: Path, table: str = "samples", exclude: str = "ingest_run") -> list[tuple]:
    with Catalog(catalog_dir, read_only=True) as cat:
        order = "sample_id" if table == "samples" else "ALL"
        return cat.con.execute(f"SELECT * EXCLUDE ({exclude}) FROM {table} ORDER BY {order}").fetchall()


def every_table(catalog_dir: Path) -> dict[str, list[tuple]]:
    with Catalog(catalog_dir, read_only=True) as cat:
        return {table: cat.con.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall() for table in TABLES}


def image_files(catalog_dir: Path) -> set[str]:
    return {p.relative_to(catalog_dir).as_posix() for p in (catalog_dir / "images").rglob("*") if p.is_file()}


READER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from ocrcat.catalog import Catalog, extensions
    seen, latencies = [], []
    while not Path(sys.argv[2]).exists():
        t = time.perf_counter()
        try:
            with Catalog(sys.argv[1], read_only=True) as cat:
                seen.append(cat.con.execute("SELECT count(*) FROM samples").fetchone()[0])
        except Exception as exc:  # no catalog yet
            seen.append(type(exc).__name__ + ": " + str(exc).splitlines()[0])
        latencies.append(time.perf_counter() - t)
        time.sleep(0.02)
    Path(sys.argv[3]).write_text(json.dumps({"seen": seen, "latencies": latencies}))
    """
)


def test_reader_polling_during_an_ingest_sees_only_whole_shards(sample_mirror_factory, tmp_path):
    root = sample_mirror_factory("chartqa", rows=300)  # train (240 rows, small row groups merged into one shard), val, test
    catalog_dir, stop, out = tmp_path / "catalog", tmp_path / "stop", tmp_path / "seen.json"
    with Catalog(catalog_dir):
        pass  # the reader starts on an empty lake
    reader = subprocess.Popen([sys.executable, "-c", READER, str(catalog_dir), str(stop), str(out)])
    try:
        done = subprocess.run(OCRCAT + ["ingest", "chartqa", "--mirror", str(root), "--catalog", str(catalog_dir)],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    finally:
        stop.touch()
        assert reader.wait(timeout=120) == 0
    result = json.loads(out.read_text())
    seen = result["seen"]
    assert all(isinstance(n, int) for n in seen), [n for n in seen if not isinstance(n, int)][:3]
    with Catalog(catalog_dir, read_only=True) as cat:
        shard_rows = [n for (n,) in cat.con.execute("SELECT rows FROM ingest_shards").fetchall()]
        total = cat.con.execute("SELECT count(*) FROM samples").fetchone()[0]
    assert sorted(shard_rows) == [30, 30, 240] and total == 300
    whole = {sum(c) for k in range(len(shard_rows) + 1) for c in itertools.combinations(shard_rows, k)}
    assert set(seen) <= whole  # never a part of a shard
    assert seen == sorted(seen)  # and never going back
    assert len(seen) >= 3 and max(result["latencies"]) < 30


def test_two_concurrent_ingests_equal_sequential(sample_mirror_factory, tmp_path):
    mirrors = {s: sample_mirror_factory(s, rows=120) for s in ("chartqa", "mathwriting")}
    together = tmp_path / "together"
    procs = [subprocess.Popen(OCRCAT + ["ingest", s, "--mirror", str(m), "--catalog", str(together)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for s, m in mirrors.items()]
    for p in procs:
        _, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr
    one_by_one = tmp_path / "sequential"
    with Catalog(one_by_one) as cat:
        for s, m in mirrors.items():
            ingest(cat, s, mirror=m)
    assert rows_of(together) == rows_of(one_by_one) and len(rows_of(together)) == 240
    assert rows_of(together, "ingest_errors", "run_id") == rows_of(one_by_one, "ingest_errors", "run_id")
    with Catalog(together, read_only=True) as cat:
        runs = cat.con.execute("SELECT run_id, status FROM ingest_runs ORDER BY run_id").fetchall()
    assert [r for r, _ in runs] == list(range(1, len(runs) + 1))  # unique run ids without a sequence
    assert {s for _, s in runs} == {"completed"}
    assert image_files(together) == image_files(one_by_one)


def test_a_run_whose_id_another_machine_took_too_moves_to_a_new_one(sample_mirror_factory, tmp_path):
    # Machines sharing a catalog do not share the commit lock: two runs starting at the same moment
    # can both take max + 1, and each one's updates used to land on the other's row too (a run
    # marked completed, with the other's row count, while it was still running). Here the other
    # machine's row is written with the id this run took; the run moves, the other keeps its id.
    from ocrcat.ingest.runner import _start_run, _unique_run_id

    catalog_dir = tmp_path / "catalog"
    with Catalog(catalog_dir) as cat:
        ingest(cat, "mathwriting", mirror=sample_mirror_factory("mathwriting"), splits=["train"])  # run 1
        run_id, _ = _start_run(cat, "chartqa", "train", "f", {})
        assert run_id == 2
        cat.commit(lambda con: con.execute(
            "INSERT INTO ingest_runs (run_id, source, split, fingerprint, arguments, started_at, status) "
            "VALUES (2, 'latex_formulas', 'train', 'g', '{}', now(), 'running')"), "the other machine's start")
        assert _unique_run_id(cat, run_id, "chartqa", "train") == 3
        assert cat.con.execute("SELECT run_id, source, status FROM ingest_runs ORDER BY run_id").fetchall() == [
            (1, "mathwriting", "completed"), (2, "latex_formulas", "running"), (3, "chartqa", "running")]
        assert _unique_run_id(cat, 2, "latex_formulas", "train") == 2  # unique now: nothing moves


def test_export_at_a_snapshot_is_byte_identical_after_later_ingests(sample_mirror_factory, tmp_path):
    catalog_dir = tmp_path / "catalog"
    with Catalog(catalog_dir) as cat:
        ingest(cat, "chartqa", mirror=sample_mirror_factory("chartqa"), limit=20)
        create_mixture(cat, "charts", [("chartqa", "source <> 'smoltalk'", 1.5)], seed=3)
        first = export_mixture(cat, "charts", tmp_path / "then")
    snapshot = first["snapshot"]
    with Catalog(catalog_dir) as cat:  # later: the split re-ingested whole, another source added
        ingest(cat, "chartqa", mirror=sample_mirror_factory("chartqa"))
        ingest(cat, "mathwriting", mirror=sample_mirror_factory("mathwriting"))
        assert export_mixture(cat, "charts", tmp_path / "now")["rows"] != first["rows"]
    again = subprocess.run(OCRCAT + ["export", "charts", "--out", str(tmp_path / "again"), "--at", str(snapshot),
                                     "--catalog", str(catalog_dir)], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    for name in ("charts.all.parquet", "manifest.json"):
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "then" / name).read_bytes()
    missing = subprocess.run(OCRCAT + ["export", "charts", "--out", str(tmp_path / "x"), "--at", "99999",
                                       "--catalog", str(catalog_dir)], capture_output=True, text=True)
    assert missing.returncode == 2 and "has no snapshot 99999" in missing.stderr


def test_compact_says_why_the_file_count_can_rise(sample_mirror_factory, tmp_path):
    # An ingest leaves its bookkeeping rows inline in the metadata; compact writes each such table's
    # rows out as a file, so there can be more data files after than before: the message says so.
    catalog_dir = tmp_path / "catalog"
    with Catalog(catalog_dir) as cat:
        ingest(cat, "mathwriting", mirror=sample_mirror_factory("mathwriting"))
        [[inlined]] = cat.con.execute(
            "SELECT count(*) FROM __ducklake_metadata_lake.ducklake_inlined_data_tables").fetchall()
    assert inlined > 0
    first = subprocess.run(OCRCAT + ["compact", "--catalog", str(catalog_dir)], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    before, after, flushed = map(int, re.fullmatch(
        r"data files (\d+) -> (\d+) \((\d+) tables' rows kept in the metadata written out as files\), "
        r"\d+ snapshots expired, 0 image files swept\n", first.stdout).groups())
    assert 0 < flushed <= inlined and after > before
    again = subprocess.run(OCRCAT + ["compact", "--catalog", str(catalog_dir)], capture_output=True, text=True)
    assert re.fullmatch(rf"data files {after} -> {after}, 0 snapshots expired, 0 image files swept\n", again.stdout)


def test_rollback_past_a_replaced_split_whose_rows_share_a_file_with_another_run(sample_mirror_factory, tmp_path):
    # Compaction merges runs' files: train's rows and val's (ingested after snapshot N) end up in one
    # Parquet file. Then train is replaced (its rows deleted from that file) and N is restored, which
    # deletes val's rows from the same file. DuckLake hides a file's rows deleted since N from a
    # time-travel read in a transaction that deleted rows from the file, so a rollback that deleted
    # first and read snapshot N second restored nothing: samples empty.
    catalog_dir = tmp_path / "catalog"
    root = sample_mirror_factory("chartqa", rows=120)
    with Catalog(catalog_dir) as cat:
        ingest(cat, "chartqa", mirror=root, splits=["train"], limit=60)
        before = cat.snapshot()
    tables_before = every_table(catalog_dir)
    with Catalog(catalog_dir) as cat:
        ingest(cat, "chartqa", mirror=root, splits=["val"])
        compact(cat)
        [[files]] = cat.con.execute(
            "SELECT count(*) FROM __ducklake_metadata_lake.ducklake_data_file WHERE end_snapshot IS NULL "
            "AND table_id = (SELECT table_id FROM __ducklake_metadata_lake.ducklake_table "
            "                WHERE table_name = 'samples' AND end_snapshot IS NULL)").fetchall()
    assert files == 1  # the case: both runs' rows in one file
    with Catalog(catalog_dir) as cat:
        ingest(cat, "chartqa", mirror=root, splits=["train"], limit=10)
    done = subprocess.run(OCRCAT + ["rollback", str(before), "--catalog", str(catalog_dir)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert every_table(catalog_dir) == tables_before
    assert len(tables_before["samples"]) == 60
    assert not [p for p in catalog_dir.iterdir() if p.name.startswith(".rollback-")]  # its scratch files went


def test_expiring_snapshots_keeps_the_images_of_the_oldest_kept_one(sample_mirror_factory, tmp_path):
    # The oldest kept snapshot holds rows inserted before it; the sweep counted only rows inserted
    # since, so a rollback to that snapshot found its images deleted.
    catalog_dir = tmp_path / "catalog"
    root = sample_mirror_factory("chartqa", rows=120)
    with Catalog(catalog_dir) as cat:
        ingest(cat, "chartqa", mirror=root, splits=["train"], limit=60)
        ingest(cat, "chartqa", mirror=root, splits=["train"], limit=10)  # drops 50 rows and their images
        [started] = [h["snapshot"] for h in history(cat) if h["message"].endswith("run started")
                     and h["snapshot"] > min(h["snapshot"] for h in history(cat) if "completed" in h["message"])]
        assert cat.con.execute(f"SELECT count(*) FROM samples AT (VERSION => {started})").fetchone()[0] == 60
        compact(cat, older_than_snapshot=started)  # every snapshot before it expires; it is kept
        rollback(cat, started)
        paths = [p for (p,) in cat.con.execute("SELECT image_path FROM samples").fetchall()]
    assert len(paths) == 60 and set(paths) <= image_files(catalog_dir)


def test_rollback_restores_rows_images_mixtures_and_can_be_undone(sample_mirror_factory, tmp_path):
    catalog_dir = tmp_path / "catalog"
    root = sample_mirror_factory("chartqa", rows=120)
    with Catalog(catalog_dir) as cat:
        ingest(cat, "chartqa", mirror=root, splits=["train"], limit=60)
        create_mixture(cat, "charts", [("chartqa", "source = 'chartqa'", 1)])
        before = cat.snapshot()
    rows_before, files_before = rows_of(catalog_dir), image_files(catalog_dir)
    tables_before = every_table(catalog_dir)
    with Catalog(catalog_dir) as cat:  # an unwanted ingest: fewer rows, other images; a changed mixture
        ingest(cat, "chartqa", mirror=root, splits=["train"], limit=10)
        create_mixture(cat, "charts", [("chartqa", "source = 'chartqa'", 2)], replace=True)
        compact(cat)
        after = cat.snapshot()
        assert cat.con.execute("SELECT count(*) FROM samples").fetchone()[0] == 10
    # Files the earlier snapshot needs survive the sweep, as long as that snapshot is kept.
    assert files_before <= image_files(catalog_dir)
    done = subprocess.run(OCRCAT + ["rollback", str(before), "--catalog", str(catalog_dir)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert rows_of(catalog_dir) == rows_before
    # Every table as it was: runs, resume marks, errors, mixtures, the vision mode (catalog_info).
    assert every_table(catalog_dir) == tables_before
    assert all(tables_before[t] for t in ("ingest_runs", "ingest_shards", "mixtures", "mixture_components",
                                          "catalog_info"))
    with Catalog(catalog_dir, read_only=True) as cat:
        assert cat.con.execute("SELECT count(*) FROM mix_charts").fetchone()[0] == 60  # weight 1 again
        paths = {p for (p,) in cat.con.execute("SELECT image_path FROM samples").fetchall()}
        made = cat.snapshot()
    assert paths <= image_files(catalog_dir)
    checked = subprocess.run(OCRCAT + ["validate", "--catalog", str(catalog_dir)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    with Catalog(catalog_dir) as cat:  # the rollback is a snapshot too: undo it
        rollback(cat, after)
        assert cat.con.execute("SELECT count(*) FROM samples").fetchone()[0] == 10
        assert cat.con.execute("SELECT count(*) FROM mix_charts").fetchone()[0] == 20
        kinds = [h["kind"] for h in history(cat)]
    assert made > after and kinds[:2] == ["rollback", "rollback"]
    shown = subprocess.run(OCRCAT + ["history", "--json", "--catalog", str(catalog_dir)], capture_output=True, text=True)
    assert shown.returncode == 0 and json.loads(shown.stdout)[0]["message"] == f"rollback to snapshot {after}"


def test_migrate_a_catalog_duckdb_keeps_rows_images_and_views(sample_mirror_factory, tmp_path):
    lake = tmp_path / "lake"
    with Catalog(lake) as cat:
        for source in ("chartqa", "smoltalk"):
            ingest(cat, source, mirror=sample_mirror_factory(source))
        create_mixture(cat, "mix", [("charts", "source = 'chartqa'", 0.5)], text_share=0.2, seed=5)
        view_sql = cat.con.execute("SELECT sql FROM duckdb_views() WHERE view_name = 'mix_mix'").fetchone()[0]
        tables = [t for (t,) in cat.con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = 'lake'").fetchall()]
    # A first-version catalog: the same tables in one DuckDB file (run ids from a sequence), same images.
    old = tmp_path / "old"
    shutil.copytree(lake / "images", old / "images")
    with Catalog(lake, read_only=True) as cat:
        cat.con.execute(f"ATTACH '{old / 'catalog.duckdb'}' AS legacy")
        for table in tables:
            exclude = " EXCLUDE (snapshot)" if table == "ingest_runs" else ""
            cat.con.execute(f"CREATE TABLE legacy.{table} AS SELECT *{exclude} FROM lake.{table}")
        cat.con.execute("USE legacy")
        cat.con.execute(view_sql)
    refused = subprocess.run(OCRCAT + ["stats", "--catalog", str(old)], capture_output=True, text=True)
    assert refused.returncode == 2 and "ocrcat migrate" in refused.stderr
    done = subprocess.run(OCRCAT + ["migrate", "--catalog", str(old)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not (old / "catalog.duckdb").exists() and (old / "catalog.duckdb.migrated").exists()
    with Catalog(lake, read_only=True) as a, Catalog(old, read_only=True) as b:
        for table in ("samples", "ingest_errors", "ingest_shards", "mixtures", "mixture_components", "catalog_info"):
            query = f"SELECT * FROM {table} ORDER BY ALL"
            assert a.con.execute(query).fetchall() == b.con.execute(query).fetchall(), table
        query = "SELECT * FROM mix_mix ORDER BY position"
        assert a.con.execute(query).fetchall() == b.con.execute(query).fetchall() != []
    assert image_files(old) == image_files(lake)
    checked = subprocess.run(OCRCAT + ["validate", "--catalog", str(old)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    again = subprocess.run(OCRCAT + ["migrate", "--catalog", str(old)], capture_output=True, text=True)
    assert again.returncode == 2 and "nothing to migrate" in again.stderr


MID_COMMIT_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from ocrcat.catalog import Catalog, extensions
    from ocrcat.ingest.runner import ingest

    real_commit = Catalog.commit
    shards = 0
    def commit(self, work, message, **extra):
        global shards
        if extra.get("kind") == "shard":
            shards += 1
            if shards == 2:  # the second shard's rows are written to Parquet, then the process dies
                def dying(con):
                    work(con)
                    os.kill(os.getpid(), signal.SIGKILL)
                return real_commit(self, dying, message, **extra)
        return real_commit(self, work, message, **extra)
    Catalog.commit = commit
    with Catalog(sys.argv[1]) as cat:
        ingest(cat, "chartqa", mirror=sys.argv[2])
    """
)


def test_kill_9_mid_commit_then_rerun_equals_uninterrupted(sample_mirror_factory, tmp_path):
    root = sample_mirror_factory("chartqa", rows=300)
    killed = subprocess.run([sys.executable, "-c", MID_COMMIT_KILLER, str(tmp_path / "killed"), str(root)])
    assert killed.returncode == -9
    rerun = subprocess.run(OCRCAT + ["ingest", "chartqa", "--mirror", str(root), "--catalog", str(tmp_path / "killed")],
                           capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    with Catalog(tmp_path / "clean") as cat:
        ingest(cat, "chartqa", mirror=root)
    assert rows_of(tmp_path / "killed") == rows_of(tmp_path / "clean") and len(rows_of(tmp_path / "clean")) == 300
    # No Parquet file of the dead commit is left: every data file is one a kept snapshot references.
    with Catalog(tmp_path / "killed", read_only=True) as cat:
        known = {Path(p).name for (p,) in cat.con.execute(
            "SELECT path FROM __ducklake_metadata_lake.ducklake_data_file UNION ALL "
            "SELECT path FROM __ducklake_metadata_lake.ducklake_delete_file").fetchall()}
    on_disk = {p.name for p in (tmp_path / "killed" / "lake").rglob("*.parquet")}
    assert on_disk and on_disk <= known


def test_extensions_load_offline_from_the_packages(tmp_path):
    """No network here: the catalog opens from the PyPI packages' binaries, with no waiting."""
    started = time.perf_counter()
    with Catalog(tmp_path / "c") as cat:
        loaded = dict(cat.con.execute("SELECT extension_name, install_path FROM duckdb_extensions() "
                                      "WHERE loaded AND extension_name IN ('ducklake', 'sqlite_scanner')").fetchall())
    assert set(loaded) == {"ducklake", "sqlite_scanner"}
    assert time.perf_counter() - started < 20
    # sqlite's package file is named sqlite.duckdb_extension; LOAD by path needs sqlite_scanner: a link.
    link = extensions._packaged("sqlite")
    assert link.name == "sqlite_scanner.duckdb_extension"
    assert link.resolve().parts[-4:] == ("duckdb_extension_sqlite", "extensions", f"v{duckdb.__version__}",
                                         "sqlite.duckdb_extension")


def test_read_only_sql_reads_the_lake_files_and_changes_none(sample_mirror_factory, tmp_path):
    """The sandbox of `ocrcat sql` lets DuckLake read exactly the snapshot's Parquet files; DuckLake's
    maintenance functions (SELECTs that would write or delete data files) and writes are refused,
    and no file under the catalog changes."""
    catalog_dir = tmp_path / "catalog"
    root = sample_mirror_factory("chartqa", rows=120)
    with Catalog(catalog_dir) as cat:
        ingest(cat, "chartqa", mirror=root, splits=["train"], limit=40)
        ingest(cat, "chartqa", mirror=root, splits=["train"], limit=30)  # old files stay for snapshots
        for i in range(2):  # two small files of one table: work for a merge
            cat.commit(lambda con: con.execute("INSERT INTO mixture_components SELECT 'm', i, 'c' || i, 'true', 1 "
                                               "FROM range(20) t(i)"), "small files")
        snapshots = cat.con.execute("SELECT count(*) FROM lake.snapshots()").fetchone()[0]
    common = ["--catalog", str(catalog_dir)]

    def tree() -> dict[str, int]:
        return {p.relative_to(catalog_dir).as_posix(): p.stat().st_mtime_ns for p in catalog_dir.rglob("*")
                if p.is_file() and p.suffix != ".lock" and "-wal" not in p.name and "-shm" not in p.name}

    before = tree()
    assert any(name.startswith("lake/") and name.endswith(".parquet") for name in before)
    counted = subprocess.run(OCRCAT + ["sql", "SELECT count(*) AS n FROM samples", "--json"] + common,
                             capture_output=True, text=True)
    assert counted.returncode == 0, counted.stderr
    assert json.loads(counted.stdout) == [{"n": 30}]
    for statement in ("SELECT * FROM ducklake_merge_adjacent_files('lake')",
                      "SELECT * FROM ducklake_cleanup_old_files('lake', cleanup_all => true)",
                      "SELECT * FROM ducklake_delete_orphaned_files('lake', cleanup_all => true)",
                      "SELECT * FROM ducklake_expire_snapshots('lake', versions => [1, 2, 3])",
                      "SELECT * FROM samples AT (VERSION => 1)",
                      f"COPY (SELECT 1) TO '{catalog_dir}/images/x.csv'",
                      "DELETE FROM samples"):
        done = subprocess.run(OCRCAT + ["sql", statement] + common, capture_output=True, text=True)
        if "AT (VERSION" in statement:
            assert done.returncode == 0, done.stderr  # time travel to an earlier snapshot only reads
        elif statement.startswith(("COPY", "DELETE")) or "merge" in statement:  # the others find nothing to do
            assert done.returncode == 2, (statement, done.stdout)
        assert tree() == before, statement  # whatever the outcome: no file written, deleted or changed
    with Catalog(catalog_dir, read_only=True) as cat:
        assert cat.con.execute("SELECT count(*) FROM samples").fetchone()[0] == 30
        assert cat.con.execute("SELECT count(*) FROM lake.snapshots()").fetchone()[0] == snapshots


def test_seen_ids_find_repeats_above_2_63_and_after_merges():
    """The runner's duplicate check (8 bytes an id, so the writer's memory stays flat)."""
    import numpy as np

    from ocrcat.ingest.runner import SeenIds

    seen = SeenIds(np.array([2**64 - 1, 5, 2**63], dtype=np.uint64))
    assert seen.known(np.array([5, 6, 2**63, 2**64 - 1, 0], dtype=np.uint64)).tolist() == [True, False, True, True, False]
    for i in range(3 * SeenIds.MERGE_AT):
        seen.add(np.array([1000 + 2 * i, 1001 + 2 * i], dtype=np.uint64))
    assert len(seen.chunks) <= SeenIds.MERGE_AT + 1
    probe = np.array([1000, 1001 + 2 * (3 * SeenIds.MERGE_AT - 1), 999, 7], dtype=np.uint64)
    assert seen.known(probe).tolist() == [True, True, False, False]
    assert SeenIds().known(np.array([1], dtype=np.uint64)).tolist() == [False]


def test_two_connections_spilling_at_once_keep_their_own_data(tmp_path):
    """DuckDB names spill files the same everywhere and removes the folder on close: each
    connection (in any process) must spill into a folder of its own."""
    from ocrcat.catalog.store import connect

    query = "SELECT i, md5(i::VARCHAR) AS s FROM range(2000000) t(i) ORDER BY s"
    first, second = connect(), connect()
    for con in (first, second):
        con.execute("SET memory_limit = '64MB'")
        con.execute("SET preserve_insertion_order = true")
    assert first.execute("SELECT current_setting('temp_directory')").fetchone() != \
        second.execute("SELECT current_setting('temp_directory')").fetchone()
    reading = first.execute(query)
    head = reading.fetchmany(1000)  # the first has spilled its sorted runs and is part-way through
    assert second.execute(f"SELECT count(*), sum(i) FROM ({query})").fetchall() == [(2_000_000, 1999999000000)]
    second.close()  # removes its own spill folder, and so must not remove the first's
    rest = reading.fetchall()
    assert len(head) + len(rest) == 2_000_000 and sum(i for i, _ in head + rest) == 1999999000000
    keys = [s for _, s in head + rest]
    assert keys == sorted(keys)
    first.close()


def test_spill_folders_of_dead_processes_are_removed():
    from ocrcat.catalog import store

    parent = Path(store._spill_folder()).parent
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    (parent / f"{dead}-0").mkdir()
    (parent / f"{dead}-0" / "duckdb_temp_storage_DEFAULT-0.tmp").write_bytes(b"x" * 10)
    store.connect().close()
    assert not (parent / f"{dead}-0").exists()


def test_rollback_before_the_tables_existed_is_refused_in_one_line(sample_mirror_factory, tmp_path):
    catalog_dir = tmp_path / "catalog"
    with Catalog(catalog_dir) as cat:
        ingest(cat, "chartqa", mirror=sample_mirror_factory("chartqa", rows=10), splits=["train"])
    done = subprocess.run(OCRCAT + ["rollback", "0", "--catalog", str(catalog_dir)], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.startswith("error: snapshot 0 predates the catalog's tables") and done.stderr.count("\n") == 1
