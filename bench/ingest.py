"""Ingest throughput: ocrcat against the data plan's reference approach and the raw-copy limit.

A ChartQA-layout mirror of N distinct ~1000x800 JPEG charts is generated, then, in this one run:
- ocrcat: `ingest chartqa --workers 2` (validate, hash, store, catalog rows);
- reference: datasets.load_dataset -> iterate rows -> PIL decode -> PNG save -> JSONL index, one
  process (timed on the first REFERENCE_ROWS rows: at its speed the whole set would take minutes);
- raw copy: read the Parquet and write each image's bytes to a file, nothing else (one process).

Last line: `ingest rows_per_s=… reference_rows_per_s=… ratio=… raw_copy_fraction=…`.
Usage: python bench/ingest.py [--rows 5000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from ocrcat.catalog import Catalog
from ocrcat.ingest import chartqa, synth
from ocrcat.ingest.parquet import split_file_name, write_hub_parquet
from ocrcat.ingest.runner import ingest

REFERENCE_ROWS = 300
ROWS_PER_FILE = 1000


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


def run_ocrcat(root: Path, work: Path, workers: int) -> float:
    started = time.perf_counter()
    with Catalog(work / "catalog") as cat:
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
        print(f"ingest rows_per_s={ours:.0f} reference_rows_per_s={reference:.1f} "
              f"ratio={ours / reference:.1f} raw_copy_fraction={ours / raw:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
