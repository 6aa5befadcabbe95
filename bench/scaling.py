"""Memory of the writing process against the catalog's size: ingest 5 K, 20 K and 60 K rows.

ChartQA-style mirrors (many questions per chart, as on the hub: 400 distinct small charts, every
row its own question) are ingested, each size into a fresh catalog, by a fresh process with two
workers. The main process (the one that commits) reports its peak RSS above what it held once the
catalog was open; the growth per 100 K rows is the slope between the smallest and the largest run.
SPEC §6 wants memory bounded by batch sizes, not by dataset size; the DuckDB-file catalog of the
first version grew by about 60 MiB per 100 K rows (its in-memory primary-key index), the target is
at most 10.
Each size is ingested --repeat times (3) and the median growth kept: one run's peak moves by a
few MiB from run to run, which over 55 000 rows is a swing of ±4 MiB per 100 K rows.
At 5 K rows the writer's buffers are not yet at their full size (a commit batch is 5 000 records,
a Parquet row group 8 192 rows), so part of the growth to 20 K rows is a one-off step;
`--sizes 20000,60000,200000` measures the slope once the buffers are full.

Last line: `scaling main_growth_mib_per_100k=… main_peak_mib_5000=… … seconds_60000=…`.
Usage: python bench/scaling.py [--sizes 5000,20000,60000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHARTS = 400
ROWS_PER_FILE = 1000


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def make_mirror(root: Path, rows: int) -> None:
    from ocrcat.ingest import chartqa, synth
    from ocrcat.ingest.parquet import split_file_name, write_hub_parquet

    charts = []
    for i in range(CHARTS):
        rng = random.Random(i)
        charts.append(synth.encode(synth.draw_bar_chart(synth.random_bar_chart(rng), 320, 240), "PNG"))
    count = -(-rows // ROWS_PER_FILE)
    for index, start in enumerate(range(0, rows, ROWS_PER_FILE)):
        records = [{"image": charts[i % CHARTS], "query": f"What is the value of bar {i}?", "label": [str(i % 97)],
                    "human_or_machine": i % 2} for i in range(start, min(rows, start + ROWS_PER_FILE))]
        write_hub_parquet(root / "chartqa/data" / split_file_name("train", index, count), records, chartqa.FEATURES)


def step(mirror: str, catalog: str) -> None:
    """One ingest in this (fresh) process; prints its memory figures as JSON."""
    from ocrcat.catalog import Catalog
    from ocrcat.ingest.runner import ingest

    with Catalog(catalog) as cat:
        before = rss_mib()
        started = time.perf_counter()
        [summary] = ingest(cat, "chartqa", mirror=mirror, workers=2)
        seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": summary.rows, "errors": summary.errors, "before_mib": before, "peak_mib": peak,
                      "seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="5000,20000,60000")
    parser.add_argument("--repeat", type=int, default=3, help="runs per size; the median growth is kept")
    parser.add_argument("--step", nargs=2, metavar=("MIRROR", "CATALOG"))
    args = parser.parse_args()
    if args.step:
        step(*args.step)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {}
    with tempfile.TemporaryDirectory(prefix="ocrcat-scaling-") as tmp:
        for rows in sizes:
            mirror = Path(tmp) / f"mirror-{rows}"
            make_mirror(mirror, rows)
            runs = []
            for attempt in range(args.repeat):
                catalog = Path(tmp) / f"catalog-{rows}-{attempt}"
                done = subprocess.run([sys.executable, __file__, "--step", str(mirror), str(catalog)],
                                      capture_output=True, text=True, check=True)
                result = json.loads(done.stdout.strip().splitlines()[-1])
                assert result["rows"] == rows and result["errors"] == 0, result
                result["growth_mib"] = result["peak_mib"] - result["before_mib"]
                runs.append(result)
                shutil.rmtree(catalog)
            result = results[rows] = sorted(runs, key=lambda r: r["growth_mib"])[len(runs) // 2]  # the median
            print(f"{rows:>7} rows: main process {result['before_mib']:.0f} MiB after opening, peak "
                  f"{result['peak_mib']:.0f} MiB (+{result['growth_mib']:.0f}; runs: "
                  f"{', '.join('+%.0f' % r['growth_mib'] for r in runs)}), {result['seconds']:.1f} s", flush=True)
    small, large = min(sizes), max(sizes)
    slope = (results[large]["growth_mib"] - results[small]["growth_mib"]) / (large - small) * 100_000
    figures = [f"main_growth_mib_per_100k={slope:.1f}"]
    figures += [f"main_peak_mib_{n}={results[n]['peak_mib']:.0f}" for n in sizes]
    figures += [f"seconds_{n}={results[n]['seconds']:.1f}" for n in sizes]
    print("scaling " + " ".join(figures))


if __name__ == "__main__":
    main()
