"""Memory of the llava_cc3m ingest: chat.json streamed and images read from the zip stay bounded.

A llava_cc3m mirror of N entries (default 50 000; small distinct JPEGs in images.zip, one chat.json
array) is generated, then `ocrcat ingest llava_cc3m --workers 2` runs in a subprocess while this
script samples the resident memory of its whole process tree (main process + workers) from /proc.
Baselines in the same run: the same ingest of a tenth of the entries (how memory grows with the
dataset), and a process that only does `json.load(chat.json)`, the usual way to read it.

Last line: `llava peak_rss_mib=… rows_per_s=… largest_process_mib=… growth_mib_per_100k=…
json_load_baseline_mib=…`;
exit status 1 if peak_rss_mib reaches 1024.
Usage: python bench/llava.py [--entries 50000] [--workers 2]
"""

from __future__ import annotations

import argparse
import io
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from PIL import Image, ImageDraw

from ocrcat.catalog import Catalog
from ocrcat.ingest.llava_cc3m import PROMPTS

LIMIT_MIB = 1024


def make_mirror(root: Path, entries: int) -> None:
    """chat.json written entry by entry and images.zip of distinct 96x72 JPEGs."""
    root.mkdir(parents=True)
    rng = random.Random(0)
    with zipfile.ZipFile(root / "images.zip", "w", zipfile.ZIP_STORED) as archive, \
            open(root / "chat.json", "w") as chat:
        chat.write("[")
        for i in range(entries):
            key = f"GCC_train_{i:09d}"
            img = Image.new("RGB", (96, 72), tuple(rng.randrange(256) for _ in range(3)))
            d = ImageDraw.Draw(img)
            for _ in range(3):
                x, y = rng.randrange(80), rng.randrange(60)
                d.rectangle([x, y, x + rng.randint(4, 30), y + rng.randint(4, 30)],
                            fill=tuple(rng.randrange(256) for _ in range(3)))
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=80)
            archive.writestr(f"{key}.jpg", buf.getvalue())
            prompt = rng.choice(PROMPTS)
            human = f"<image>\n{prompt}" if i % 2 else f"{prompt}\n<image>"
            entry = {"id": key, "image": f"{key}.jpg", "conversations": [
                {"from": "human", "value": human},
                {"from": "gpt", "value": f"a photo of shapes number {i} on a plain background ."}]}
            chat.write(("," if i else "") + "\n" + json.dumps(entry))
        chat.write("\n]\n")


def tree_rss_kib(pid: int) -> int:
    """Resident memory of `pid` and all its descendants, from /proc (0 once it has exited)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(next((line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")), 0))
            for task in Path(f"/proc/{p}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return total


def run_sampled(cmd: list[str]) -> tuple[float, int, int]:
    """Run `cmd`; return (seconds, peak KiB of its process tree, peak KiB of its largest process)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started, peak = time.perf_counter(), 0
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None:
        peak = max(peak, tree_rss_kib(proc.pid))
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    if proc.returncode:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.read()[-2000:]}")
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # max over reaped processes, KiB
    return seconds, peak, largest if largest > before else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ocrcat-bench-llava-"))
    small = args.entries // 10
    try:
        t = time.perf_counter()
        make_mirror(work / "mirror/llava_cc3m", args.entries)
        make_mirror(work / "small/llava_cc3m", small)
        sizes = {p.name: p.stat().st_size / 2**20 for p in (work / "mirror/llava_cc3m").iterdir()}
        print(f"mirror: {args.entries} entries, chat.json {sizes['chat.json']:.1f} MiB, "
              f"images.zip {sizes['images.zip']:.1f} MiB, generated in {time.perf_counter() - t:.0f} s")

        load = ("import json, resource; json.load(open(r'%s'))\n"
                "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)" % (work / "mirror/llava_cc3m/chat.json"))
        baseline = int(subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, check=True).stdout)
        print(f"baseline: json.load(chat.json) alone peaks at {baseline / 1024:.0f} MiB")

        def command(mirror: str) -> list[str]:
            return [sys.executable, "-m", "ocrcat.cli", "ingest", "llava_cc3m", "--mirror", str(work / mirror),
                    "--catalog", str(work / f"catalog-{mirror}"), "--workers", str(args.workers)]

        _, small_peak, _ = run_sampled(command("small"))
        print(f"baseline: ingest of {small} entries peaks at {small_peak / 1024:.0f} MiB (process tree)")
        seconds, peak, largest = run_sampled(command("mirror"))
        growth = (peak - small_peak) / 1024 / (args.entries - small) * 100_000
        with Catalog(work / "catalog-mirror", read_only=True) as cat:
            rows, errors = cat.con.execute(
                "SELECT (SELECT count(*) FROM samples), (SELECT count(*) FROM ingest_errors)").fetchone()
        assert rows == args.entries and errors == 0, (rows, errors)
        print(f"ocrcat: {rows} rows in {seconds:.1f} s (--workers {args.workers}, process start and plan included); "
              f"process tree peak {peak / 1024:.0f} MiB, largest single process {largest / 1024:.0f} MiB")
        print(f"llava peak_rss_mib={peak / 1024:.0f} rows_per_s={rows / seconds:.0f} "
              f"largest_process_mib={largest / 1024:.0f} growth_mib_per_100k={growth:.0f} "
              f"json_load_baseline_mib={baseline / 1024:.0f}")
        if peak / 1024 >= LIMIT_MIB:
            sys.exit(1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
