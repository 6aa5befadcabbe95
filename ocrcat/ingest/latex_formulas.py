"""LaTeX-Formulas (OleehyO/latex-formulas), config cleaned_formulas: a printed formula per row.

Hub layout: `cleaned_formulas/train-*.parquet` with columns image (Image) and latex_formula (str).
The cleaning replaced every formula environment by `align*`, so most formulas arrive wrapped in
`\\begin{align*} … \\end{align*}`; that outer wrapper is removed unless `keep_align=true`.
(The other config, raw_formulas, has no images.)
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Iterator

from ocrcat.ingest import synth
from ocrcat.ingest.base import Option, Record, Rejected, Sample, Shard, SourceInfo, vision_prompt
from ocrcat.ingest.parquet import IMAGE, STRING, plan_split, read_rows, row_key, split_file_name, write_hub_parquet

INFO = SourceInfo(
    name="latex_formulas",
    hub_repo="OleehyO/latex-formulas",
    files=("cleaned_formulas/*.parquet",),
    splits=("train",),
    licence="OpenRAIL",
    one_row_is="a printed formula",
    configs=("cleaned_formulas",),
    default_config="cleaned_formulas",
)
OPTIONS = {"keep_align": Option(False, "keep the outer \\begin{align*}…\\end{align*} wrapper")}
PROMPT = "Convert this formula to LaTeX."
FEATURES = {"image": IMAGE, "latex_formula": STRING}
_ALIGN = re.compile(r"^\s*\\begin\{align\*\}(.*)\\end\{align\*\}\s*$", re.DOTALL)


def strip_align(formula: str) -> str:
    """Remove an outer align* environment that wraps the whole formula (and only such a one)."""
    match = _ALIGN.match(formula)
    if not match or "\\end{align*}" in match.group(1):
        return formula.strip()  # no wrapper, or two environments side by side: leave it
    return match.group(1).strip()


def plan(root: Path, split: str, options: dict) -> list[Shard]:
    return plan_split(root, f"cleaned_formulas/{split}-*.parquet", FEATURES)


def read(shard: Shard, options: dict) -> Iterator[Record]:
    for index, row in read_rows(shard, ["image", "latex_formula"]):
        key = row_key(shard, index)
        formula = row["latex_formula"]
        if not formula or not formula.strip():
            yield Rejected(key, "map", "latex_formula is empty")
            continue
        response = formula.strip() if options["keep_align"] else strip_align(formula)
        yield Sample(key, vision_prompt(PROMPT), response, row["image"])


def write_sample_mirror(root: Path, rows: int, seed: int) -> None:
    """Formulas from a small grammar, rendered to tight crops; most wrapped in align* as on the hub."""
    rng = random.Random(seed)
    records = []
    for _ in range(rows):
        latex = synth.random_formula(rng)
        image = synth.encode(synth.draw_formula(latex, size=rng.choice([24, 32, 40])), "PNG")
        if rng.random() < 0.8:
            latex = f"\\begin{{align*}}{latex}\\end{{align*}}"
        records.append({"image": image, "latex_formula": latex})
    write_hub_parquet(root / "cleaned_formulas" / split_file_name("train"), records, FEATURES)
