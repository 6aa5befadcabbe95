"""Readers during an ingest: how long `stats` takes while an ingest commits, and what a reader
polling every second costs the ingest.

One ChartQA-style mirror (bench/scaling.py's: many questions per small chart) is ingested twice
into fresh catalogs, in this one run:
- alone (the baseline);
- while a reader process computes the `ocrcat stats` summary (ocrcat's own library call) once a
  second on a catalog it keeps open read-only (every query reads the latest committed snapshot),
  recording how long each took;
- while a reader does the same but opens the catalog afresh for every call.
With the DuckDB-file catalog of the first version the reader could not open the catalog at all
while the ingest ran ("catalog … is in use"). Targets: stats latency < 2 s, slowdown < 10 %.
The machine's cores are shared, so the slowdown is noisy: the reader's own CPU counts against it.

Last line: `concurrency stats_latency_s=<max> stats_latency_p50_s=… stats_calls=… ingest_alone_s=…
ingest_with_reader_s=… slowdown_pct=… slowdown_reopening_pct=…` (slowdown_pct: the open reader).
Usage: python bench/concurrency.py [--rows 30000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scaling import make_mirror  # noqa: E402

READER = """
import json, sys, time
from pathlib import Path
from ocrcat.catalog import Catalog, CatalogError
from ocrcat.inspection.stats import catalog_stats
catalog, stop, out, mode = sys.argv[1:5]
latencies, rows, cat = [], [], None
while not Path(stop).exists():
    started = time.perf_counter()
    try:
        if cat is None:
            cat = Catalog(catalog, read_only=True)
        rows.append(catalog_stats(cat)["rows"])  # each query reads the lake's latest snapshot
        latencies.append(time.perf_counter() - started)
    except CatalogError:
        pass  # the ingest has not created the catalog yet
    if mode == "reopen" and cat is not None:
        cat.close()
        cat = None
    time.sleep(max(0.0, 1.0 - (time.perf_counter() - started)))
Path(out).write_text(json.dumps({"latencies": latencies, "rows": rows}))
"""


def ingest_with_reader(mirror: Path, tmp: Path, mode: str) -> tuple[float, dict]:
    """The ingest's seconds while a reader computes stats once a second, and what the reader saw."""
    stop, out = tmp / f"stop-{mode}", tmp / f"reader-{mode}.json"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(tmp / mode), str(stop), str(out), mode])
    try:
        seconds = timed_ingest(mirror, tmp / mode)
    finally:
        stop.touch()
        reader.wait(timeout=120)
    seen = json.loads(out.read_text())
    assert seen["latencies"], "the reader never read the catalog during the ingest"
    return seconds, seen


def timed_ingest(mirror: Path, catalog: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ocrcat.cli", "ingest", "chartqa", "--mirror", str(mirror), "--workers", "2",
                    "--catalog", str(catalog)], check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=30000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ocrcat-concurrency-") as tmp:
        tmp = Path(tmp)
        make_mirror(tmp / "mirror", args.rows)
        alone = timed_ingest(tmp / "mirror", tmp / "alone")
        # The reader keeps the catalog open (a dashboard, a training job) ...
        shared, seen = ingest_with_reader(tmp / "mirror", tmp, "open")
        # ... or opens it afresh every second (as a repeated `ocrcat stats` does, minus the
        # interpreter's start): opening loads the DuckLake and SQLite extensions, ~0.4 s of CPU.
        reopened, seen_reopen = ingest_with_reader(tmp / "mirror", tmp, "reopen")
    latencies = seen["latencies"] + seen_reopen["latencies"]
    print(f"ingest alone {alone:.1f} s; with a reader computing stats every second on an open catalog "
          f"{shared:.1f} s ({len(seen['latencies'])} calls saw {sorted(set(seen['rows']))[:8]} … rows), "
          f"reopening it each time {reopened:.1f} s")
    print(f"concurrency stats_latency_s={max(latencies):.2f} stats_latency_p50_s={statistics.median(latencies):.2f} "
          f"stats_calls={len(latencies)} ingest_alone_s={alone:.1f} ingest_with_reader_s={shared:.1f} "
          f"slowdown_pct={(shared / alone - 1) * 100:.1f} slowdown_reopening_pct={(reopened / alone - 1) * 100:.1f}")


if __name__ == "__main__":
    main()
