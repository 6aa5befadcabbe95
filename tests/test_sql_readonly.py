"""`ocrcat sql` without --write cannot change anything anywhere; it still reads what it may.

Every forbidden statement is tried through the CLI and through `read_only_query`, the call it
wraps; each time the whole workspace (catalog, images, an allowed folder, a folder outside, a
private HOME) must be byte-identical afterwards, with no file or folder created anywhere in it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import duckdb
import pytest
from typer.testing import CliRunner

from ocrcat.catalog import Catalog, CatalogError
from ocrcat.catalog.snapshots import compact
from ocrcat.cli import app
from ocrcat.ingest.runner import ingest
from ocrcat.inspection.query import read_only_query

OCRCAT = [sys.executable, "-m", "ocrcat.cli"]


@pytest.fixture(scope="module")
def workspace(sample_mirror_factory, tmp_path_factory):
    """<ws>/catalog (a real ingested catalog), <ws>/allowed/export.parquet, <ws>/outside/secret.txt, <ws>/home."""
    ws = tmp_path_factory.mktemp("sql")
    with Catalog(ws / "catalog") as cat:
        ingest(cat, "chartqa", mirror=sample_mirror_factory("chartqa", rows=8))
    (ws / "allowed").mkdir()
    duckdb.sql(f"COPY (SELECT 7 AS v UNION ALL SELECT 8) TO '{ws / 'allowed' / 'export.parquet'}'")
    (ws / "outside").mkdir()
    (ws / "outside" / "secret.txt").write_text("not for ocrcat sql\n")
    (ws / "home").mkdir()
    return ws


@pytest.fixture
def env(workspace, monkeypatch):
    # Relative paths, DuckDB's home folder (extensions, secrets) and the spill folder all land in the workspace.
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("HOME", str(workspace / "home"))
    monkeypatch.setenv("TMPDIR", str(workspace / "outside"))
    return workspace


def snapshot(root) -> dict:
    """Every folder and file under root: path -> file bytes (or the link target, or None for a folder)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                found[rel] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                found[rel] = None
            else:
                with open(path, "rb") as f:
                    found[rel] = f.read()
    return found


def an_image(ws) -> str:
    with Catalog(ws / "catalog", read_only=True) as cat:
        return str(ws / "catalog" / cat.con.execute("SELECT min(image_path) FROM samples").fetchone()[0])


FORBIDDEN = {
    "copy_out": "COPY samples TO '{ws}/outside/dump.csv'",
    "copy_relative": "COPY samples TO 'dump.parquet'",
    "copy_over_image": "COPY (SELECT 'x') TO '{image}' (FORMAT csv)",
    "copy_into_allowed": "COPY (SELECT 1) TO '{ws}/allowed/new.csv'",
    "copy_over_allowed": "COPY (SELECT 1 AS v) TO '{ws}/allowed/export.parquet'",
    "explain_analyze_copy": "EXPLAIN ANALYZE COPY (SELECT 1) TO '{ws}/allowed/e.csv'",
    "export": "EXPORT DATABASE '{ws}/outside/export'",
    "attach_new": "ATTACH '{ws}/outside/new.duckdb' AS n",
    "attach_and_create": "ATTACH '{ws}/outside/new.duckdb' AS n; CREATE TABLE n.t AS SELECT 1",
    "attach_memory": "ATTACH ':memory:' AS m; CREATE TABLE m.t AS SELECT 1",
    "install": "INSTALL httpfs",
    "load": "LOAD httpfs",
    "load_builtin": "LOAD parquet",
    "set_access": "SET enable_external_access = true",
    "set_threads": "SET threads = 1",
    "unlock": "SET lock_configuration = false",
    "reset": "RESET allowed_directories",
    "pragma_setting": "PRAGMA enable_profiling",
    "profile_to_file": "SET profiling_output = '{ws}/outside/profile.json'",
    "secret": "CREATE PERSISTENT SECRET s (TYPE s3, KEY_ID 'k', SECRET 'v')",
    "delete": "DELETE FROM samples",
    "drop": "DROP TABLE samples",
    "update": "UPDATE samples SET text = 'changed'",
    "insert": "INSERT INTO catalog_info VALUES ('x', 'y')",
    "create": "CREATE TABLE t AS SELECT 1",
    "create_temp": "CREATE TEMP TABLE t AS SELECT 1",
    "checkpoint": "CHECKPOINT",
    "call_checkpoint": "CALL force_checkpoint()",
    "vacuum": "VACUUM",
    "multi": "SELECT 1; COPY samples TO '{ws}/outside/second.csv'",
    "read_outside": "SELECT * FROM read_text('{ws}/outside/secret.txt')",
    "read_etc": "SELECT * FROM read_csv('/etc/passwd')",
    "glob": "SELECT * FROM glob('{ws}/outside/*')",
    "network": "SELECT * FROM read_parquet('http://127.0.0.1:9/x.parquet')",
}


