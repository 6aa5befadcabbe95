"""FigureQA: one row per (figure, question) checked against the mirror's qa lists; the image stored
once per figure; answers normalised to Yes/No; bad pairs and figures; exact shard sizes."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ocrcat.catalog import Catalog
from ocrcat.ingest import figureqa, synth
from ocrcat.ingest.parquet import split_file_name, write_hub_parquet
from ocrcat.ingest.runner import ingest

from test_catalog import png_bytes


def test_ingest_matches_the_mirror_qa_pairs(sample_mirror_factory, catalog_dir):
    root = sample_mirror_factory("figureqa")
    [path] = sorted((root / "figureqa/data").glob("train-*.parquet"))
    figures = pq.read_table(path).to_pylist()
    with Catalog(catalog_dir) as cat:
        [summary] = ingest(cat, "figureqa", mirror=root)
        rows = {r[0]: r[1:] for r in cat.con.execute(
            "SELECT source_key, text, response, image_path, image_sha256, meta FROM samples").fetchall()}
    pairs = [(i, j, qa) for i, figure in enumerate(figures) for j, qa in enumerate(figure["qa"])]
    assert summary.rows == len(pairs) == len(rows) >= 40 and summary.errors == 0
    assert any(qa["answer"].endswith(".") for _, _, qa in pairs)  # the hub's trailing period occurs
    for i, j, qa in pairs:
        text, response, image_path, _, meta = rows[f"data/{path.name}#{i}/{j}"]
        assert text == f"<image>\nQuestion: {qa['question']}"
        assert response == qa["answer"].rstrip(".") and response in ("Yes", "No")
        assert (catalog_dir / image_path).read_bytes() == figures[i]["image"]["bytes"]
        assert json.loads(meta) == {"figure": f"data/{path.name}#{i}", "qa_index": j}
    # Each figure is stored once however many questions it has.
    assert len({r[3] for r in rows.values()}) == len(figures)
    assert len(list((catalog_dir / "images/figureqa").rglob("*.png"))) == len(figures)


def test_mirror_is_the_hub_layout_with_an_undecoded_image_feature(sample_mirror_factory):
    import datasets

    root = sample_mirror_factory("figureqa")
    ds = datasets.load_dataset("parquet", data_files=str(root / "figureqa/data/train-*.parquet"), split="train")
    assert ds.features["image"] == datasets.Image(decode=False)
    first = ds[0]
    assert set(first["image"]) == {"bytes", "path"} and first["qa"][0].keys() == {"question", "answer"}


@pytest.mark.parametrize("raw, expected", [("Yes", "Yes"), ("No.", "No"), (" yes. ", "Yes"), ("NO", "No"),
                                           ("Maybe", None), ("Yes..", None), ("1", None), ("", None), (None, None)])
def test_answers_normalise_to_yes_or_no(raw, expected):
    assert figureqa.normalise_answer(raw) == expected


def test_questions_are_answered_from_the_values():
    chart = synth.SeriesChart("vbar", "t", ("a", "b"), ["Olive", "Indigo", "Sienna"], [("", [30.0, 80.5, 12.0], "#000")],
                              ["#808000", "#4b0082", "#a0522d"])
    answers = dict(figureqa.figure_questions(chart, random.Random(0), 100))
    assert answers["Is Indigo the maximum?"] and answers["Is Sienna the minimum?"]
    assert not answers["Is Olive the maximum?"] and not answers["Is Olive the minimum?"]
    lines = synth.SeriesChart("line", "t", ("x", "y"), ["0", "20", "40"],
                              [("Olive", [10.0, 50.0, 20.0], "#808000"), ("Indigo", [30.0, 40.0, 35.0], "#4b0082")])
    answers = dict(figureqa.figure_questions(lines, random.Random(0), 100))
    assert answers["Does Olive intersect Indigo?"] and answers["Does Indigo have the maximum area under the curve?"]
    assert answers["Does Olive have the highest value?"] and answers["Does Olive have the lowest value?"]


def bad_mirror(root: Path) -> str:
    qa = lambda *answers: [{"question": f"Is q{k} true?", "answer": a} for k, a in enumerate(answers)]  # noqa: E731
    good = png_bytes((90, 60))
    rows = [
        {"image": good, "qa": qa("Yes", "No.", "yes")},
        {"image": png_bytes((91, 60)), "qa": qa("Maybe", "No")},  # one bad answer
        {"image": good[:30], "qa": qa("Yes", "No")},  # broken image: both its pairs are errors
        {"image": png_bytes((92, 60)), "qa": []},  # no questions
        {"image": png_bytes((93, 60)), "qa": None},
        {"image": png_bytes((94, 60)), "qa": [{"question": "", "answer": "Yes"}, {"question": "Ok?", "answer": "No"}]},
    ]
    rel = f"data/{split_file_name('train')}"
    write_hub_parquet(root / "figureqa" / rel, rows, figureqa.FEATURES)
    return rel


def test_bad_pairs_and_figures_become_error_rows(tmp_path, catalog_dir):
    rel = bad_mirror(tmp_path)
    [shard] = figureqa.plan(tmp_path / "figureqa", "train", {})
    assert shard.size == 3 + 2 + 2 + 1 + 1 + 2 == len(list(figureqa.read(shard, {})))
    with Catalog(catalog_dir) as cat:
        [summary] = ingest(cat, "figureqa", mirror=tmp_path)
        errors = dict(cat.con.execute("SELECT source_key, stage || ': ' || message FROM ingest_errors").fetchall())
        keys = {k for (k,) in cat.con.execute("SELECT source_key FROM samples").fetchall()}
    assert keys == {f"{rel}#0/0", f"{rel}#0/1", f"{rel}#0/2", f"{rel}#1/1", f"{rel}#5/1"}
    assert set(errors) == {f"{rel}#1/0", f"{rel}#2/0", f"{rel}#2/1", f"{rel}#3", f"{rel}#4", f"{rel}#5/0"}
    assert "'Maybe' is not yes or no" in errors[f"{rel}#1/0"]
    assert errors[f"{rel}#2/0"].startswith("image: ") and "no questions" in errors[f"{rel}#3"]
    assert (summary.rows, summary.errors) == (5, 6)


def test_limit_counts_qa_pairs(sample_mirror_factory, catalog_dir, monkeypatch):
    monkeypatch.setattr(figureqa, "ROWS_PER_SHARD", 2)
    root = sample_mirror_factory("figureqa")
    shards = figureqa.plan(root / "figureqa", "train", {})
    assert len(shards) > 2 and [s.size for s in shards] == [len(list(figureqa.read(s, {}))) for s in shards]
    with Catalog(catalog_dir) as cat:
        [summary] = ingest(cat, "figureqa", mirror=root, limit=7)
    assert summary.rows == 7
