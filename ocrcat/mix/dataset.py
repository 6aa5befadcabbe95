"""A map-style torch Dataset over an exported mixture plan or a catalog query.

Rows are read lazily: the Parquet files are opened per process (so the Dataset can be handed to
DataLoader workers) and only the row group holding the requested row is decoded, one at a time. No
image and no whole text column is kept in memory.

An export made with `--embed-images` carries each image's bytes in its row, so it can be read from
anywhere, also straight from object storage (`s3://bucket/prefix`, settings from the standard AWS
environment): a row group is fetched with ranged reads of its own column chunks, so a rank that is
given whole row groups (PlanBatchSampler's `block`, set to `ds.row_group_size`) fetches only those. Each item is a tokenized sample with its uint8
pixels; normalisation happens later on the device (see collate.py).
"""

from __future__ import annotations

import bisect
import ctypes
import functools
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from ocrcat.mix.manifest import split_files
from ocrcat.mix.tokenizer import LAYOUTS, TRANSCRIBE_PROMPT, Tokenizer, load_tokenizer
from ocrcat.vision import VisionProcessor, get_mode

# The columns a sample needs; an export may carry more (component, repeat, meta, …).
COLUMNS = ["position", "sample_id", "kind", "text", "response", "messages", "image_path", "image_tokens"]
CACHE_ROW_GROUP = 256  # rows per row group in a query cache: a cheap unit of random access


