"""Ingest of the three Parquet sources, checked against the records written into their mirrors;
bad records; resume after SIGKILL; re-ingest; the CLI's guarantees."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ocrcat import vision
from ocrcat.catalog import Catalog
from ocrcat.catalog.images import image_key
from ocrcat.catalog.snapshots import compact, referenced_images
from ocrcat.ingest import chartqa
from ocrcat.ingest.latex_formulas import strip_align
from ocrcat.ingest.parquet import split_file_name, write_hub_parquet
from ocrcat.ingest.runner import ingest

from test_catalog import absurd_png_header, png_bytes

OCRCAT = [sys.executable, "-m", "ocrcat.cli"]


def mirror_records(root: Path, source: str) -> dict[tuple[str, str], dict]:
    """(split, source_key) -> the hub record, read straight from the mirror's Parquet files."""
    records = {}
    for path in sorted((root / source).rglob("*.parquet")):
        split = path.name.split("-")[0]
        rel = path.relative_to(root / source).as_posix()
        for index, row in enumerate(pq.read_table(path).to_pylist()):
            records[(split, f"{rel}#{index}")] = row
    return records


def catalog_rows(catalog_dir: Path, source: str) -> dict[tuple[str, str], dict]:
    with Catalog(catalog_dir, read_only=True) as cat:
        rel = cat.con.execute("SELECT * FROM samples WHERE source = ?", [source])
        cols = [d[0] for d in rel.description]
        return {(r["split"], r["source_key"]): r for r in (dict(zip(cols, row)) for row in rel.fetchall())}


def expected_text_response(source: str, record: dict) -> tuple[str, str]:
    if source == "chartqa":
        return f"<image>\nQuestion: {record['query']}", record["label"][0]
    if source == "latex_formulas":
        return "<image>\nConvert this formula to LaTeX.", strip_align(record["latex_formula"])
    return "<image>\nRecognize this handwritten formula and convert to LaTeX.", record["latex"]


@pytest.mark.parametrize("source", ["chartqa", "latex_formulas", "mathwriting"])
def test_ingest_matches_the_mirror_records(source, sample_mirror_factory, catalog_dir):
    root = sample_mirror_factory(source)
    with Catalog(catalog_dir) as cat:
        summaries = ingest(cat, source, mirror=root)
    records = mirror_records(root, source)
    rows = catalog_rows(catalog_dir, source)
    runs = {s.split: s.run_id for s in summaries}
    assert sum(s.rows for s in summaries) == len(records) == len(rows)
    assert sum(s.errors for s in summaries) == 0
    assert {split for split, _ in rows} == set(chartqa.INFO.splits if source != "latex_formulas" else ["train"])
    for key, record in records.items():
        row = rows[key]
        text, response = expected_text_response(source, record)
        assert (row["text"], row["response"], row["kind"]) == (text, response, "vision")
        data = record["image"]["bytes"]
        stored = (catalog_dir / row["image_path"]).read_bytes()
        assert stored == data
        assert row["image_sha256"] == hashlib.sha256(data).hexdigest()
        width, height = Image.open(io.BytesIO(data)).size
        assert (row["image_width"], row["image_height"], row["image_bytes"]) == (width, height, len(data))
        assert row["image_tokens"] == vision.count_image_tokens(width, height, "gundam")
        if source == "chartqa":
            assert json.loads(row["meta"])["origin"] == ["human", "machine"][record["human_or_machine"]]
        assert row["ingest_run"] == runs[row["split"]]  # the run that wrote it


def test_sample_mirror_reads_back_as_images_with_datasets(sample_mirror_factory):
    root = sample_mirror_factory("chartqa")
    ds = datasets.load_dataset("parquet", data_files=str(root / "chartqa/data/train-*.parquet"), split="train")
    assert isinstance(ds.features["image"], datasets.Image)
    first = ds[0]
    assert isinstance(first["image"], Image.Image) and first["image"].size == (800, 600)
    assert isinstance(first["label"], list) and first["human_or_machine"] in (0, 1)


