"""Values are printed as they are stored: no Rich markup, no emoji codes, control characters visible.

One hostile value goes into a real catalog (as text, response, split, image path and a mixture
predicate) and comes back out of every printing command in a real process; the output must hold
the stored value, with only its control characters replaced by their visible pictures.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from ocrcat.catalog import Catalog
from ocrcat.cli import visible
from ocrcat.ingest.runner import ingest
from ocrcat.mix.mixtures import create_mixture

HOSTILE = "[/] [bold]b[/bold] \\sqrt[n]{x} + a[i] + \\left[x\\right] :x: :thumbs_up: tab\there esc\x1b[31m end"
SHOWN = HOSTILE.replace("\t", "\u2409").replace("\x1b", "\u241b")


def test_visible_marks_controls_and_keeps_the_rest():
    assert visible(HOSTILE) == SHOWN
    assert visible("a\nb\\tc") == "a\nb\\tc"  # newlines and backslashes stay (LaTeX has \t… commands)
    assert visible("\r\x00\x7f\x85\u202e") == "\u240d\u2400\u2421<U+0085><U+202E>"


@pytest.fixture(scope="module")
def catalog(sample_mirror_factory, tmp_path_factory):
    path = tmp_path_factory.mktemp("printing") / "catalog"
    with Catalog(path) as cat:
        ingest(cat, "chartqa", mirror=sample_mirror_factory("chartqa", rows=6))
        sid = cat.con.execute("SELECT min(sample_id) FROM samples").fetchone()[0]
        cat.con.execute("UPDATE samples SET text = '<image>\n' || ?1, response = ?1, split = ?1, "
                        "image_path = 'images/' || ?1 || '.png' WHERE sample_id = ?2", [HOSTILE, sid])
        create_mixture(cat, "hostile", [("odd", f"response = '{HOSTILE}'", 1)])
    return path, sid


def run(catalog, *args) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="1000")  # wide enough that no cell is folded
    return subprocess.run([sys.executable, "-m", "ocrcat.cli", *args, "--catalog", str(catalog)],
                          capture_output=True, text=True, env=env)


def test_sql_table_json_and_csv(catalog):
    path, sid = catalog
    query = f"SELECT response FROM samples WHERE sample_id = {sid}"
    table = run(path, "sql", query)
    assert table.returncode == 0, table.stderr
    assert SHOWN in table.stdout and "\x1b" not in table.stdout
    as_json = run(path, "sql", query, "--json")
    assert json.loads(as_json.stdout) == [{"response": HOSTILE}]  # machine formats carry the exact value
    as_csv = run(path, "sql", query, "--csv")
    assert list(csv.reader(io.StringIO(as_csv.stdout))) == [["response"], [HOSTILE]]


def test_show(catalog):
    path, sid = catalog
    out = run(path, "show", str(sid))
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if SHOWN in line]
    assert len(lines) == 4  # text (its second line), response, split, image_path
    assert f"images/{SHOWN}.png" in out.stdout
    # The image path (a backslash in it) is refused: the warning carries it literally too.
    assert out.stderr == (f"warning: images/{SHOWN}.png: not a relative path inside the catalog "
                          "(run ocrcat validate)\n")


def test_mix_show(catalog):
    path, _ = catalog
    out = run(path, "mix", "show", "hostile")
    assert out.returncode == 0, out.stderr
    assert f"odd  response = '{SHOWN}'" in out.stdout


def test_stats(catalog):
    path, _ = catalog
    out = run(path, "stats")
    assert out.returncode == 0, out.stderr
    assert sum(SHOWN in line for line in out.stdout.splitlines()) == 2  # both tables group by split


def test_validate(catalog):
    path, sid = catalog
    out = run(path, "validate", "--source", "chartqa")
    assert out.returncode == 1
    line = next(line for line in out.stdout.splitlines() if "image_path" in line and "FAIL" in line)
    assert str(sid) in line and f"images/{SHOWN}.png: not a relative path inside the catalog" in line


def test_errors(catalog):
    path, _ = catalog
    out = run(path, "sql", f'SELECT * FROM "{HOSTILE}"')
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith("error: ") and SHOWN in out.stderr
    bad_id = run(path, "show", HOSTILE)
    assert bad_id.returncode == 2
    assert bad_id.stderr == f"error: {HOSTILE!r} is not a sample id: give the number from the sample_id column\n"


def test_json_has_no_nan_and_csv_writes_nested_values_as_json(catalog):
    path, _ = catalog
    query = "SELECT 'nan'::DOUBLE AS a, '-inf'::DOUBLE AS b, 1.5::DOUBLE AS c, {'k': [1, 2]} AS s, '\\xaa'::BLOB AS bl"
    as_json = run(path, "sql", query, "--json")
    assert as_json.returncode == 0, as_json.stderr

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    assert json.loads(as_json.stdout, parse_constant=refuse) == [{"a": None, "b": None, "c": 1.5, "s": {"k": [1, 2]},
                                                                  "bl": "aa"}]
    as_csv = run(path, "sql", query, "--csv")
    assert list(csv.reader(io.StringIO(as_csv.stdout))) == [["a", "b", "c", "s", "bl"],
                                                             ["nan", "-inf", "1.5", '{"k": [1, 2]}', "aa"]]


def test_paths_of_the_wrong_kind_are_one_line_errors(catalog, tmp_path):
    path, _ = catalog
    folder, a_file = tmp_path / "a-folder", tmp_path / "a-file"
    folder.mkdir()
    a_file.write_text("mine")
    report = run(path, "report", "--out", str(folder))
    assert report.returncode == 2 and report.stderr == (f"error: {folder} is a folder; give the report a file name, "
                                                        f"e.g. {folder / 'report.html'}\n")
    plots = run(path, "stats", "--plot", str(a_file))
    assert plots.returncode == 2 and plots.stderr.startswith(f"error: File exists: {a_file}; check that path")
    assert a_file.read_text() == "mine"


def test_an_unknown_vision_mode_creates_nothing(tmp_path):
    out = run(tmp_path / "new", "init", "--vision-mode", "huge")
    assert out.returncode == 2 and "unknown vision mode 'huge'" in out.stderr
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("command", [
    ["mix", "create", "m", "-C", "all=true:1"], ["mix", "load", "mixtures.toml"], ["mix", "drop", "m"],
    ["rollback", "1"], ["compact"], ["sql", "CREATE TABLE t (x INT)", "--write"],
])
def test_a_writer_on_a_mistyped_catalog_path_creates_nothing(tmp_path, command):
    # Only init, ingest and migrate make a catalog; elsewhere a missing one is a typo, not a request.
    out = run(tmp_path / "typo", *command)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(f"error: no catalog at {tmp_path / 'typo'}: ingest something first")
    assert not (tmp_path / "typo").exists()
