"""ChartQA (HuggingFaceM4/ChartQA): one catalog row per question about a chart.

Hub layout: `data/{train,val,test}-*.parquet` with columns image (Image), query (str),
label (list[str]: the answer, sometimes more than one) and human_or_machine (0 human, 1 machine).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Iterator

from ocrcat.ingest import synth
from ocrcat.ingest.base import Option, Record, Rejected, Sample, Shard, SourceInfo, vision_prompt
from ocrcat.ingest.parquet import (
    IMAGE, STRING, list_of, plan_split, read_rows, row_key, split_file_name, write_hub_parquet,
)

INFO = SourceInfo(
    name="chartqa",
    hub_repo="HuggingFaceM4/ChartQA",
    files=("data/*.parquet",),
    splits=("train", "val", "test"),
    licence="GPL-3.0",
    one_row_is="a question about a chart",
)
OPTIONS: dict[str, Option] = {}
ORIGINS = {0: "human", 1: "machine"}
FEATURES = {
    "image": IMAGE,
    "query": STRING,
    "label": list_of(STRING),
    "human_or_machine": {"names": ["human", "machine"], "_type": "ClassLabel"},
}


def plan(root: Path, split: str, options: dict) -> list[Shard]:
    return plan_split(root, f"data/{split}-*.parquet", FEATURES)


def read(shard: Shard, options: dict) -> Iterator[Record]:
    for index, row in read_rows(shard, ["image", "query", "label", "human_or_machine"]):
        key = row_key(shard, index)
        query, labels, origin = row["query"], row["label"], row["human_or_machine"]
        if not query or not query.strip():
            yield Rejected(key, "map", "query is empty")
        elif not labels or not labels[0] or not labels[0].strip():
            yield Rejected(key, "map", "label list is empty: the question has no answer")
        elif origin not in ORIGINS:
            yield Rejected(key, "map", f"human_or_machine is {origin!r}, expected 0 (human) or 1 (machine)")
        else:
            meta = {"origin": ORIGINS[origin]}
            if len(labels) > 1:
                meta["labels"] = labels
            yield Sample(key, vision_prompt(f"Question: {query.strip()}"), labels[0].strip(), row["image"], meta=meta)


def write_sample_mirror(root: Path, rows: int, seed: int) -> None:
    """Bar charts with real values and questions whose answers are computed from them."""
    rng = random.Random(seed)
    for split, n in synth.split_sizes(rows, INFO.splits).items():
        records = []
        while len(records) < n:
            chart = synth.random_bar_chart(rng)
            image = synth.encode(synth.draw_bar_chart(chart), "PNG")
            for question, answer in synth.chart_questions(chart, rng, min(3, n - len(records))):
                records.append({"image": image, "query": question, "label": [answer],
                                "human_or_machine": rng.randint(0, 1)})
        write_hub_parquet(root / "data" / split_file_name(split), records, FEATURES)
