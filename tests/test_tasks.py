"""nanochat tasks: the data plan's stage 1 and stage 2 TaskMixtures built from the per-source
classes, run by a Task/TaskMixture written here to nanochat's published semantics."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import pytest

from ocrcat.catalog import Catalog
from ocrcat.ingest import registry
from ocrcat.ingest.runner import ingest
from ocrcat.mix.export import export_mixture
from ocrcat.mix.mixtures import create_mixture
from ocrcat.mix.tasks import (
    CatalogTask,
    ChartQA,
    DocBank,
    ExportTask,
    FigureQA,
    LaTeXFormulas,
    LLaVACC3M,
    MathWriting,
    OlmOCR,
    PlotQA,
    PubTables,
    SmolTalk,
)

CLASSES = {"docbank": DocBank, "olmocr": OlmOCR, "llava_cc3m": LLaVACC3M, "plotqa": PlotQA, "chartqa": ChartQA,
           "figureqa": FigureQA, "pubtables": PubTables, "latex_formulas": LaTeXFormulas,
           "mathwriting": MathWriting, "smoltalk": SmolTalk}


class NanoTask:
    """nanochat's Task, as published: a start/stop/step view; `len` caps stop at num_examples."""

    def __init__(self, start=0, stop=None, step=1):
        self.start, self.stop, self.step = start, stop, step

    def __len__(self):
        n = self.num_examples()
        stop = n if self.stop is None else min(self.stop, n)
        return (stop - self.start + self.step - 1) // self.step

    def __getitem__(self, index: int):
        return self.get_example(self.start + index * self.step)


class NanoTaskMixture(NanoTask):
    """nanochat's TaskMixture: every (task, local index) pair, shuffled once with random.Random(42);
    a task listed twice is seen twice."""

    def __init__(self, tasks, **kwargs):
        super().__init__(**kwargs)
        self.tasks = tasks
        self.index_map = [(t, i) for t, task in enumerate(tasks) for i in range(len(task))]
        random.Random(42).shuffle(self.index_map)

    def num_examples(self):
        return len(self.index_map)

    def get_example(self, index):
        t, i = self.index_map[index]
        return self.tasks[t][i]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, sample_mirror_factory):
    """Every source this version can ingest, from its sample mirror; made-up rows for the others."""
    path = tmp_path_factory.mktemp("tasks") / "catalog"
    ingested = registry.available()
    with Catalog(path) as cat:
        for source in ingested:
            ingest(cat, source, mirror=sample_mirror_factory(source, rows=12))
        for source in set(CLASSES) - set(ingested):
            kind = "text" if source == "smoltalk" else "vision"
            cat.con.execute(
                """INSERT INTO samples (sample_id, source, split, source_key, kind, text, response, messages,
                                        image_path, meta, ingest_run)
                   SELECT CAST('0x' || substr(md5(?1 || i), 1, 16) AS UBIGINT), ?1, ['train', 'val', 'train'][i % 3 + 1],
                          'k' || i, ?2, CASE WHEN ?2 = 'text' THEN 'hi' ELSE '<image>\n' END, 'r' || i,
                          CASE WHEN ?2 = 'text' THEN '[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]' END,
                          CASE WHEN ?2 = 'vision' THEN 'images/none/' || i || '.png' END, '{}', 0
                   FROM range(9) t(i)""",
                [source, kind],
            )
        # written here, before any task holds a read-only connection to the catalog in this process
        create_mixture(cat, "plan", [("charts", "source = 'chartqa'", 1.5), ("docs", "source = 'docbank'", 2)],
                       text_share=0.2, seed=1)
    return path, set(ingested)


@pytest.fixture
def home(catalog, monkeypatch):
    monkeypatch.setenv("OCRCAT_HOME", str(catalog[0]))
    return catalog


def _check(example: dict, ingested: set[str], source: str) -> None:
    if source == "smoltalk":
        assert list(example) == ["messages"]
        roles = [m["role"] for m in example["messages"]]
        assert "assistant" in roles and set(roles) <= {"system", "user", "assistant"}
    else:
        assert list(example) == ["text", "response", "image_path"]
        assert example["text"].startswith("<image>\n") and Path(example["image_path"]).is_absolute()
        if source in ingested:
            assert Path(example["image_path"]).is_file()


