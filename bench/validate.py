"""`ocrcat validate` speed: SQL plus per-distinct work against the obvious per-row Python loop.

A catalog of N rows is built from real ingested sample mirrors (chartqa, latex_formulas,
mathwriting): their rows are repeated under new source keys (with correct sample ids), so the
rows share the ingested images, as ChartQA's questions share charts. In this one run:
- ocrcat: `validate(cat)` (quick checks: prefix, image facts, files, image_tokens, ids, conversations);
- baseline: every row fetched into Python and checked there, one by one (the same checks);
- deep: `validate(cat, deep=True)`: the quick checks plus hash and full decode of each distinct image.

Last line: `validate rows=… rows_per_s=… baseline_rows_per_s=… ratio=… deep_s=…`.
Usage: python bench/validate.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from ocrcat import vision
from ocrcat.catalog import Catalog, sample_id
from ocrcat.inspection.validate import validate
from ocrcat.ingest.mirror import write_sample_mirror
from ocrcat.ingest.runner import ingest

SOURCES = ["chartqa", "latex_formulas", "mathwriting"]


def build(work: Path, rows: int) -> Path:
    write_sample_mirror(work / "mirror", SOURCES, rows=200, seed=5)
    path = work / "catalog"
    with Catalog(path) as cat:
        for source in SOURCES:
            ingest(cat, source, mirror=work / "mirror")
        base = cat.con.execute("SELECT count(*) FROM samples").fetchone()[0]
        keys = cat.con.execute("SELECT sample_id, source, split, source_key FROM samples").fetchall()
        copies = range(1, -(-rows // base))
        table = pa.table({
            "old": pa.array([k[0] for _ in copies for k in keys], pa.uint64()),
            "new": pa.array([sample_id(s, sp, f"{key}~{c}") for c in copies for _, s, sp, key in keys], pa.uint64()),
            "suffix": [f"~{c}" for c in copies for _ in keys],
        })
        cat.con.register("copy_ids", table)
        cat.con.execute("INSERT INTO samples SELECT s.* REPLACE (c.new AS sample_id, "
                        "s.source_key || c.suffix AS source_key) FROM samples s JOIN copy_ids c "
                        "ON s.sample_id = c.old")
        cat.con.unregister("copy_ids")
    return path


def baseline(cat: Catalog) -> int:
    """The per-row loop a first script would be: every row into Python, each check on it."""
    failures = 0
    seen = set()
    rows = cat.con.execute("SELECT sample_id, source, split, source_key, kind, text, image_path, "
                           "image_width, image_height, image_tokens FROM samples").fetchall()
    for sid, source, split, key, kind, text, path, w, h, tokens in rows:
        bad = sid in seen or sid != sample_id(source, split, key)
        seen.add(sid)
        if kind == "vision":
            bad |= not text.startswith("<image>\n")
            bad |= not os.path.isfile(os.path.join(cat.dir, path))
            bad |= tokens != vision.count_image_tokens(w, h, cat.vision_mode)
        failures += bad
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ocrcat-bench-validate-"))
    try:
        path = build(work, args.rows)
        with Catalog(path, read_only=True) as cat:
            n = cat.con.execute("SELECT count(*) FROM samples").fetchone()[0]
            images = cat.con.execute("SELECT count(DISTINCT image_path) FROM samples").fetchone()[0]
            started = time.perf_counter()
            results = validate(cat)
            quick = time.perf_counter() - started
            assert all(r.ok for r in results), [r for r in results if not r.ok]
            started = time.perf_counter()
            assert baseline(cat) == 0
            base = time.perf_counter() - started
            started = time.perf_counter()
            assert all(r.ok for r in validate(cat, deep=True))
            deep = time.perf_counter() - started
        print(f"{n:,} rows, {images:,} distinct images: quick validate {quick:.1f} s, "
              f"per-row Python loop {base:.1f} s, validate --deep {deep:.1f} s")
        print(f"validate rows={n} rows_per_s={n / quick:.0f} baseline_rows_per_s={n / base:.0f} "
              f"ratio={base / quick:.1f} deep_s={deep:.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