class MixtureDataset(torch.utils.data.Dataset):
    """Samples of a mixture in plan order: `ds[i]` is the row at index i of the export.

    >>> ds = MixtureDataset("exports/stage2", split="train", tokenizer=load_tokenizer("byte"))
    >>> loader = DataLoader(ds, batch_sampler=PlanBatchSampler(len(ds), 8), collate_fn=VisionCollator(ds.tokenizer))

    `max_len` bounds the ids of one sample; a longer one is cut after its image span
    (`overflow="truncate"`, the default) or dropped (`overflow="drop"`); an item that cannot be kept
    is None, and the collator counts it.

    `layout` renders vision rows "plain" (SPEC 5, the default) or "chat" (the nano-DeepSeek-OCR
    fork's `<|user_start|>` image + prompt `<|user_end|><|assistant_start|>` answer; a transcription
    row's prompt is `prompt`). Text rows are nanochat conversations in both. Each item carries the
    answer mask the collator's `loss="assistant"` uses.
    """

    def __init__(
        self,
        source: str | os.PathLike,
        *,
        split: str | None = None,
        tokenizer: Tokenizer | str | None = None,
        max_len: int | None = None,
        overflow: str = "truncate",
        vision_mode: str | None = None,
        layout: str = "plain",
        prompt: str = TRANSCRIBE_PROMPT,
    ):
        if overflow not in ("truncate", "drop"):
            raise ValueError(f"overflow must be 'truncate' or 'drop', not {overflow!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be 'plain' or 'chat', not {layout!r}")
        self.layout, self.prompt = layout, prompt
        self.url = str(source) if "://" in str(source) else None
        if self.url:
            self.files, manifest = _resolve_url(self.url, split)
            self.image_root = None  # remote exports carry their images (--embed-images)
        else:
            self.files, manifest = _resolve(Path(source).expanduser(), split)
            self.image_root = _image_root(manifest, self.files[0].parent)
        mode = manifest.get("vision_mode")
        if vision_mode and mode and vision_mode != mode:
            raise ValueError(f"the export's image_tokens were counted in vision mode {mode!r}, "
                             f"not {vision_mode!r}; export again from a catalog in that mode")
        self.vision_mode = get_mode(vision_mode or mode or "gundam").name
        self.tokenizer = tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)
        self.max_len = max_len
        self.overflow = overflow
        self.processor = VisionProcessor(self.vision_mode)
        # Row counts per row group, from the footers only: enough to find any row.
        self.starts: list[int] = []  # global index of each row group's first row
        self.groups: list[tuple[int, int]] = []  # (file index, row group index)
        n = 0
        self._fs = None
        self._open: dict[int, pq.ParquetFile] = {}
        self.embedded = False
        for f_i, path in enumerate(self.files):
            meta, names = self._file(f_i).metadata, self._file(f_i).schema_arrow.names
            missing = [c for c in COLUMNS if c not in names]
            if missing:
                raise ValueError(f"{path} lacks columns {missing}; is it an ocrcat export?")
            self.embedded = "image" in names
            if self.url and not self.embedded:
                raise ValueError(f"{self.url} is an export without its images; export with --embed-images "
                                 "to read it from object storage")
            for g in range(meta.num_row_groups):
                self.starts.append(n)
                self.groups.append((f_i, g))
                n += meta.row_group(g).num_rows
        self.n = n
        if not self.embedded and "://" in str(manifest.get("image_root") or ""):
            raise ValueError(f"{source}: this export's images are on object storage ({manifest['image_root']}, a "
                             "shared catalog) and MixtureDataset opens local image files only; export with "
                             "--embed-images, which puts each row's image bytes in the export")
        self.columns = COLUMNS + ["image"] if self.embedded else COLUMNS
        # Rows per row group (all but the last have as many): the sampler's `block` for streaming.
        self.row_group_size = self._file(0).metadata.row_group(0).num_rows if self.groups else 1
        self._open = {}  # footers read above are not kept: each process opens its own
        self._cached: tuple[int, pa.Table] | None = None

    @classmethod
    def from_query(cls, catalog, sql: str, *, cache_dir: str | os.PathLike | None = None, **kwargs) -> "MixtureDataset":
        """A Dataset over `sql` (a query over `samples`), materialised once to a Parquet cache.

        Rows keep the query's order (add ORDER BY for an order that never changes). The cache is
        keyed by the catalog, its snapshot and the query, so a changed catalog is read afresh.
        """
        cache_dir = Path(cache_dir or catalog.dir / "cache" / "queries")
        # A cursor (the catalog may hold a pending result) in one transaction: the snapshot named in
        # the key is the one read, even while an ingest commits.
        con = catalog.cursor()
        con.execute("BEGIN TRANSACTION")
        try:
            snapshot = con.execute("SELECT id FROM lake.current_snapshot()").fetchone()[0]
            key = hashlib.sha256(f"{catalog.dir.resolve()}\x1f{snapshot}\x1f{sql}".encode())
            path = cache_dir / f"query-{key.hexdigest()[:16]}.parquet"
            if not path.exists():
                cache_dir.mkdir(parents=True, exist_ok=True)
                _materialise(con, catalog.dir, sql, path)
        finally:
            con.close()
        kwargs.setdefault("vision_mode", catalog.vision_mode)
        return cls(path, **kwargs)

    def __len__(self) -> int:
        return self.n

    def __getstate__(self) -> dict:
        # Open files and the cached row group stay behind: each worker opens its own.
        state = self.__dict__.copy()
        state["_open"], state["_cached"], state["_fs"] = {}, None, None
        return state

    def _file(self, f_i: int) -> pq.ParquetFile:
        if f_i not in self._open:
            if self.url:
                if self._fs is None:
                    from ocrcat.catalog.objects import filesystem

                    self._fs = filesystem(self.url)[0]
                self._open[f_i] = pq.ParquetFile(self._fs.open_input_file(self.files[f_i]))
            else:
                self._open[f_i] = pq.ParquetFile(self.files[f_i])
        return self._open[f_i]

    def _group(self, g: int) -> pa.Table:
        if self._cached is None or self._cached[0] != g:
            f_i, rg = self.groups[g]
            self._cached = (g, self._file(f_i).read_row_group(rg, columns=self.columns))
        return self._cached[1]

    def row(self, i: int) -> dict:
        """The export row at index i, as Python values."""
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for a dataset of {self.n} rows")
        g = bisect.bisect_right(self.starts, i) - 1
        return self._group(g).slice(i - self.starts[g], 1).to_pylist()[0]

    def __getitem__(self, i: int) -> dict | None:
        if torch.utils.data.get_worker_info() is not None:
            _keep_freed_memory()
        r = self.row(i)
        views, crops, grids, counts = [], [], [], []
        if r["kind"] == "text":
            if not r["messages"]:
                raise ValueError(f"text row {r['sample_id']} (position {r['position']}) has no messages; "
                                 "`ocrcat validate` lists such rows")
            messages = json.loads(r["messages"]) if isinstance(r["messages"], str) else r["messages"]
            ids, answer = self.tokenizer.render_conversation_masked(messages)
            starts = []
        else:
            if r["image_path"]:
                img = self.processor(self._image(r))
                if img.tokens != r["image_tokens"]:
                    raise ValueError(
                        f"sample {r['sample_id']}: the export says {r['image_tokens']} image tokens but "
                        f"the image gives {img.tokens} in mode {self.vision_mode!r}; the export and the "
                        "Dataset disagree on the vision mode (or the image changed): export again")
                views.append(img.global_view)
                crops.append(img.crops)
                grids.append(img.grid)
                counts.append(img.tokens)
            try:
                ids, starts, answer = self.tokenizer.render_vision(r["text"], r["response"], counts,
                                                                   layout=self.layout, prompt=self.prompt)
            except ValueError as exc:  # placeholders and images disagree: a catalog from before ingest checked it
                raise ValueError(f"sample {r['sample_id']} (position {r['position']}): {exc}; `ocrcat validate` "
                                 "lists such rows (image_prefix); ingesting the source again makes them error rows, "
                                 "or keep them out of the mixture") from None
        truncated = False
        if self.max_len is not None and len(ids) > self.max_len:
            image_end = max((s + c for s, c in zip(starts, counts)), default=1)
            # An image cannot be cut: the model needs every one of its tokens in the inputs, which
            # are ids[:-1] (the collator's shift), so the span must end before the last kept id.
            if self.overflow == "drop" or image_end >= self.max_len:
                return None
            ids, answer, truncated = ids[: self.max_len], answer[: self.max_len], True
        t = self.processor.mode.tile_size
        base = self.processor.mode.base_size
        return {
            "position": r["position"],
            "sample_id": r["sample_id"],
            "ids": torch.tensor(ids, dtype=torch.long),
            "answer": torch.tensor(answer, dtype=torch.bool),  # ids that loss="assistant" trains on
            "image_tokens": counts,
            # One image (every row today): its tensors as they are, no copy; the collator copies once.
            "global_views": _join(views, torch.stack, (0, 3, base, base)),
            "crops": _join(crops, torch.cat, (0, 3, t, t)),
            "grids": grids,
            "truncated": truncated,
        }

    def _image(self, r: dict):
        """What the processor opens: the row's own bytes (embedded export), else the file."""
        if self.embedded:
            if not r["image"] or r["image"]["bytes"] is None:
                raise ValueError(f"sample {r['sample_id']} (position {r['position']}) has an image path but no "
                                 "image bytes in this embedded export; export it again")
            return io.BytesIO(r["image"]["bytes"])  # no path is opened
        path = Path(r["image_path"])
        return path if path.is_absolute() else self.image_root / path

    def lengths(self) -> np.ndarray:
        """Estimated ids per row for length-aware batching, one row group at a time.

        Image tokens come from the export (the catalog's count); text is counted in UTF-8 bytes: exact
        for a vision row with the byte tokenizer, an upper bound for a BPE one and for a text row (its
        `messages` JSON, syntax included; its `text`/`response` only repeat the conversation).
        """
        out = np.empty(self.n, dtype=np.int64)
        for g, start in enumerate(self.starts):
            f_i, rg = self.groups[g]
            t = self._file(f_i).read_row_group(rg, columns=["image_tokens", "text", "response", "messages", "image_path"])
            total = pc.add(pc.fill_null(t["image_tokens"], 0), 2)  # + bos + assistant_end
            conversation = pc.is_valid(t["messages"])
            for col in ("text", "response", "messages"):
                size = pc.fill_null(pc.binary_length(t[col].cast(pa.string())), 0)
                if col != "messages":
                    size = pc.if_else(conversation, 0, size)
                total = pc.add(total, size)
            # "<image>" (7 bytes) becomes the image run; a response adds its joining "\n".
            total = pc.subtract(total, pc.multiply(pc.is_valid(t["image_path"]).cast(pa.int64()), 7))
            total = pc.add(total, pc.is_valid(t["response"]).cast(pa.int64()))
            if self.layout == "chat":
                # Three more specials than the plain layout and no joining "\n"; a transcription row
                # gains "\n" + prompt in its user turn and loses the "\n" that opened its transcript.
                prompt = len(self.prompt.encode("utf-8"))
                extra = pc.if_else(pc.is_valid(t["response"]), 2, 3 + prompt)
                total = pc.add(total, pc.multiply(pc.is_valid(t["image_path"]).cast(pa.int64()), extra))
            out[start:start + t.num_rows] = total.to_numpy()
        return out