@pytest.mark.parametrize("name", list(FORBIDDEN))
def test_forbidden_statement_changes_nothing(env, name):
    statement = FORBIDDEN[name].format(ws=env, image=an_image(env))
    before = snapshot(env)
    out = CliRunner().invoke(app, ["sql", statement, "--catalog", str(env / "catalog"), "--allow", str(env / "allowed")])
    assert out.exit_code == 2, out.output
    assert out.stdout == ""
    assert out.stderr.startswith("error: ") and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.count("\n") == 1 or "LINE 1" in out.stderr, out.stderr  # one line (DuckDB may add where)
    assert snapshot(env) == before

    with pytest.raises((CatalogError, duckdb.Error)):
        read_only_query(env / "catalog", statement, [env / "allowed"])
    assert snapshot(env) == before


def test_refusal_says_what_and_what_to_do(env):
    out = CliRunner().invoke(app, ["sql", "COPY samples TO 'x.csv'", "--catalog", str(env / "catalog")])
    assert out.exit_code == 2
    assert out.stderr == ("error: ocrcat sql is read-only without --write: it runs queries only (SELECT, FROM, WITH, "
                          "DESCRIBE, SHOW, SUMMARIZE); refused a COPY statement before running anything, so nothing "
                          "changed\n")
    outside = CliRunner().invoke(app, ["sql", f"SELECT * FROM read_text('{env}/outside/secret.txt')",
                                       "--catalog", str(env / "catalog")])
    assert outside.exit_code == 2
    assert f"{env}/outside/secret.txt is not readable here" in outside.stderr and "--allow PATH" in outside.stderr
    assert "not for ocrcat sql" not in outside.output


def test_queries_and_allowed_reads_still_work(env):
    before = snapshot(env)
    cat = ["--catalog", str(env / "catalog")]
    runner = CliRunner()
    for query in ["SELECT count(*) FROM samples", "DESCRIBE samples", "SHOW TABLES", "SUMMARIZE samples",
                  "WITH s AS (SELECT split FROM samples) SELECT split, count(*) FROM s GROUP BY 1",
                  "FROM ingest_runs", "PRAGMA table_info('samples')"]:
        out = runner.invoke(app, ["sql", query, "--json"] + cat)
        assert out.exit_code == 0, (query, out.output)
    # Files the user names with --allow: a folder (absolute or relative spelling) or one file.
    for allow, path in [(env / "allowed", env / "allowed" / "export.parquet"), ("allowed", "allowed/export.parquet"),
                        (env / "allowed" / "export.parquet", env / "allowed" / "export.parquet")]:
        out = runner.invoke(app, ["sql", f"SELECT sum(v) AS s FROM '{path}'", "--csv", "--allow", str(allow)] + cat)
        assert out.exit_code == 0, out.output
        assert out.stdout == "s\n15\n"
    assert read_only_query(env / "catalog", "SELECT sum(v) FROM 'allowed/*.parquet'", ["allowed"]).rows == [(15,)]
    # Without --allow the same file is out of reach.
    out = runner.invoke(app, ["sql", f"SELECT * FROM '{env}/allowed/export.parquet'"] + cat)
    assert out.exit_code == 2 and "--allow" in out.stderr
    assert snapshot(env) == before


def test_no_statement_is_a_user_error(env):
    for query in ["", "  ;", "/* only a comment */"]:
        out = CliRunner().invoke(app, ["sql", query, "--catalog", str(env / "catalog")])
        assert out.exit_code == 2 and out.stderr.startswith("error: no SQL statement given"), (query, out.output)


def test_several_queries_are_refused_not_reduced_to_the_last(env):
    """`SELECT 1; SELECT 2` printed only 2, with exit 0."""
    for query in ["SELECT 1; SELECT 2", "SELECT count(*) FROM samples; SELECT 2;"]:
        out = CliRunner().invoke(app, ["sql", query, "--catalog", str(env / "catalog")])
        assert out.exit_code == 2 and out.stdout == "", (query, out.output)
        assert out.stderr == ("error: ocrcat sql runs one query at a time and got 2 (only the last result would be "
                              "shown); run each with its own ocrcat sql call\n"), out.stderr
        with pytest.raises(CatalogError, match="one query at a time"):
            read_only_query(env / "catalog", query)
    out = CliRunner().invoke(app, ["sql", "SELECT 1 AS a;", "--csv", "--catalog", str(env / "catalog")])
    assert out.exit_code == 0 and out.stdout == "a\n1\n"  # a trailing ; is still one statement


