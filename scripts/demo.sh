#!/usr/bin/env bash
# The whole product end to end on generated sample mirrors (no network):
# mirrors -> catalog -> SQL -> mixtures -> export -> DataLoader batches -> validate and report.
set -euo pipefail
DEMO=${DEMO:-demo}
rm -rf "$DEMO"
export OCRCAT_HOME="$DEMO/catalog"
set -x
ocrcat sample-mirror "$DEMO/mirror" --rows 60
ocrcat ingest all --mirror "$DEMO/mirror" --workers 2
ocrcat sources
ocrcat stats --tokenizer byte --plot "$DEMO/plots"  # + one PNG of histograms per source
ocrcat sql "SELECT source, split, text, response, image_tokens FROM samples USING SAMPLE 5 ROWS (reservoir, 7)"
ocrcat sql "SELECT source, count(*) AS rows, count(DISTINCT image_sha256) AS images FROM samples GROUP BY 1 ORDER BY 1" --csv
# Document sources: a two-column DocBank page read left column first, a PubTables HTML with spans,
# upright olmOCR renders of sideways scans, and the broken PDFs reported as errors.
ocrcat sql "SELECT source_key, left(text, 300) AS transcript FROM samples WHERE source = 'docbank' AND meta->>'columns' = '2' LIMIT 1"
ocrcat sql "SELECT source_key, response AS html FROM samples WHERE source = 'pubtables' AND response LIKE '%rowspan%' LIMIT 1"
ocrcat sql "SELECT source_key, image_width, image_height, meta->>'rotated' AS turned FROM samples WHERE source = 'olmocr' AND meta->>'rotated' <> '0'"
# olmOCR's two hub layouts side by side: 1025 (pdf_relpath) and 0225 (response JSON, PDFs found by id).
ocrcat sql "SELECT split_part(source_key, '#', 1) AS file, count(*) AS pages, min(meta->>'id') AS an_id, min(meta->>'page_number') AS page FROM samples WHERE source = 'olmocr' GROUP BY 1 ORDER BY 1"
ocrcat sql "SELECT source, source_key, stage, message FROM ingest_errors WHERE source IN ('docbank', 'olmocr', 'pubtables')"
# DocBank targets without artefacts: (cid:N) placeholders counted, not transcribed; a body page's running head as a plain line.
ocrcat sql "SELECT source_key, meta->>'cid' AS cid_dropped, meta->>'running_heads' AS running_heads, left(text, 160) AS transcript FROM samples WHERE source = 'docbank' AND (meta->>'cid')::INT > 0 ORDER BY (meta->>'running_heads')::INT DESC, source_key LIMIT 2"
# Charts and chat: PlotQA's real tag forms (bar and line spellings, x as indices) as tables; FigureQA questions sharing one image each.
ocrcat sql "SELECT meta->>'style' AS style, meta->>'orientation' AS orientation, coalesce(meta->>'x_index', 'false') AS x_index, count(*) AS charts FROM samples WHERE source = 'plotqa' GROUP BY ALL ORDER BY ALL"
ocrcat sql "SELECT text, response FROM samples WHERE source = 'plotqa' AND meta->>'orientation' = 'horizontal' LIMIT 1"
ocrcat sql "SELECT count(*) AS questions, count(DISTINCT image_path) AS figures FROM samples WHERE source = 'figureqa'"
# Mixtures: the data plan's presets as SQL views over samples, with seeded plans, exported in plan order.
ocrcat mix load --preset
ocrcat mix show stage2                        # rows per component before/after weighting, shares
ocrcat sql "SELECT source, count(*) AS plan_rows FROM mix_stage2 GROUP BY 1 ORDER BY 1"
ocrcat sql "SELECT position, component, repeat, source, left(text, 50) AS text FROM mix_stage2 LIMIT 6"
ocrcat mix create charts -C "human=source = 'chartqa' AND meta->>'origin' = 'human':2" -C "plots=source = 'plotqa':0.5" --text-share 0.2 --seed 7
ocrcat mix show charts
ocrcat export stage2 --out "$DEMO/export" --split train
ocrcat export stage2 --out "$DEMO/export-jsonl" --format jsonl --relative-paths
head -c 400 "$DEMO/export-jsonl/stage2.all.jsonl"; echo
python -c "from ocrcat.mix.tasks import ChartQA, SmolTalk; t = ChartQA(split='train'); print(len(t), t[0]); print(SmolTalk(split='train')[0])"
# The same rows as conversations in the nano-DeepSeek-OCR fork's shape (README: Training with nanochat / the nano-dsocr fork)
python -c "from ocrcat.mix.tasks import DocBank; e = DocBank(split='train', format='chat')[0]; print(e['messages'][0], repr(e['messages'][1]['content'][:60]), e['images'])"
# Training path: the DataLoader a nanochat script builds over the stage2 export (written to
# $DEMO/export by `ocrcat export` above), and the shapes of one batch.
python - "$DEMO/export" <<'PY'
import json, sys
from pathlib import Path
import torch
from torch.utils.data import DataLoader
from ocrcat.mix import MixtureDataset, PlanBatchSampler, VisionCollator, load_tokenizer

