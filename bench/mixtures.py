"""Mixture plan and export at scale: a synthetic catalog of 5 000 000 rows, the stage2 preset.

The catalog is built with SQL (made-up rows in the ten sources' proportions on the hub, text of
a few hundred bytes for pages and tens for questions; no image files). Then, each in a fresh
process so that its peak RSS is its own:
- plan: the stage2 plan computed in SQL (counted, not written);
- plan + export: `export_mixture(stage2)` to Parquet, the figure the targets apply to
  (< 60 s and < 3 GiB on the 2-core machine);
- baseline: the same Parquet writer fed `samples` as stored, no plan and no sort: what writing
  the rows costs by itself.

Last line: `mixtures plan_export_s=… peak_rss_mib=… plan_s=… baseline_copy_s=… plan_rows=…`.
Usage: python bench/mixtures.py [--rows 5000000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ocrcat.catalog import Catalog
from ocrcat.mix.mixtures import load_toml

# Rows per source on the hub (roughly), scaled to --rows.
HUB_ROWS = {"docbank": 500_000, "olmocr": 270_000, "llava_cc3m": 595_000, "plotqa": 157_000, "chartqa": 28_000,
            "figureqa": 1_300_000, "pubtables": 947_000, "latex_formulas": 550_000, "mathwriting": 230_000,
            "smoltalk": 1_000_000}


def build(path: Path, rows: int) -> None:
    scale = rows / sum(HUB_ROWS.values())
    counts = {s: round(n * scale) for s, n in HUB_ROWS.items()}
    counts["figureqa"] += rows - sum(counts.values())
    with Catalog(path) as cat:
        for source, n in counts.items():
            text = source == "smoltalk"
            page = source in ("docbank", "olmocr")
            cat.con.execute(
                """
                INSERT INTO samples
                SELECT CAST('0x' || substr(md5(?1 || ':' || i), 1, 16) AS UBIGINT), ?1,
                       CASE WHEN i % 50 = 0 THEN 'val' WHEN i % 50 = 1 THEN 'test' ELSE 'train' END, 'key-' || i,
                       CASE WHEN ?2 THEN 'text' ELSE 'vision' END,
                       CASE WHEN ?2 THEN 'How do I sort a list of ' || i || ' items in Python?'
                            WHEN ?3 THEN '<image>\n' || repeat('Lorem ipsum dolor sit amet ' || i || '. ', 12)
                            ELSE '<image>\nQuestion: what is the value of bar ' || i || '?' END,
                       CASE WHEN ?3 THEN NULL ELSE 'The answer is ' || i END,
                       CASE WHEN ?2 THEN json_array(json_object('role', 'user', 'content', 'sort ' || i),
                                                    json_object('role', 'assistant', 'content', 'sorted(x)')) END,
                       CASE WHEN ?2 THEN NULL ELSE 'images/' || ?1 || '/' || substr(md5(?1 || i), 1, 2) || '/'
                                                     || md5(?1 || i) || '.jpg' END,
                       CASE WHEN ?2 THEN NULL ELSE md5(?1 || i) END, CASE WHEN ?2 THEN NULL ELSE 'jpeg' END,
                       1000, 800, 150000, CASE WHEN ?2 THEN 0 ELSE 273 END, json_object('i', i), 0
                FROM range(?4) t(i)
                """,
                [source, text, page, n],
            )
        load_toml(cat, names=["stage2"])


def step(which: str, catalog: str, out: str) -> None:
    """One measured step, in this (fresh) process; prints a JSON line with seconds and peak RSS."""
    from ocrcat.mix.export import SCHEMA, _write_parquet, export_mixture
    from ocrcat.mix.mixtures import get_mixture, plan_sql

    started = time.perf_counter()
    with Catalog(catalog, read_only=True) as cat:
        if which == "plan":
            rows = cat.con.execute(f"SELECT count(*) FROM ({plan_sql(get_mixture(cat, 'stage2'))})").fetchone()[0]
        elif which == "export":
            rows = export_mixture(cat, "stage2", out)["rows"]
        else:  # baseline: the rows as stored through the same writer
            cat.con.execute("SET memory_limit = '1GB'")
            columns = ", ".join(
                {"position": "CAST(0 AS BIGINT) AS position", "component": "source AS component",
                 "repeat": "0 AS repeat", "messages": "CAST(messages AS VARCHAR) AS messages",
                 "meta": "CAST(meta AS VARCHAR) AS meta"}.get(name, name) for name in SCHEMA.names)
            relation = cat.con.sql(f"SELECT {columns} FROM samples")
            reader = (getattr(relation, "to_arrow_reader", None) or relation.fetch_arrow_reader)(65536)
            rows = sum(_write_parquet(reader, Path(out) / "baseline.parquet").values())
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak, "rows": rows}))


def measure(which: str, catalog: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, __file__, "--step", which, str(catalog), str(out)],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--keep", type=Path, help="build the catalog here and keep it")
    parser.add_argument("--step", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        step(*args.step)
        return
    work = args.keep or Path(tempfile.mkdtemp(prefix="ocrcat-bench-mixtures-"))
    catalog = work / "catalog"
    try:
        if not (catalog / "catalog.sqlite").exists():
            started = time.perf_counter()
            build(catalog, args.rows)
            print(f"built a synthetic catalog of {args.rows} rows in {time.perf_counter() - started:.1f} s")
        plan = measure("plan", catalog, work / "plan")
        export = measure("export", catalog, work / "export")
        baseline = measure("baseline", catalog, work / "baseline")
        size = (work / "export" / "stage2.all.parquet").stat().st_size
        print(f"plan only: {plan['rows']} positions in {plan['seconds']:.1f} s, peak RSS {plan['peak_rss_mib']:.0f} MiB")
        print(f"plan + export: {export['rows']} rows ({size / 2**20:.0f} MiB Parquet) in {export['seconds']:.1f} s, "
              f"peak RSS {export['peak_rss_mib']:.0f} MiB (targets: < 60 s, < 3072 MiB)")
        print(f"baseline, samples written as stored: {baseline['rows']} rows in {baseline['seconds']:.1f} s, "
              f"peak RSS {baseline['peak_rss_mib']:.0f} MiB")
        print(f"mixtures plan_export_s={export['seconds']:.1f} peak_rss_mib={export['peak_rss_mib']:.0f} "
              f"plan_s={plan['seconds']:.1f} baseline_copy_s={baseline['seconds']:.1f} plan_rows={export['rows']}")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
