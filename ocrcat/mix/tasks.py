"""nanochat-style tasks over the catalog or an export, so that the data plan's snippets
(`TaskMixture([DocBank(split="train"), …, SmolTalk(split="train")])`) run unchanged.

A task follows nanochat's `Task` protocol: `num_examples()` and `get_example(i)` on the whole
data, and a `start/stop/step` view of it through `len()` and `task[i]`, which is all that
nanochat's `TaskMixture` and `TaskSequence` use. A text row is `{"messages": [...]}`. A vision row is,
in `format="plain"` (default, the data plan's), `{"text", "response", "image_path"}` (absolute image
path); in `format="chat"`, a conversation in the nano-DeepSeek-OCR fork's shape, as its FineVision
task returns: `{"messages": [user "<image>\\n…", assistant …], "images": [path or PIL image],
"image_path": path}` (PIL images with `images="pil"`; `image_path` is what the fork's loader opens).

Rows are fetched one at a time by sample_id from a read-only connection opened per process, so a
task can be handed to DataLoader workers. The catalog comes from `catalog=` or $OCRCAT_HOME.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq

from ocrcat.catalog import Catalog, resolve_dir
from ocrcat.catalog.sqltext import bind_json_arrows
from ocrcat.mix.manifest import SPLIT_ALIASES, split_files
from ocrcat.mix.mixtures import PLAN_ORDER, check_split, entries_sql, get_mixture
from ocrcat.mix.tokenizer import TRANSCRIBE_PROMPT, vision_turns


class Task:
    """A start/stop/step view over `num_examples()` examples, as nanochat's Task."""

    def __init__(self, start: int = 0, stop: int | None = None, step: int = 1):
        if start < 0 or step < 1 or (stop is not None and stop < start):
            raise ValueError(f"need 0 <= start <= stop and step >= 1, got start={start} stop={stop} step={step}")
        self.start, self.stop, self.step = start, stop, step

    def num_examples(self) -> int:
        raise NotImplementedError

    def get_example(self, index: int) -> dict:
        raise NotImplementedError

    def __len__(self) -> int:
        stop = self.num_examples() if self.stop is None else min(self.stop, self.num_examples())
        return max(0, -(-(stop - self.start) // self.step))

    def __getitem__(self, index: int) -> dict:
        if not isinstance(index, int) or not 0 <= index < len(self):
            raise IndexError(f"index {index!r} out of range for a task of {len(self)} examples")
        return self.get_example(self.start + index * self.step)


class ExampleFormat:
    """How a task writes its examples: `format` "plain" or "chat", `images` "path" or "pil" (chat only),
    `prompt` the user turn of a transcription row (DocBank, olmOCR) in chat format."""

    def __init__(self, format: str = "plain", images: str = "path", prompt: str = TRANSCRIBE_PROMPT):
        if format not in ("plain", "chat"):
            raise ValueError(f"unknown format {format!r}; use 'plain' (the data plan's) or 'chat' (conversations)")
        if images not in ("path", "pil"):
            raise ValueError(f"unknown images {images!r}; use 'path' or 'pil'")
        self.format, self.images, self.prompt = format, images, prompt

    def __call__(self, kind: str, text: str, response: str | None, messages: str | None,
                 image_path: str | None) -> dict:
        if kind == "text":
            return {"messages": json.loads(messages)}
        if self.format == "plain":
            return {"text": text, "response": response, "image_path": image_path}
        user, assistant = vision_turns(text, response, self.prompt)
        return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}],
                "images": [_open_image(image_path) if self.images == "pil" else image_path],
                "image_path": image_path}


def _open_image(path: str):
    from PIL import Image

    with Image.open(path) as img:
        img.load()  # read now: the file closes here, the image stays usable
        return img