def _join(tensors: list[torch.Tensor], join, empty_shape: tuple) -> torch.Tensor:
    if len(tensors) == 1:
        return tensors[0].unsqueeze(0) if join is torch.stack else tensors[0]
    return join(tensors) if tensors else torch.empty(empty_shape, dtype=torch.uint8)


def _resolve(source: Path, split: str | None) -> tuple[list[Path], dict]:
    """The Parquet files of an export (dir or manifest.json) or a single Parquet file, and its manifest."""
    if source.suffix == ".parquet":
        if not source.is_file():
            raise FileNotFoundError(f"no Parquet file at {source}")
        manifest_path = source.parent / "manifest.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
        return [source], manifest
    manifest_path = source if source.name == "manifest.json" else source / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"no export at {source}: expected {manifest_path} "
                                "(write one with `ocrcat export NAME --out DIR`) or a .parquet file")
    manifest = json.loads(manifest_path.read_text())
    files = [manifest_path.parent / name for name in split_files(manifest, split, str(manifest_path.parent))]
    if files[0].suffix != ".parquet":
        raise ValueError(f"{files[0]} is a {files[0].suffix} export; MixtureDataset reads Parquet exports "
                         "(export again with --format parquet, the default)")
    return files, manifest


def _resolve_url(url: str, split: str | None) -> tuple[list[str], dict]:
    """The shard paths (inside their filesystem) and manifest of an embedded export at a URL."""
    from ocrcat.catalog.objects import filesystem

    fs, base = filesystem(url)
    try:
        with fs.open_input_stream(f"{base}/manifest.json") as f:
            manifest = json.loads(f.read())
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"no export at {url}: cannot read {url.rstrip('/')}/manifest.json ({exc})") from None
    return [f"{base}/{name}" for name in split_files(manifest, split, url)], manifest


