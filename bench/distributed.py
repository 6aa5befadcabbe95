"""Scale-out on this machine: Ray ingest against the local pool, and an embedded export read from
the S3 server against the same export on local disk.

- ingest: the same ChartQA-layout mirror (N distinct ~1000x800 JPEG charts, bench/ingest.py's) is
  ingested with `--workers 2` and with `--ray` on a two-node Ray cluster of one CPU each (the one
  `scripts/services.sh start` runs, or a local one started here), interleaved, best of two rounds
  each; `ray_fraction` = Ray rows/s ÷ local rows/s (target ≥ 0.85).
- shared: the same mirror through Ray into a shared catalog (metadata in the PostgreSQL server,
  lake data and images on the S3 server, both on 127.0.0.1) when services.sh's are running;
  `shared_fraction` = its rows/s ÷ Ray into the local catalog: what the shared catalog costs.
- read: a mixture over those rows exported with `--embed-images` to a folder and to the S3 server
  (moto on 127.0.0.1); every row group is read back in plan order as a trainer's reader does;
  `s3_read_fraction` = S3 MB/s ÷ local MB/s.

Last line: `distributed ray_rows_per_s=… local_rows_per_s=… ray_fraction=… shared_rows_per_s=… shared_fraction=…
s3_mb_per_s=… local_mb_per_s=… s3_read_fraction=…`.
Usage: python bench/distributed.py [--rows 2000]   (eval "$(scripts/services.sh env)" first for S3)
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ingest import make_mirror  # bench/ingest.py: the same mirror its figures are measured on

from ocrcat.catalog import Catalog
from ocrcat.ingest.runner import ingest
from ocrcat.mix.embed import export_embedded, open_destination
from ocrcat.mix.mixtures import create_mixture


def timed_ingest(mirror: Path, catalog_dir: Path, **how) -> float:
    if catalog_dir.suffix != ".toml":
        shutil.rmtree(catalog_dir, ignore_errors=True)
    started = time.perf_counter()
    with Catalog(catalog_dir) as cat:
        [summary] = ingest(cat, "chartqa", mirror=mirror, **how)
    assert summary.errors == 0 and summary.status == "completed", summary
    return summary.rows / (time.perf_counter() - started)


def read_all(out: str) -> float:
    """MB/s reading every row group of an embedded export, in order, one at a time."""
    fs, root = open_destination(out)
    files = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(root)) if i.path.endswith(".parquet"))
    started, size = time.perf_counter(), 0
    for path in files:
        with fs.open_input_file(path) as f:
            parquet = pq.ParquetFile(f)
            for group in range(parquet.num_row_groups):
                size += parquet.read_row_group(group, columns=["position", "image"]).nbytes
    return size / 1e6 / (time.perf_counter() - started)


def s3_environment() -> None:
    """The standard AWS variables pointed at services.sh's S3 server (moto takes any keys)."""
    os.environ.setdefault("AWS_ENDPOINT_URL", os.environ["OCRCAT_TEST_S3_ENDPOINT"])
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(key, "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


def shared_catalog(work: Path, bucket: str, tag: str) -> Path:
    path = work / f"shared-{tag}.toml"
    path.write_text(f'metadata = "postgres:{os.environ["OCRCAT_TEST_POSTGRES"]}"\n'
                    f'data = "s3://{bucket}/{tag}"\nmetadata_schema = "bench_{os.getpid()}_{tag}"\n')
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    args = parser.parse_args()
    ray_address = os.environ.get("OCRCAT_TEST_RAY", "local")
    with tempfile.TemporaryDirectory(prefix="ocrcat-bench-distributed-") as tmp:
        work = Path(tmp)
        make_mirror(work / "mirror", args.rows)
        services = all(os.environ.get(f"OCRCAT_TEST_{k}") for k in ("S3_ENDPOINT", "POSTGRES"))
        bucket = f"bench-{os.getpid()}"
        if os.environ.get("OCRCAT_TEST_S3_ENDPOINT"):
            import boto3

            s3_environment()
            boto3.client("s3").create_bucket(Bucket=bucket)
        local, ray, shared = [], [], []
        for round_ in range(2):
            local.append(timed_ingest(work / "mirror", work / "local", workers=2))
            ray.append(timed_ingest(work / "mirror", work / "ray", ray=ray_address))
            if services:
                shared.append(timed_ingest(work / "mirror", shared_catalog(work, bucket, f"r{round_}"), ray=ray_address))
        shared_rate = max(shared) if shared else float("nan")
        print(f"ingest: local pool {max(local):.0f} rows/s, Ray {max(ray):.0f} rows/s ({ray_address}), "
              f"Ray into PostgreSQL + S3 {shared_rate:.0f} rows/s")

        with Catalog(work / "local") as cat:
            create_mixture(cat, "all", [("charts", "source = 'chartqa'", 1)])
            export_embedded(cat, "all", work / "export", shard_mb=64)
            s3_url = None
            if os.environ.get("OCRCAT_TEST_S3_ENDPOINT"):
                s3_url = f"s3://{bucket}/export"
                export_embedded(cat, "all", s3_url, shard_mb=64)
        local_mb = max(read_all(str(work / "export")) for _ in range(2))
        s3_mb = max(read_all(s3_url) for _ in range(2)) if s3_url else float("nan")
        print(f"read: local disk {local_mb:.0f} MB/s, S3 server {s3_mb:.0f} MB/s")
    print(f"distributed ray_rows_per_s={max(ray):.0f} local_rows_per_s={max(local):.0f} "
          f"ray_fraction={max(ray) / max(local):.2f} shared_rows_per_s={shared_rate:.0f} "
          f"shared_fraction={shared_rate / max(ray):.2f} s3_mb_per_s={s3_mb:.0f} local_mb_per_s={local_mb:.0f} "
          f"s3_read_fraction={s3_mb / local_mb:.2f}")


if __name__ == "__main__":
    main()
