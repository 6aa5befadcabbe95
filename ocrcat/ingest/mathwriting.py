"""MathWriting (deepcopy/MathWriting-human): a handwritten formula per row, rendered from ink.

Hub layout: `data/{train,val,test}-*.parquet` with columns image (Image) and latex (str).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Iterator

from ocrcat.ingest import synth
from ocrcat.ingest.base import Option, Record, Rejected, Sample, Shard, SourceInfo, vision_prompt
from ocrcat.ingest.parquet import IMAGE, STRING, plan_split, read_rows, row_key, write_hub_parquet

INFO = SourceInfo(
    name="mathwriting",
    hub_repo="deepcopy/MathWriting-human",
    files=("data/*.parquet",),
    splits=("train", "val", "test"),
    licence="CC-BY-NC-SA-4.0",
    one_row_is="a handwritten formula",
)
OPTIONS: dict[str, Option] = {}
PROMPT = "Recognize this handwritten formula and convert to LaTeX."
FEATURES = {"image": IMAGE, "latex": STRING}


def plan(root: Path, split: str, options: dict) -> list[Shard]:
    return plan_split(root, f"data/{split}-*.parquet", FEATURES)


def read(shard: Shard, options: dict) -> Iterator[Record]:
    for index, row in read_rows(shard, ["image", "latex"]):
        key = row_key(shard, index)
        if not row["latex"] or not row["latex"].strip():
            yield Rejected(key, "map", "latex is empty")
            continue
        yield Sample(key, vision_prompt(PROMPT), row["latex"].strip(), row["image"])


def write_sample_mirror(root: Path, rows: int, seed: int) -> None:
    """Formulas drawn as handwriting-like ink: jittered, rotated glyphs with thick strokes."""
    rng = random.Random(seed)
    for split, n in synth.split_sizes(rows, INFO.splits).items():
        records = []
        for _ in range(n):
            latex = synth.random_formula(rng)
            records.append({"image": synth.encode(synth.draw_handwriting(latex, rng), "PNG"), "latex": latex})
        write_hub_parquet(root / "data" / f"{split}-00000-of-00001-{seed:016x}.parquet", records, FEATURES)
