"""FigureQA (vikhyatk/figureqa): one catalog row per (figure, yes/no question) pair.

Hub layout: `data/train-*.parquet` with columns image (Image feature with decode=False: the same
{bytes, path} struct) and qa (list of {question, answer}). A figure carries about 13 questions;
its image is stored once, since the image store is content-addressed.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import Iterator

import pyarrow.compute as pc
import pyarrow.parquet as pq

from ocrcat.ingest import synth
from ocrcat.ingest.base import Option, Record, Rejected, Sample, Shard, SourceInfo, require_files, vision_prompt
from ocrcat.ingest.parquet import (
    IMAGE, STRING, list_of, plan_files, read_rows, row_key, split_file_name, write_hub_parquet,
)

INFO = SourceInfo(
    name="figureqa",
    hub_repo="vikhyatk/figureqa",
    files=("data/train-*.parquet",),
    splits=("train",),
    licence="FigureQA terms (Maluuba/Microsoft research data licence); the hub card states none",
    one_row_is="a yes/no question about a figure",
)
OPTIONS: dict[str, Option] = {}
ROWS_PER_SHARD = 32  # figures; ~400 catalog rows
FEATURES = {
    "image": {**IMAGE, "decode": False},  # the hub repo stores it undecoded
    "qa": list_of({"question": STRING, "answer": STRING}),
}


def plan(root: Path, split: str, options: dict) -> list[Shard]:
    if split != "train":
        return []
    shards = plan_files(require_files(root, "data/train-*.parquet", "FigureQA Parquet files"), root, ROWS_PER_SHARD, FEATURES)
    # A shard's size is its QA pairs, not its figures: count them from the qa column alone
    # (a figure with no questions still yields one record, its error row).
    by_group: dict[tuple[str, int], list[Shard]] = defaultdict(list)
    for shard in shards:
        by_group[(shard.payload["path"], shard.payload["group"])].append(shard)
    sized = {}
    for (path, group), group_shards in by_group.items():
        qa = pq.ParquetFile(path).read_row_group(group, columns=["qa"]).column("qa")
        counts = pc.max_element_wise(pc.fill_null(pc.list_value_length(qa), 0), 1).to_pylist()
        for shard in group_shards:
            p = shard.payload
            sized[shard.key] = Shard(shard.key, sum(counts[p["start"]:p["stop"]]), p)
    return [sized[s.key] for s in shards]


def normalise_answer(answer: object) -> str | None:
    """"Yes" or "No" for yes/no answers (any case, one trailing period allowed), else None."""
    if not isinstance(answer, str):
        return None
    word = answer.strip()
    word = word[:-1] if word.endswith(".") else word
    return {"yes": "Yes", "no": "No"}.get(word.strip().lower())


def read(shard: Shard, options: dict) -> Iterator[Record]:
    for index, row in read_rows(shard, ["image", "qa"]):
        figure = row_key(shard, index)
        pairs = row["qa"] or []
        if not pairs:
            yield Rejected(figure, "map", "the figure has no questions (qa is empty)")
            continue
        for j, pair in enumerate(pairs):
            key = f"{figure}/{j}"
            question = (pair or {}).get("question")
            answer = normalise_answer((pair or {}).get("answer"))
            if not isinstance(question, str) or not question.strip():
                yield Rejected(key, "map", "question is empty")
            elif answer is None:
                yield Rejected(key, "map", f"answer {(pair or {}).get('answer')!r} is not yes or no")
            else:
                yield Sample(key, vision_prompt(f"Question: {question.strip()}"), answer, row["image"],
                             meta={"figure": figure, "qa_index": j})


def figure_questions(chart: synth.SeriesChart, rng: random.Random, n: int) -> list[tuple[str, bool]]:
    """FigureQA-style questions about colour-named series, with answers computed from the values."""
    if chart.bar_colours:  # one bar per colour
        names, values = chart.categories, chart.series[0][1]
        value = dict(zip(names, values))
        pool = []
        for a in names:
            pool += [(f"Is {a} the maximum?", value[a] == max(values)),
                     (f"Is {a} the minimum?", value[a] == min(values))]
            b = rng.choice([c for c in names if c != a])
            pool += [(f"Is {a} greater than {b}?", value[a] > value[b]), (f"Is {a} less than {b}?", value[a] < value[b])]
    else:  # lines: one series per colour
        totals = {name: sum(vals) for name, vals, _ in chart.series}
        peaks = {name: max(vals) for name, vals, _ in chart.series}
        pool = []
        for name, vals, _ in chart.series:
            pool += [(f"Does {name} have the maximum area under the curve?", totals[name] == max(totals.values())),
                     (f"Does {name} have the highest value?", peaks[name] == max(peaks.values())),
                     (f"Does {name} have the lowest value?", min(vals) == min(min(v) for _, v, _ in chart.series))]
            for other, other_vals, _ in chart.series:
                if other != name:
                    diffs = [a - b for a, b in zip(vals, other_vals)]
                    crosses = any(d1 * d2 < 0 for d1, d2 in zip(diffs, diffs[1:]))
                    pool.append((f"Does {name} intersect {other}?", crosses))
    rng.shuffle(pool)
    return pool[:n]


def random_figure(rng: random.Random) -> synth.SeriesChart:
    kind = rng.choice(["vbar", "hbar", "line", "dot_line"])
    colours = rng.sample(list(synth.NAMED_COLOURS), rng.randint(3, 5))
    if kind in ("vbar", "hbar"):
        values = [round(rng.uniform(10, 95), 1) for _ in colours]
        return synth.SeriesChart(kind, "title", ("yaxis_label", "xaxis_label"), colours,
                                 [("", values, "#000000")], [synth.NAMED_COLOURS[c] for c in colours])
    xs = [str(x) for x in range(0, 100, 20)]
    series = [(c, [round(rng.uniform(10, 95), 1) for _ in xs], synth.NAMED_COLOURS[c]) for c in colours[:3]]
    return synth.SeriesChart(kind, "title", ("xaxis_label", "yaxis_label"), xs, series)


def write_sample_mirror(root: Path, rows: int, seed: int) -> None:
    """Figures with ~5 questions each (about `rows` pairs); some answers carry the hub's trailing period."""
    rng = random.Random(seed)
    records, pairs = [], 0
    while pairs < rows:
        chart = random_figure(rng)
        img, _ = synth.draw_series_chart(chart, 480, 360)
        questions = figure_questions(chart, rng, min(rng.randint(4, 6), rows - pairs))
        qa = [{"question": q, "answer": ("Yes" if yes else "No") + ("." if rng.random() < 0.2 else "")}
              for q, yes in questions]
        records.append({"image": synth.encode(img, "PNG"), "qa": qa})
        pairs += len(qa)
    write_hub_parquet(root / "data" / split_file_name("train"), records, FEATURES)