class CatalogTask(Task):
    """Catalog rows matching a SQL predicate (in sample_id order), or a mixture's plan (in plan order).

    >>> CatalogTask("source = 'chartqa' AND meta->>'origin' = 'human'", split="train")
    >>> CatalogTask(mixture="stage2", split="train")
    >>> CatalogTask(mixture="stage2", split="train", format="chat", images="pil")  # the fork's shape
    """

    def __init__(self, where: str = "true", *, split: str | None = None, mixture: str | None = None,
                 catalog: str | os.PathLike | Catalog | None = None, format: str = "plain",
                 images: str = "path", prompt: str = TRANSCRIBE_PROMPT, **slicing):
        super().__init__(**slicing)
        self.example = ExampleFormat(format, images, prompt)
        if split is not None and split not in SPLIT_ALIASES:
            raise ValueError(f"unknown split {split!r}; use train, val or test")
        split = SPLIT_ALIASES.get(split) if split else None
        self.dir = catalog.dir if isinstance(catalog, Catalog) else resolve_dir(catalog)
        self.prefix = f"{self.dir.resolve().as_posix()}/"
        with Catalog(self.dir, read_only=True) as cat:
            if mixture is not None:
                definition = get_mixture(cat, mixture)
                check_split(cat, definition, split)
                query = f"SELECT sample_id FROM ({entries_sql(definition, split)}) ORDER BY {PLAN_ORDER}"
                params = []
            else:
                query = f"SELECT sample_id FROM samples WHERE ({bind_json_arrows(where)}\n)" + (" AND split = ?" if split else "") \
                    + " ORDER BY sample_id"
                params = [split] if split else []
            self.ids = cat.con.execute(query, params).fetchnumpy()["sample_id"].astype(np.uint64)
        self._con: tuple[int, duckdb.DuckDBPyConnection] | None = None

    def num_examples(self) -> int:
        return len(self.ids)

    def get_example(self, index: int) -> dict:
        if self._con is None or self._con[0] != os.getpid():  # one connection per (worker) process
            self._con = (os.getpid(), Catalog(self.dir, read_only=True).con)
        row = self._con[1].execute(
            "SELECT kind, text, response, CAST(messages AS VARCHAR), "
            "CASE WHEN image_path IS NULL THEN NULL ELSE ? || image_path END FROM samples WHERE sample_id = ?",
            [self.prefix, int(self.ids[index])],
        ).fetchone()
        if row is None:
            raise KeyError(f"sample {int(self.ids[index])} left the catalog after this task was built; build it again")
        return self.example(*row)

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_con": None}  # connections do not cross processes


class ExportTask(Task):
    """The rows of an export (folder with manifest.json, or one .parquet / .jsonl file), in plan order."""

    def __init__(self, path: str | os.PathLike, *, split: str | None = None, format: str = "plain",
                 images: str = "path", prompt: str = TRANSCRIBE_PROMPT, **slicing):
        super().__init__(**slicing)
        self.example = ExampleFormat(format, images, prompt)
        self.path, manifest = _export_file(Path(path).expanduser(), split)
        root = manifest.get("image_root")
        self.image_root = Path(root) if root and manifest.get("relative_paths") else None
        if self.path.suffix == ".parquet":
            meta = pq.ParquetFile(self.path).metadata
            sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
            self.starts = np.cumsum([0] + sizes)
            self._group: tuple[int, dict] | None = None
        else:  # JSONL: remember where each line starts
            offsets = [0]
            with open(self.path, "rb") as f:
                for line in f:
                    offsets.append(offsets[-1] + len(line))
            self.starts = np.array(offsets)

    def num_examples(self) -> int:
        return int(self.starts[-1]) if self.path.suffix == ".parquet" else len(self.starts) - 1

    def get_example(self, index: int) -> dict:
        if self.path.suffix == ".parquet":
            group = int(np.searchsorted(self.starts, index, side="right")) - 1
            if self._group is None or self._group[0] != group:  # decode one row group at a time
                columns = ["kind", "text", "response", "messages", "image_path"]
                self._group = (group, pq.ParquetFile(self.path).read_row_group(group, columns=columns).to_pydict())
            rows = self._group[1]
            i = index - int(self.starts[group])
            row = {k: v[i] for k, v in rows.items()}
        else:
            with open(self.path, "rb") as f:
                f.seek(int(self.starts[index]))
                row = json.loads(f.readline())
        if row["image_path"] and self.image_root is not None:
            row["image_path"] = str(self.image_root / row["image_path"])
        return self.example(row["kind"], row["text"], row["response"], row["messages"], row["image_path"])


def _export_file(path: Path, split: str | None) -> tuple[Path, dict]:
    if path.is_file() and path.suffix in (".parquet", ".jsonl"):
        manifest = path.parent / "manifest.json"
        return path, json.loads(manifest.read_text()) if manifest.is_file() else {}
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"no export at {path}: expected {manifest_path} or a .parquet/.jsonl file "
                                "(write one with `ocrcat export NAME --out DIR`)")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("embedded_images"):
        raise ValueError(f"the export at {path} carries its images (--embed-images): read it with "
                         "MixtureDataset; ExportTask reads plain exports (image paths)")
    [name] = split_files(manifest, split, str(path))
    return path / name, manifest


class SourceTask(CatalogTask):
    """All rows of one source in one split: the data plan's per-source tasks."""

    source = ""

    def __init__(self, split: str = "train", **kwargs):
        super().__init__(f"source = '{self.source}'", split=split, **kwargs)


class DocBank(SourceTask):
    source = "docbank"


class OlmOCR(SourceTask):
    source = "olmocr"


class LLaVACC3M(SourceTask):
    source = "llava_cc3m"


class PlotQA(SourceTask):
    source = "plotqa"


class ChartQA(SourceTask):
    source = "chartqa"


class FigureQA(SourceTask):
    source = "figureqa"


class PubTables(SourceTask):
    source = "pubtables"


class LaTeXFormulas(SourceTask):
    source = "latex_formulas"


class MathWriting(SourceTask):
    source = "mathwriting"


class SmolTalk(SourceTask):
    source = "smoltalk"
