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


def nano_render_conversation(tok, conversation: dict) -> tuple[list[int], list[int]]:
    """nanochat's Tokenizer.render_conversation, as published: reads conversation["messages"], folds a
    system message into the next user turn, asserts alternating roles and string user content, and
    masks 1 on assistant content and <|assistant_end|>. `tok` supplies encode() and the special ids."""
    messages = conversation["messages"]  # a plain-format vision example fails here, with KeyError
    if messages[0]["role"] == "system":
        assert messages[1]["role"] == "user"
        messages = [{"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}] + messages[2:]
    s = tok.specials
    ids, mask = [tok.bos_id], [0]
    for i, message in enumerate(messages):
        assert message["role"] == ("user" if i % 2 == 0 else "assistant")
        content = message["content"]
        if message["role"] == "user":
            assert isinstance(content, str)
            body = tok.encode(content)
            ids += [s["<|user_start|>"]] + body + [s["<|user_end|>"]]
            mask += [0] * (len(body) + 2)
        else:
            body = tok.encode(content) if isinstance(content, str) else [t for p in content for t in tok.encode(p["text"])]
            ids += [s["<|assistant_start|>"]] + body + [s["<|assistant_end|>"]]
            mask += [0] + [1] * (len(body) + 1)
    return ids, mask


@pytest.mark.parametrize("images", ["path", "pil"])
def test_chat_format_runs_every_source_through_nanochat_mixture_and_renderer(home, images):
    """The fork's shape: an ocrcat task stands where FineVision(...) stood in its TaskMixture, and
    nanochat's renderer gives exactly the ids (image placeholder aside) and mask of the Dataset's chat layout."""
    from PIL import Image

    from ocrcat.mix import load_tokenizer

    _, ingested = home
    tok = load_tokenizer("byte")
    placeholder = tok.encode("<image>")
    tasks = [cls(split="train", format="chat", images=images) for cls in CLASSES.values()]
    plain = [cls(split="train") for cls in CLASSES.values()]
    mixture, plain_mixture = NanoTaskMixture(tasks), NanoTaskMixture(plain)
    assert len(mixture) == len(plain_mixture) == sum(len(t) for t in tasks)
    seen = set()
    for i in range(len(mixture)):
        t, _ = mixture.index_map[i]
        source = tasks[t].source
        seen.add(source)
        example, row = mixture[i], plain_mixture[i]  # same shuffle, same row
        ids, mask = nano_render_conversation(tok, example)
        if source == "smoltalk":
            assert example == row and list(example) == ["messages"]
            assert (ids, [bool(m) for m in mask]) == tok.render_conversation_masked(example["messages"])
            continue
        assert list(example) == ["messages", "images", "image_path"]
        user, assistant = example["messages"]
        assert user["role"] == "user" and user["content"].startswith("<image>\n") and user["content"].count("<image>") == 1
        assert assistant["role"] == "assistant"
        if row["response"] is None:  # transcription: DeepSeek-OCR's prompt, the transcript as the answer
            assert user["content"] == "<image>\nFree OCR." and "<image>\n" + assistant["content"] == row["text"]
        else:
            assert (user["content"], assistant["content"]) == (row["text"], row["response"])
        assert example["image_path"] == row["image_path"] and len(example["images"]) == 1
        image = example["images"][0]
        if images == "pil":
            assert isinstance(image, Image.Image)
            if source in ingested:
                with Image.open(row["image_path"]) as stored:
                    assert image.size == stored.size and image.tobytes() == stored.tobytes()
        else:
            assert image == row["image_path"]
        # Expand the placeholder as the fork's loader does; the Dataset's chat layout is the same.
        k = ids.index(placeholder[0])
        assert ids[k:k + len(placeholder)] == placeholder
        expanded = ids[:k] + [tok.image_token_id] * 5 + ids[k + len(placeholder):]
        expanded_mask = mask[:k] + [0] * 5 + mask[k + len(placeholder):]
        ours, starts, answer = tok.render_vision(row["text"], row["response"], [5], layout="chat")
        assert ours == expanded and answer == [bool(m) for m in expanded_mask] and starts == [k]
    assert seen == set(CLASSES)
    # A plain-format vision example is not a conversation: nanochat's renderer refuses it.
    vision = next(plain_mixture[i] for i in range(len(plain_mixture)) if "text" in plain_mixture[i])
    with pytest.raises(KeyError, match="messages"):
        nano_render_conversation(tok, vision)


def test_chat_format_from_exports_and_bad_options(home, tmp_path):
    path, _ = home
    with Catalog(path, read_only=True) as cat:
        export_mixture(cat, "plan", tmp_path / "p")
    catalog_task = CatalogTask(mixture="plan", format="chat")
    export_task = ExportTask(tmp_path / "p", format="chat")
    assert [export_task[i] for i in range(len(export_task))] == [catalog_task[i] for i in range(len(catalog_task))]
    assert pickle.loads(pickle.dumps(catalog_task))[0] == catalog_task[0]
    with pytest.raises(ValueError, match="unknown format"):
        ChartQA(split="train", format="sft")
    with pytest.raises(ValueError, match="unknown images"):
        ExportTask(tmp_path / "p", images="bytes")