def test_stage1_and_stage2_task_mixtures_read_every_example(home):
    """The data plan's snippets: weight 2 = the task listed twice, SmolTalk added in stage 2."""
    _, ingested = home
    stage1 = [DocBank(split="train"), DocBank(split="train"), OlmOCR(split="train"), OlmOCR(split="train"),
              LLaVACC3M(split="train"), PlotQA(split="train"), ChartQA(split="train"), FigureQA(split="train"),
              PubTables(split="train"), LaTeXFormulas(split="train"), MathWriting(split="train")]
    stage2 = stage1 + [SmolTalk(split="train")]
    with Catalog(home[0], read_only=True) as cat:
        train = dict(cat.con.execute("SELECT source, count(*) FROM samples WHERE split = 'train' GROUP BY 1").fetchall())
    for tasks in (stage1, stage2):
        mixture = NanoTaskMixture(tasks)
        assert len(mixture) == sum(train[t.source] for t in tasks)
        seen = {}
        for i in range(len(mixture)):
            t, _ = mixture.index_map[i]
            example = mixture[i]
            _check(example, ingested, tasks[t].source)
            seen[tasks[t].source] = seen.get(tasks[t].source, 0) + 1
        assert seen == {s: train[s] * (2 if s in ("docbank", "olmocr") else 1) for s in {t.source for t in tasks}}
    assert "smoltalk" not in {t.source for t in stage1}


def test_each_source_class_returns_its_rows(home):
    path, ingested = home
    with Catalog(path, read_only=True) as cat:
        for source, cls in CLASSES.items():
            for split in ("train", "val"):
                expected = cat.con.execute(
                    "SELECT text, response FROM samples WHERE source = ? AND split = ? ORDER BY sample_id",
                    [source, split]).fetchall()
                task = cls(split=split)
                assert task.num_examples() == len(expected), (source, split)
                if source != "smoltalk":
                    assert [(e["text"], e["response"]) for e in (task[i] for i in range(len(task)))] == expected


def test_slicing_follows_nanochat(home):
    full = ChartQA(split="train")
    part = ChartQA(split="train", start=1, stop=8, step=3)
    assert len(part) == 3 and [part[i] for i in range(3)] == [full[1], full[4], full[7]]
    assert len(ChartQA(split="train", stop=10_000)) == len(full)  # stop is capped, as in nanochat
    with pytest.raises(IndexError):
        part[3]
    with pytest.raises(ValueError):
        ChartQA(split="train", start=5, stop=2)
    with pytest.raises(ValueError, match="unknown split"):
        ChartQA(split="dev2")
    assert len(ChartQA(split="validation")) == len(ChartQA(split="val"))


def test_mixture_task_and_export_task_give_the_plan_in_order(home, tmp_path):
    path, _ = home
    with Catalog(path, read_only=True) as cat:
        view = cat.con.execute("SELECT kind, text, response, messages, image_path FROM mix_plan").fetchall()
        export_mixture(cat, "plan", tmp_path / "p")
        export_mixture(cat, "plan", tmp_path / "j", format="jsonl", relative_paths=True)
    from_catalog = CatalogTask(mixture="plan")
    from_parquet = ExportTask(tmp_path / "p")
    from_jsonl = ExportTask(tmp_path / "j")
    expected = [{"messages": json.loads(m)} if k == "text" else
                {"text": t, "response": r, "image_path": str(Path(path).resolve() / p)} for k, t, r, m, p in view]
    for task in (from_catalog, from_parquet, from_jsonl):
        assert [task[i] for i in range(len(task))] == expected
    # tasks travel to DataLoader workers: they pickle, and reopen their connection there
    clone = pickle.loads(pickle.dumps(from_catalog))
    assert clone[len(clone) - 1] == expected[-1]
    # nanochat's TaskMixture takes them like any other task
    assert len(NanoTaskMixture([from_parquet, SmolTalk(split="train")])) == len(view) + len(SmolTalk(split="train"))