@functools.cache
def _keep_freed_memory() -> None:
    """In a DataLoader worker (once): let glibc's malloc reuse freed image buffers.

    Every sample allocates and frees a few buffers of 3-10 MB (the decoded image, its views). By
    default glibc hands such sizes back to the kernel on free and gets fresh zeroed pages on the next
    allocation: a page fault every 4 KB. Keeping them (up to 32 MB a buffer, 512 MB of free heap):
    in 6 interleaved runs each of bench/loader's DataLoader, median 41.6 -> 44.4 samples/s, workers'
    system time 1.22 -> 1.00 s. A worker only loads data, so the memory it keeps is what its own
    peak took already; non-glibc systems are left as they are.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # malloc.h
    mallopt(M_MMAP_THRESHOLD, 32 << 20)
    mallopt(M_TRIM_THRESHOLD, 512 << 20)


def _image_root(manifest: dict, export_dir: Path) -> Path:
    root = Path(manifest.get("image_root") or export_dir)
    return root if root.is_absolute() else export_dir / root


def _materialise(con, catalog_dir: Path, sql: str, path: Path) -> None:
    """Stream the query's rows into a Parquet cache with absolute image paths; rename when complete."""
    tmp = path.with_suffix(".tmp")
    base = str(catalog_dir.resolve()) + "/"
    wrapped = f"""
        SELECT sample_id, source, split, kind, text, response, CAST(messages AS VARCHAR) AS messages,
               CASE WHEN image_path IS NULL THEN NULL ELSE ? || image_path END AS image_path,
               image_width, image_height, image_tokens, CAST(meta AS VARCHAR) AS meta
        FROM ({sql}) q"""
    try:
        rel = con.sql(wrapped, params=[base])
        # DuckDB 2 renamed fetch_arrow_reader to to_arrow_reader; the package allows both.
        reader = (getattr(rel, "to_arrow_reader", None) or rel.fetch_arrow_reader)(CACHE_ROW_GROUP)
    except Exception as exc:
        raise ValueError(f"cannot build a Dataset from this query (it must select whole rows of "
                         f"`samples`, e.g. SELECT * FROM samples WHERE …): {exc}") from None
    position = 0
    with pq.ParquetWriter(tmp, _with_position(reader.schema)) as writer:
        for batch in reader:
            pos = pa.array(np.arange(position, position + batch.num_rows, dtype=np.int64))
            position += batch.num_rows
            writer.write_table(pa.Table.from_batches([batch]).add_column(0, "position", pos),
                               row_group_size=CACHE_ROW_GROUP)
    os.replace(tmp, path)


def _with_position(schema: pa.Schema) -> pa.Schema:
    return schema.insert(0, pa.field("position", pa.int64()))
