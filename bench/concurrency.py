"""Readers during an ingest: how long `stats` takes while an ingest commits, and what a reader
polling every second costs the ingest.

One ChartQA-style mirror (bench/scaling.py's: many questions per small chart) is ingested twice
into fresh catalogs, in this one run:
- alone (the baseline);
- while a reader process opens the catalog read-only once a second and computes the `ocrcat stats`
  summary (ocrcat's own library call), recording how long each took.
With the DuckDB-file catalog of the first version the reader could not open the catalog at all
while the ingest ran ("catalog … is in use"). Targets: stats latency < 2 s, slowdown < 10 %.
The machine's cores are shared, so the slowdown is noisy: the reader's own CPU counts against it.

Last line: `concurrency stats_latency_s=<max> stats_latency_p50_s=… stats_calls=… ingest_alone_s=…
ingest_with_reader_s=… slowdown_pct=…`.
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
try:
    from ocrcat.inspection.stats import catalog_stats
except ImportError:
    from ocrcat.catalog.stats import catalog_stats
catalog, stop, out = sys.argv[1:4]
latencies, rows = [], []
while not Path(stop).exists():
    started = time.perf_counter()
    try:
        with Catalog(catalog, read_only=True) as cat:
            rows.append(catalog_stats(cat)["rows"])
        latencies.append(time.perf_counter() - started)
    except CatalogError:
        pass  # the ingest has not created the catalog yet
    time.sleep(max(0.0, 1.0 - (time.perf_counter() - started)))
Path(out).write_text(json.dumps({"latencies": latencies, "rows": rows}))
"""


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
        stop, out = tmp / "stop", tmp / "reader.json"
        reader = subprocess.Popen([sys.executable, "-c", READER, str(tmp / "shared"), str(stop), str(out)])
        try:
            shared = timed_ingest(tmp / "mirror", tmp / "shared")
        finally:
            stop.touch()
            reader.wait(timeout=120)
        seen = json.loads(out.read_text())
    latencies = seen["latencies"]
    assert latencies, "the reader never read the catalog during the ingest"
    print(f"ingest alone {alone:.1f} s, with a reader polling every second {shared:.1f} s; "
          f"{len(latencies)} stats calls during the ingest saw {sorted(set(seen['rows']))[:8]} … rows")
    print(f"concurrency stats_latency_s={max(latencies):.2f} stats_latency_p50_s={statistics.median(latencies):.2f} "
          f"stats_calls={len(latencies)} ingest_alone_s={alone:.1f} ingest_with_reader_s={shared:.1f} "
          f"slowdown_pct={(shared / alone - 1) * 100:.1f}")


if __name__ == "__main__":
    main()