def test_chart_questions_have_right_answers(sample_mirror_factory):
    """The generated answers are computed from the values drawn, checked here independently."""
    root = sample_mirror_factory("chartqa")
    records = list(mirror_records(root, "chartqa").values())
    counts = [r for r in records if r["query"] == "How many bars are there in the chart?"]
    for r in counts:
        assert r["label"][0] in {"3", "4", "5", "6"}
    # Charts repeat across questions: the image store keeps one file per chart.
    assert len({r["image"]["bytes"] for r in records}) < len(records)


def test_strip_align_only_removes_a_whole_outer_wrapper():
    assert strip_align(r"\begin{align*}x^2\end{align*}") == "x^2"
    assert strip_align(r"  \begin{align*} a &= b \\ c &= d \end{align*} ") == r"a &= b \\ c &= d"
    assert strip_align(r"\begin{align*}a\end{align*} + \begin{align*}b\end{align*}") == (
        r"\begin{align*}a\end{align*} + \begin{align*}b\end{align*}"
    )
    assert strip_align(r"\frac{a}{b}") == r"\frac{a}{b}"


def test_keep_align_option(sample_mirror_factory, catalog_dir):
    root = sample_mirror_factory("latex_formulas")
    with Catalog(catalog_dir) as cat:
        ingest(cat, "latex_formulas", mirror=root, options={"keep_align": True})
        wrapped = cat.con.execute("SELECT count(*) FROM samples WHERE response LIKE '\\begin{align*}%'").fetchone()[0]
    assert wrapped > 0