export = Path(sys.argv[1])
split = "train" if any(".train." in f for f in json.loads((export / "manifest.json").read_text())["files"]) else None
ds = MixtureDataset(export, split=split, tokenizer=load_tokenizer("byte"))
lengths = ds.lengths()
sampler = PlanBatchSampler(len(ds), 4, lengths=lengths)  # length-aware batches, rank 0 of 1
print(f"{len(ds)} samples; padding efficiency: plan order {PlanBatchSampler(len(ds), 4).padding_efficiency(lengths):.2f}, "
      f"length-aware {sampler.padding_efficiency(lengths):.2f}")
loader = DataLoader(ds, batch_sampler=sampler, num_workers=2, collate_fn=VisionCollator(ds.tokenizer, pad_to_multiple=8))
batch = next(iter(loader))
for name in ("inputs", "targets", "images_seq_mask", "pixel_values", "crop_values", "images_spatial_crop"):
    t = getattr(batch, name)
    print(f"  {name:20s} {str(tuple(t.shape)):24s} {t.dtype}")
on_device = batch.to("cpu", torch.bfloat16)  # "cuda" on a GPU machine: uint8 over the bus, normalised there
print(f"  after to(): pixel_values {on_device.pixel_values.dtype} in [{on_device.pixel_values.min():.2f}, {on_device.pixel_values.max():.2f}]")
PY
# Look before spending GPU hours: the checklist (mixtures included), one sample, the HTML report.
ocrcat validate --deep                        # the data plan's checklist; exit 1 if anything fails
ocrcat show "$(ocrcat sql "SELECT min(sample_id) FROM samples WHERE source = 'chartqa'" --csv | tail -1)" --open --to "$DEMO/show"
ocrcat report --out "$DEMO/report.html"       # one self-contained HTML page: open it in a browser
# ocrcat sql reads files named with --allow (here the export), and without --write writes nothing.
ocrcat sql "SELECT source, count(*) AS plan_rows FROM '$DEMO/export/*.parquet' GROUP BY 1 ORDER BY 1" --allow "$DEMO/export"
! ocrcat sql "COPY samples TO '$DEMO/leak.csv'"  # refused, exit 2: read-only without --write
test ! -e "$DEMO/leak.csv"
# The lake: readers never wait for a writer, every commit is a snapshot, an export can be redone
# byte for byte at the snapshot its manifest names, after later ingests changed the catalog.
ocrcat sample-mirror "$DEMO/mirror-more" --sources chartqa --rows 600 --seed 3
ocrcat ingest chartqa --mirror "$DEMO/mirror-more" --workers 2 2> "$DEMO/ingest-more.log" &
INGEST=$!
sleep 1; ocrcat stats > "$DEMO/stats-during-ingest.txt"  # answers at once, from the last committed snapshot
head -8 "$DEMO/stats-during-ingest.txt"
wait $INGEST
ocrcat sql "SELECT source, count(*) AS rows FROM samples WHERE source = 'chartqa' GROUP BY 1"
ocrcat history --limit 8
SNAPSHOT=$(python -c "import json, sys; print(json.load(open(sys.argv[1]))['snapshot'])" "$DEMO/export/manifest.json")
ocrcat export stage2 --out "$DEMO/export-again" --split train --at "$SNAPSHOT"
cmp "$DEMO/export/stage2.train.parquet" "$DEMO/export-again/stage2.train.parquet" && echo "export at snapshot $SNAPSHOT: byte-identical"
ocrcat compact
