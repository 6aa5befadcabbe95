"""Ingest throughput: ocrcat against what users would write instead, in the same run.

Mirror 1, distinct JPEGs: N distinct ~1000x800 JPEG charts in the ChartQA layout.
- ocrcat: `ingest chartqa --workers 2` (validate, hash, store, catalog rows);
- reference: the data plan's loop, datasets.load_dataset -> iterate rows -> PIL decode -> PNG save
  -> JSONL index, one process (timed on the first REFERENCE_ROWS rows: at its speed the whole set
  would take minutes);
- raw copy: read the Parquet and write each image's bytes to a file, nothing else (one process).

Mirror 2, repeated images (ChartQA's shape: about three questions per PNG chart), 20 000 distinct
PNG files and 60 000 rows by default: large enough that what every run pays once (opening the
catalog, starting the workers, the final swap and compaction: about 2 s) is not most of what is
timed, as it is at a few thousand rows. 2 000 charts are drawn; the other files are copies made
distinct by a text chunk (see distinct_copy):
- ocrcat as above;
- verified copy: a bare loop doing the same per-distinct-image work in as many processes (hash each
  row's bytes; the first time a hash is seen: verify the image, PIL's verify() for PNG, which checks
  every chunk's CRC, and a 1/8-scale decode for JPEG, then write it to a temporary name and rename);
  `verified_copy_fraction` = ocrcat / this (target >= 0.8);
- datasets.map(num_proc=2) calling PIL's verify() on each row's image (the `datasets` peer; the
  map alone is timed, load_dataset's conversion is not); `hf_ratio` = ocrcat / this (target >= 1).

Last line: `ingest rows_per_s=… reference_rows_per_s=… ratio=… raw_copy_fraction=…
repeated_rows_per_s=… verified_copy_fraction=… hf_ratio=…`.
Usage: python bench/ingest.py [--rows 5000] [--charts 20000] [--renders 2000]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import multiprocessing
import os
import random
import shutil
import struct
import tempfile
import time
import zlib
from pathlib import Path

import pyarrow.parquet as pq

from ocrcat.catalog import Catalog
from ocrcat.ingest import chartqa, synth
from ocrcat.ingest.parquet import split_file_name, write_hub_parquet
from ocrcat.ingest.runner import ingest

REFERENCE_ROWS = 300
ROWS_PER_FILE = 1000
QUESTIONS_PER_CHART = 3


def make_chart(seed: int) -> dict:
    rng = random.Random(seed)
    chart = synth.random_bar_chart(rng)
    image = synth.encode(synth.draw_bar_chart(chart, 1000, 800), "JPEG", quality=88)
    question, answer = synth.chart_questions(chart, rng, 1)[0]
    return {"image": image, "query": question, "label": [answer], "human_or_machine": seed % 2}


def make_mirror(root: Path, rows: int) -> None:
    with multiprocessing.Pool(2) as pool:
        for start in range(0, rows, ROWS_PER_FILE):
            records = pool.map(make_chart, range(start, min(rows, start + ROWS_PER_FILE)), chunksize=50)
            index, count = start // ROWS_PER_FILE, -(-rows // ROWS_PER_FILE)
            write_hub_parquet(root / "chartqa/data" / split_file_name("train", index, count), records,
                              chartqa.FEATURES)


def make_repeated_chart(seed: int) -> list[dict]:
    """One PNG chart (as ChartQA's are) asked QUESTIONS_PER_CHART questions: that many rows."""
    rng = random.Random(seed)
    chart = synth.random_bar_chart(rng)
    image = synth.encode(synth.draw_bar_chart(chart), "PNG")
    return [{"image": image, "query": q, "label": [a], "human_or_machine": seed % 2}
            for q, a in synth.chart_questions(chart, rng, QUESTIONS_PER_CHART)]


def distinct_copy(png: bytes, number: int) -> bytes:
    """The same picture as a different file: a tEXt chunk naming `number` before IEND (a valid PNG
    with its own hash, verified and stored like any other), so large mirrors need few renders."""
    body = b"tEXt" + b"copy\0" + str(number).encode()
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    return png[:-12] + chunk + png[-12:]


def make_repeated_mirror(root: Path, charts: int, renders: int) -> int:
    """`charts` distinct PNG files, QUESTIONS_PER_CHART rows each; only `renders` of them are drawn
    (drawing is slow), the others are distinct copies of those."""
    with multiprocessing.Pool(2) as pool:
        drawn = pool.map(make_repeated_chart, range(min(charts, renders)), chunksize=20)
    rows = 0
    per_file = ROWS_PER_FILE // QUESTIONS_PER_CHART
    count = -(-charts // per_file)
    for index, start in enumerate(range(0, charts, per_file)):
        records = []
        for chart in range(start, min(charts, start + per_file)):
            questions = drawn[chart % len(drawn)]
            image = questions[0]["image"] if chart < len(drawn) else distinct_copy(questions[0]["image"], chart)
            records += [{**q, "image": image} for q in questions]
        write_hub_parquet(root / "chartqa/data" / split_file_name("train", index, count), records,
                          chartqa.FEATURES)  # 100-row groups, as `datasets` writes image columns
        rows += len(records)
    return rows


def _verified_copy_group(task: tuple[str, int, str]) -> int:
    """The bare loop's work on one row group (in a worker): hash, verify and write each new image."""
    from PIL import Image

    path, group, out = task
    seen = _SEEN.setdefault(out, set())
    n = 0
    for cell in pq.ParquetFile(path).read_row_group(group, columns=["image"]).column("image").to_pylist():
        data = cell["bytes"]
        digest = hashlib.sha256(data).hexdigest()
        n += 1
        if digest in seen:
            continue
        with Image.open(io.BytesIO(data)) as img:
            if img.format == "JPEG":
                img.draft(img.mode, (img.width // 8, img.height // 8))
                img.load()
            else:
                img.verify()
        final = Path(out) / f"{digest}.{img.format.lower()}"
        if not final.exists():
            tmp = final.with_name(final.name + f".{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, final)
        seen.add(digest)
    return n


_SEEN: dict[str, set] = {}


def run_verified_copy(root: Path, out: Path, workers: int) -> float:
    out.mkdir()
    tasks = [(str(path), g, str(out)) for path in sorted((root / "chartqa/data").glob("*.parquet"))
             for g in range(pq.ParquetFile(path).num_row_groups)]
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        n = sum(pool.imap_unordered(_verified_copy_group, tasks))
    return n / (time.perf_counter() - started)


def _hf_verify(row: dict) -> None:
    from PIL import Image

    with Image.open(io.BytesIO(row["image"]["bytes"])) as img:
        img.verify()


def run_hf_map(root: Path, work: Path, workers: int) -> float:
    import datasets

    ds = datasets.load_dataset("parquet", data_files=str(root / "chartqa/data/*.parquet"), split="train",
                               cache_dir=str(work / "hf-cache-map"))
    ds = ds.cast_column("image", datasets.Image(decode=False))
    started = time.perf_counter()
    ds.map(_hf_verify, num_proc=workers, load_from_cache_file=False)
    return len(ds) / (time.perf_counter() - started)


def run_ocrcat(root: Path, work: Path, workers: int, name: str = "catalog") -> float:
    started = time.perf_counter()
    with Catalog(work / name) as cat:
        [summary] = ingest(cat, "chartqa", mirror=root, workers=workers)
    assert summary.errors == 0, summary
    return summary.rows / (time.perf_counter() - started)


def run_reference(root: Path, work: Path, rows: int) -> float:
    import datasets

    out = work / "reference"
    out.mkdir()
    started = time.perf_counter()
    ds = datasets.load_dataset("parquet", data_files=str(root / "chartqa/data/*.parquet"), split="train",
                               cache_dir=str(work / "hf-cache"))
    with open(out / "index.jsonl", "w") as index:
        for i, row in enumerate(ds.select(range(rows))):
            path = out / f"{i:08d}.png"
            row["image"].convert("RGB").save(path)
            index.write(json.dumps({"text": f"<image>\n{row['query']}", "response": row["label"][0],
                                    "image_path": str(path)}) + "\n")
    return rows / (time.perf_counter() - started)


def run_raw_copy(root: Path, out: Path) -> float:
    out.mkdir()
    started, n = time.perf_counter(), 0
    for path in sorted((root / "chartqa/data").glob("*.parquet")):
        pf = pq.ParquetFile(path)
        for group in range(pf.num_row_groups):
            for cell in pf.read_row_group(group, columns=["image"]).column("image").to_pylist():
                (out / f"{n:08d}.jpg").write_bytes(cell["bytes"])
                n += 1
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--charts", type=int, default=20000, help="distinct PNG files of the repeated mirror")
    parser.add_argument("--renders", type=int, default=2000, help="charts drawn for it (the rest are copies)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ocrcat-bench-ingest-"))
    try:
        t = time.perf_counter()
        make_mirror(work / "mirror", args.rows)
        size = sum(p.stat().st_size for p in (work / "mirror").rglob("*.parquet"))
        print(f"mirror: {args.rows} charts, {size / 1e6:.0f} MB, generated in {time.perf_counter() - t:.0f} s")
        # Both rates swing with the disk's write-back state: every phase starts after a sync, and the
        # raw copy runs before and after ocrcat, the faster of the two being the limit (the stricter).
        os.sync()
        raw_before = run_raw_copy(work / "mirror", work / "raw-1")
        os.sync()
        ours = run_ocrcat(work / "mirror", work, args.workers)
        os.sync()
        raw_after = run_raw_copy(work / "mirror", work / "raw-2")
        os.sync()
        raw = max(raw_before, raw_after)
        print(f"raw copy:  {raw:8.0f} rows/s (best of {raw_before:.0f} before and {raw_after:.0f} after)")
        print(f"ocrcat:    {ours:8.0f} rows/s (--workers {args.workers})")
        reference = run_reference(work / "mirror", work, min(REFERENCE_ROWS, args.rows))
        print(f"reference: {reference:8.1f} rows/s (first {min(REFERENCE_ROWS, args.rows)} rows)")

        t = time.perf_counter()
        rows = make_repeated_mirror(work / "repeated", args.charts, args.renders)
        print(f"repeated mirror: {args.charts} PNG files ({min(args.charts, args.renders)} drawn), {rows} rows, "
              f"generated in {time.perf_counter() - t:.0f} s")
        os.sync()
        copy_before = run_verified_copy(work / "repeated", work / "copy-1", args.workers)
        os.sync()
        repeated = run_ocrcat(work / "repeated", work, args.workers, "catalog-repeated")
        os.sync()
        copy_after = run_verified_copy(work / "repeated", work / "copy-2", args.workers)
        copy = max(copy_before, copy_after)
        hf = run_hf_map(work / "repeated", work, args.workers)
        print(f"verified copy: {copy:8.0f} rows/s (best of {copy_before:.0f} before and {copy_after:.0f} after)")
        print(f"ocrcat:        {repeated:8.0f} rows/s on repeated images")
        print(f"datasets.map:  {hf:8.0f} rows/s (verify() per row, num_proc={args.workers})")
        print(f"ingest rows_per_s={ours:.0f} reference_rows_per_s={reference:.1f} "
              f"ratio={ours / reference:.1f} raw_copy_fraction={ours / raw:.2f} repeated_rows_per_s={repeated:.0f} "
              f"verified_copy_fraction={repeated / copy:.2f} hf_ratio={repeated / hf:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