def write_bad_chartqa_mirror(root: Path) -> dict[str, str]:
    """A ChartQA mirror with 5 good rows and one of each kind of bad record (6); returns key -> stage."""
    good = png_bytes((120, 80))
    rows = [{"image": png_bytes((100 + i, 80)), "query": f"q{i}?", "label": [str(i)], "human_or_machine": 0}
            for i in range(5)]
    bad = [
        ({"image": good[: len(good) // 2], "query": "truncated?", "label": ["1"], "human_or_machine": 0}, "image"),
        ({"image": b"<html>not an image</html>", "query": "html?", "label": ["1"], "human_or_machine": 1}, "image"),
        ({"image": good, "query": None, "label": ["1"], "human_or_machine": 0}, "map"),
        ({"image": good, "query": "no answer?", "label": [], "human_or_machine": 0}, "map"),
        ({"image": absurd_png_header(), "query": "huge?", "label": ["1"], "human_or_machine": 0}, "image"),
        ({"image": None, "query": "no picture?", "label": ["1"], "human_or_machine": 0}, "image"),
    ]
    rel = f"data/{split_file_name('train')}"
    write_hub_parquet(root / "chartqa" / rel, rows + [r for r, _ in bad], chartqa.FEATURES)
    return {f"{rel}#{5 + i}": stage for i, (_, stage) in enumerate(bad)}


def test_bad_records_become_one_error_row_each(tmp_path, catalog_dir):
    expected = write_bad_chartqa_mirror(tmp_path / "mirror")
    with Catalog(catalog_dir) as cat:
        [summary] = ingest(cat, "chartqa", mirror=tmp_path / "mirror")
        errors = cat.con.execute("SELECT source_key, stage, message FROM ingest_errors ORDER BY source_key").fetchall()
        landed = cat.con.execute("SELECT count(*) FROM samples").fetchone()[0]
    assert (summary.rows, summary.errors, landed) == (5, 6, 5)
    assert {key: stage for key, stage, _ in errors} == expected
    messages = {key: message for key, _, message in errors}
    assert "30000x30000" in messages[next(k for k in expected if k.endswith("#9"))] or "too large" in messages[
        next(k for k in expected if k.endswith("#9"))]
    assert "label list is empty" in messages[next(k for k in expected if k.endswith("#8"))]
    assert "image is missing" in messages[next(k for k in expected if k.endswith("#10"))]
    assert not list((catalog_dir / "images").rglob("*.tmp"))


def test_max_error_rate_turns_errors_into_exit_status(tmp_path, catalog_dir):
    write_bad_chartqa_mirror(tmp_path / "mirror")
    base = OCRCAT + ["ingest", "chartqa", "--mirror", str(tmp_path / "mirror"), "--catalog", str(catalog_dir)]
    ok = subprocess.run(base, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr  # default: report, exit 0
    assert "6 records rejected" in ok.stdout
    strict = subprocess.run(base + ["--max-error-rate", "0.2"], capture_output=True, text=True)
    assert strict.returncode == 1
    assert "above --max-error-rate" in strict.stderr


def test_reingest_replaces_rows_and_limit_cuts(sample_mirror_factory, catalog_dir):
    root = sample_mirror_factory("mathwriting")
    with Catalog(catalog_dir) as cat:
        ingest(cat, "mathwriting", mirror=root)
        ingest(cat, "mathwriting", mirror=root)
        full = cat.con.execute("SELECT count(*), count(DISTINCT sample_id) FROM samples").fetchone()
        ingest(cat, "mathwriting", mirror=root, splits=["train"], limit=7)
        by_split = dict(cat.con.execute("SELECT split, count(*) FROM samples GROUP BY 1").fetchall())
    assert full[0] == full[1] == len(mirror_records(root, "mathwriting"))
    assert by_split["train"] == 7 and by_split["val"] == by_split["test"] == 4
    files = [p for p in (catalog_dir / "images").rglob("*") if p.is_file()]
    assert len(files) == 40  # replaced rows' images stay while a kept snapshot (rollback, --at) needs them
    with Catalog(catalog_dir) as cat:
        compact(cat, older_than_snapshot=cat.snapshot())  # expire every earlier snapshot
    files = [p for p in (catalog_dir / "images").rglob("*") if p.is_file()]
    assert len(files) == 7 + 4 + 4  # now the replaced rows' images are swept


def test_an_ingest_sweeps_its_own_source_and_compact_sweeps_all(sample_mirror_factory, catalog_dir):
    """Files no snapshot references, in content-addressed places: an ingest of mathwriting removes
    its own and leaves chartqa's (its sweep does not list, nor hold in memory, other sources);
    `compact` removes both, and judges each source's files by that source's rows."""
    orphans = {}
    for source in ("mathwriting", "chartqa"):
        sha = hashlib.sha256(source.encode()).hexdigest()
        orphans[source] = catalog_dir / "images" / source / sha[:2] / f"{sha}.png"
        orphans[source].parent.mkdir(parents=True)
        orphans[source].write_bytes(png_bytes())
    with Catalog(catalog_dir) as cat:
        ingest(cat, "mathwriting", mirror=sample_mirror_factory("mathwriting"))
        assert not orphans["mathwriting"].exists() and orphans["chartqa"].exists()
        # A mathwriting image stored under chartqa too, where no chartqa row references it: swept there.
        used = next((catalog_dir / "images/mathwriting").rglob("*.*"))
        twin = catalog_dir / "images/chartqa" / used.parent.name / used.name
        twin.parent.mkdir(exist_ok=True)
        twin.write_bytes(used.read_bytes())
        assert compact(cat)["images_swept"] == 2
        assert used.exists() and not twin.exists()
        paths = [p for (p,) in cat.con.execute("SELECT DISTINCT image_path FROM samples WHERE image_path "
                                               "IS NOT NULL").fetchall()]
        keys = referenced_images(cat)  # the keys computed in SQL are those of every referenced path
        assert sorted(keys.keys.tolist()) == sorted(image_key(Path(p).name.split(".")[0]) for p in paths)
        referenced = len(paths)
    assert not orphans["chartqa"].exists()
    assert len([p for p in (catalog_dir / "images").rglob("*") if p.is_file()]) == referenced == 40


def test_unknown_split_and_missing_mirror_are_clear(tmp_path, sample_mirror_factory, catalog_dir):
    r = subprocess.run(OCRCAT + ["ingest", "chartqa", "--split", "validation", "--mirror",
                                 str(sample_mirror_factory("chartqa")), "--catalog", str(catalog_dir)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "has no split 'validation'" in r.stderr and "train, val, test" in r.stderr
    r = subprocess.run(OCRCAT + ["ingest", "mathwriting", "--mirror", str(tmp_path / "nowhere"),
                                 "--catalog", str(catalog_dir)], capture_output=True, text=True)
    assert r.returncode == 2 and "no mirror of mathwriting" in r.stderr and "sample-mirror" in r.stderr


def test_workers_give_the_same_rows(sample_mirror_factory, tmp_path):
    root = sample_mirror_factory("chartqa", rows=300)
    for name, workers in (("one", 1), ("two", 2)):
        with Catalog(tmp_path / name) as cat:
            ingest(cat, "chartqa", mirror=root, workers=workers)
    assert snapshot(tmp_path / "one") == snapshot(tmp_path / "two")


def snapshot(catalog_dir: Path) -> list[tuple]:
    """Every samples row except the run id, in sample_id order."""
    with Catalog(catalog_dir, read_only=True) as cat:
        return cat.con.execute("SELECT * EXCLUDE (ingest_run) FROM samples ORDER BY sample_id").fetchall()


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from ocrcat.catalog import images
    from ocrcat.catalog import Catalog
    from ocrcat.ingest import runner
    from ocrcat.ingest.runner import ingest

    runner.COMMIT_RECORDS = 1  # commit every shard as it finishes (batched by default)
    calls = 0
    real_put = images.ImageStore.put

    def put(self, source, data):
        global calls
        calls += 1
        if calls == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)  # mid-shard: images written, rows not committed
        return real_put(self, source, data)

    images.ImageStore.put = put
    with Catalog(sys.argv[1]) as cat:
        ingest(cat, "chartqa", mirror=sys.argv[2])
    """
)


def test_sigkill_mid_ingest_then_rerun_equals_uninterrupted(sample_mirror_factory, tmp_path):
    root = sample_mirror_factory("chartqa", rows=700)  # 560 train rows: groups of 100 merged, 500 + 60
    killed = subprocess.run([sys.executable, "-c", KILLER, str(tmp_path / "killed"), str(root), "520"])
    assert killed.returncode == -9
    with Catalog(tmp_path / "killed", read_only=True) as cat:
        visible = cat.con.execute("SELECT count(*) FROM samples").fetchone()[0]
        partial = cat.con.execute("SELECT count(*) FROM samples_pending").fetchone()[0]
    assert visible == 0  # readers see nothing of a run that has not completed
    assert partial == 500  # the first shard (five 100-row groups) is kept for the resume, not the one being written
    rerun = subprocess.run(OCRCAT + ["ingest", "chartqa", "--mirror", str(root), "--catalog", str(tmp_path / "killed")],
                           capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    with Catalog(tmp_path / "clean") as cat:
        ingest(cat, "chartqa", mirror=root)
    assert snapshot(tmp_path / "killed") == snapshot(tmp_path / "clean")
    with Catalog(tmp_path / "killed", read_only=True) as cat:
        referenced = {p for (p,) in cat.con.execute("SELECT DISTINCT image_path FROM samples").fetchall()}
        resumed = cat.con.execute("SELECT resumed_from FROM ingest_runs WHERE split = 'train' "
                                  "ORDER BY run_id DESC LIMIT 1").fetchone()[0]
        killed = cat.con.execute("SELECT status, message FROM ingest_runs WHERE run_id = ?", [resumed]).fetchone()
    on_disk = {p.relative_to(tmp_path / "killed").as_posix() for p in (tmp_path / "killed/images").rglob("*")
               if p.is_file()}
    assert on_disk == referenced  # no orphan left behind, nothing referenced missing
    assert resumed is not None  # the rerun continued the killed run rather than starting over
    assert killed[0] == "interrupted" and "killed?" in killed[1]  # not `running` forever


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from ocrcat.catalog import images, Catalog
    from ocrcat.ingest.runner import ingest

    real_put = images.ImageStore.put
    def put(self, source, data):
        Path(sys.argv[3]).touch()
        while not Path(sys.argv[4]).exists():
            time.sleep(0.05)
        return real_put(self, source, data)
    images.ImageStore.put = put
    with Catalog(sys.argv[1]) as cat:
        ingest(cat, "mathwriting", mirror=sys.argv[2])
    """
)


def test_writers_of_other_splits_proceed_same_split_is_refused(sample_mirror_factory, tmp_path, catalog_dir):
    """While one ingest runs: another source ingests to the end, readers read, and a second
    ingest of the same source and split is refused with a message (nothing of it written)."""
    root = sample_mirror_factory("mathwriting")
    started, release = tmp_path / "started", tmp_path / "release"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(catalog_dir), str(root), str(started), str(release)])
    common = ["--catalog", str(catalog_dir)]
    try:
        deadline = time.time() + 60
        while not started.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert started.exists()
        other = subprocess.run(OCRCAT + ["ingest", "chartqa", "--mirror", str(sample_mirror_factory("chartqa"))]
                               + common, capture_output=True, text=True)
        assert other.returncode == 0, other.stderr
        same = subprocess.run(OCRCAT + ["ingest", "mathwriting", "--mirror", str(root)] + common,
                              capture_output=True, text=True)
        assert same.returncode == 2
        assert "mathwriting/train is being ingested" in same.stderr and "by another process" in same.stderr
        counted = subprocess.run(OCRCAT + ["sql", "SELECT source, count(*) AS n FROM samples GROUP BY 1", "--json"]
                                 + common, capture_output=True, text=True)
        assert counted.returncode == 0, counted.stderr
        assert json.loads(counted.stdout) == [{"source": "chartqa", "n": 40}]
    finally:
        release.touch()
        assert holder.wait(timeout=120) == 0
    with Catalog(catalog_dir, read_only=True) as cat:
        assert dict(cat.con.execute("SELECT source, count(*) FROM samples GROUP BY 1").fetchall()) == {
            "chartqa": 40, "mathwriting": 40}
        assert cat.con.execute("SELECT count(*) FROM ingest_runs WHERE status <> 'completed'").fetchone()[0] == 0


def test_sql_is_read_only_unless_write(sample_mirror_factory, catalog_dir):
    with Catalog(catalog_dir) as cat:
        ingest(cat, "mathwriting", mirror=sample_mirror_factory("mathwriting"))
    common = ["--catalog", str(catalog_dir)]
    dropped = subprocess.run(OCRCAT + ["sql", "DROP TABLE samples"] + common, capture_output=True, text=True)
    assert dropped.returncode == 2 and "read-only" in dropped.stderr and "--write" in dropped.stderr
    counted = subprocess.run(OCRCAT + ["sql", "SELECT split, count(*) AS n FROM samples GROUP BY 1 ORDER BY 1",
                                       "--json"] + common, capture_output=True, text=True)
    assert json.loads(counted.stdout) == [{"split": "test", "n": 4}, {"split": "train", "n": 32},
                                          {"split": "val", "n": 4}]
    as_csv = subprocess.run(OCRCAT + ["sql", "SELECT count(*) AS n FROM samples", "--csv"] + common,
                            capture_output=True, text=True)
    assert as_csv.stdout.split() == ["n", "40"]
    written = subprocess.run(OCRCAT + ["sql", "DELETE FROM samples WHERE split = 'val'", "--write"] + common,
                             capture_output=True, text=True)
    assert written.returncode == 0, written.stderr
    bad = subprocess.run(OCRCAT + ["sql", "SELEC nonsense"] + common, capture_output=True, text=True)
    assert bad.returncode == 2 and "syntax error" in bad.stderr.lower()


def test_stats_and_sources_json(sample_mirror_factory, catalog_dir):
    for source in ("chartqa", "mathwriting"):
        subprocess.run(OCRCAT + ["ingest", source, "--mirror", str(sample_mirror_factory(source)),
                                 "--catalog", str(catalog_dir)], check=True, capture_output=True)
    stats = json.loads(subprocess.run(OCRCAT + ["stats", "--json", "--catalog", str(catalog_dir)],
                                      capture_output=True, text=True, check=True).stdout)
    with Catalog(catalog_dir, read_only=True) as cat:
        unique = cat.con.execute("SELECT count(DISTINCT image_sha256) FROM samples").fetchone()[0]
    assert stats["rows"] == 80 and stats["unique_images"] == unique < 80  # charts are shared by questions
    assert {(g["source"], g["split"]) for g in stats["groups"]} == {
        (s, sp) for s in ("chartqa", "mathwriting") for sp in ("train", "val", "test")}
    assert stats["image_tokens_p95"] >= stats["image_tokens_median"] >= 273
    listed = json.loads(subprocess.run(OCRCAT + ["sources", "--json", "--catalog", str(catalog_dir)],
                                       capture_output=True, text=True, check=True).stdout)
    by_name = {s["source"]: s for s in listed}
    assert by_name["chartqa"]["rows_in_catalog"] == 40 and by_name["chartqa"]["hub_repo"] == "HuggingFaceM4/ChartQA"


def test_every_command_has_help_with_an_example():
    from ocrcat.cli import app
    import typer.main

    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        subcommands = getattr(command, "commands", None) or {name: command}
        for sub in subcommands.values():
            assert "Example:" in (sub.help or ""), f"ocrcat {name} {sub.name}: --help lacks an example"


def test_a_native_crash_in_a_command_prints_the_python_stack(tmp_path):
    """faulthandler is on in every command: a segfault in a native library names the Python step."""
    crash = textwrap.dedent("""
        import ctypes, sys
        import ocrcat.catalog.store as store
        from ocrcat.cli import app
        def connect(shared=False):  # stands for a crash inside DuckDB while the catalog opens
            ctypes.string_at(0)
        store.connect = connect
        sys.argv = ["ocrcat", "stats", "--catalog", sys.argv[1]]
        app()
    """)
    (tmp_path / "catalog").mkdir()
    (tmp_path / "catalog" / "catalog.sqlite").touch()
    done = subprocess.run([sys.executable, "-c", crash, str(tmp_path / "catalog")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == -11, done.stderr
    assert "Fatal Python error: Segmentation fault" in done.stderr and "in connect" in done.stderr, done.stderr


def test_a_script_without_a_main_guard_is_told_so_and_lands_nothing(tmp_path):
    """Workers start from a fork server that imports the calling script again: unguarded, that import
    would start an ingest of its own. The run fails, lands nothing and says what to change."""
    for index in range(2):  # two files, so two shards and a real worker pool
        records = [{"image": png_bytes((32 + index, 24)), "query": f"q{index}-{i}", "label": ["1"],
                    "human_or_machine": 0} for i in range(3)]
        write_hub_parquet(tmp_path / "mirror/chartqa/data" / split_file_name("train", index, 2), records,
                          chartqa.FEATURES)
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(f"""
        from ocrcat.catalog import Catalog
        from ocrcat.ingest.runner import ingest
        with Catalog({str(tmp_path / "catalog")!r}) as cat:
            ingest(cat, "chartqa", mirror={str(tmp_path / "mirror")!r}, workers=2)
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert 'put the code that calls ingest() under `if __name__ == "__main__":`' in done.stderr, done.stderr
    with Catalog(tmp_path / "catalog", read_only=True) as cat:
        assert cat.con.execute("SELECT count(*) FROM samples").fetchone()[0] == 0
        assert cat.con.execute("SELECT status FROM ingest_runs").fetchall() == [("failed",)]


def test_realdata_latex_formulas_ingest(tmp_path, catalog_dir):
    """Real TexTeller formula crops packed into the hub layout ingest without errors."""
    from conftest import REALDATA
    from ocrcat.ingest import latex_formulas

    folder = REALDATA / "latex_formulas/texteller/src/models/ocr_model/train/dataset"
    if not folder.exists():
        pytest.skip("shared/realdata not present")
    entries = [json.loads(line) for line in (folder / "formulas.jsonl").read_text().splitlines() if line.strip()]
    rows = [{"image": (folder / "images" / e["img_name"]).read_bytes(), "latex_formula": e["formula"]}
            for e in entries]
    write_hub_parquet(tmp_path / "m/latex_formulas/cleaned_formulas" / split_file_name("train"), rows,
                      latex_formulas.FEATURES)
    with Catalog(catalog_dir) as cat:
        [summary] = ingest(cat, "latex_formulas", mirror=tmp_path / "m")
        got = dict(cat.con.execute("SELECT source_key, response FROM samples").fetchall())
    assert (summary.rows, summary.errors) == (len(entries), 0)
    assert got[f"cleaned_formulas/{split_file_name('train')}#0"] == entries[0]["formula"].strip()
    shutil.rmtree(tmp_path / "m")


def test_fetch_without_network_says_what_to_do(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(OCRCAT + ["fetch", "mathwriting", "--mirror", str(tmp_path / "hf")], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 2
    assert "could not fetch deepcopy/MathWriting-human" in r.stderr and "--mirror" in r.stderr