def test_write_runs_a_script_whose_last_statement_alone_may_be_a_query(env, tmp_path):
    catalog = tmp_path / "catalog"
    shutil.copytree(env / "catalog", catalog)
    with Catalog(catalog, read_only=True) as cat:
        total, val = cat.con.execute("SELECT count(*), count(*) FILTER (WHERE split = 'val') FROM samples").fetchone()
    assert val > 0
    runner = CliRunner()
    out = runner.invoke(app, ["sql", "SELECT 1; DELETE FROM samples", "--write", "--catalog", str(catalog)])
    assert out.exit_code == 2 and out.stderr.startswith("error: statement 1 of 2 is a query whose result would not "
                                                        "be shown") and out.stderr.count("\n") == 1, out.output
    count = ["sql", "SELECT count(*) AS n FROM samples", "--csv", "--catalog", str(catalog)]
    assert runner.invoke(app, count).stdout == f"n\n{total}\n"  # refused before anything ran
    script = "BEGIN; DELETE FROM samples WHERE split = 'val'; COMMIT; SELECT count(*) AS n FROM samples"
    out = runner.invoke(app, ["sql", script, "--write", "--csv", "--catalog", str(catalog)])
    assert out.exit_code == 0 and out.stdout == f"n\n{total - val}\n", out.output
    assert runner.invoke(app, count).stdout == f"n\n{total - val}\n"


def test_allow_may_not_reach_into_the_catalog(env):
    before = snapshot(env)
    for allow in [env / "catalog", env / "catalog" / "images", env, "."]:
        out = CliRunner().invoke(app, ["sql", "SELECT 1", "--catalog", str(env / "catalog"), "--allow", str(allow)])
        assert out.exit_code == 2 and "holds the catalog folder" in out.stderr, (allow, out.output)
    out = CliRunner().invoke(app, ["sql", "SELECT 1", "--catalog", str(env / "catalog"), "--allow", "missing"])
    assert out.exit_code == 2 and "--allow missing: no such file or folder" in out.stderr
    assert snapshot(env) == before


def test_csv_lines_end_with_newline(env):
    out = subprocess.run(OCRCAT + ["sql", "SELECT 1 AS a, 'x,y' AS b UNION ALL SELECT 2, 'z' ORDER BY a", "--csv",
                                   "--catalog", str(env / "catalog")], capture_output=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b'a,b\n1,"x,y"\n2,z\n'


def test_cli_refuses_in_a_real_process_and_write_still_writes(env, tmp_path):
    catalog = tmp_path / "catalog"
    shutil.copytree(env / "catalog", catalog)
    before = snapshot(tmp_path)
    image = an_image(tmp_path)
    refused = subprocess.run(OCRCAT + ["sql", f"COPY (SELECT 'x') TO '{image}' (FORMAT csv)", "--catalog", str(catalog)],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.startswith("error: ocrcat sql is read-only"), refused.stderr
    assert snapshot(tmp_path) == before
    # --write is the way to change things, and it does.
    written = subprocess.run(OCRCAT + ["sql", f"COPY (SELECT 1 AS v) TO '{tmp_path}/out.csv'", "--write",
                                       "--catalog", str(catalog)], capture_output=True, text=True)
    assert written.returncode == 0, written.stderr
    assert (tmp_path / "out.csv").read_text() == "v\n1\n"
    with_allow = subprocess.run(OCRCAT + ["sql", "SELECT 1", "--write", "--allow", str(tmp_path), "--catalog", str(catalog)],
                                capture_output=True, text=True)
    assert with_allow.returncode == 2 and "--allow is for queries without --write" in with_allow.stderr


def test_time_travel_reads_a_snapshot_whose_rows_were_replaced(sample_mirror_factory, tmp_path):
    # `AT (VERSION => N)` reads files that are no longer current; the read-only connection allowed
    # only the current snapshot's files, so a replaced split's old rows were out of reach.
    catalog = tmp_path / "catalog"
    root = sample_mirror_factory("chartqa", rows=40)
    with Catalog(catalog) as cat:
        ingest(cat, "chartqa", mirror=root, splits=["train"])
        first, rows = cat.snapshot(), cat.con.execute("SELECT count(*) FROM samples").fetchone()[0]
        ingest(cat, "chartqa", mirror=root, splits=["train"], limit=5)  # replaces the split
        compact(cat)
    assert read_only_query(catalog, f"SELECT count(*) FROM samples AT (VERSION => {first})").rows == [(rows,)]
    assert read_only_query(catalog, "SELECT count(*) FROM samples").rows == [(5,)]
