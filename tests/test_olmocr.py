"""olmOCR-mix: tarball streaming, PDF rendering, rotation, skipped and broken pages, both layouts."""

from __future__ import annotations

import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import REALDATA
from ocrcat.catalog import Catalog
from ocrcat.ingest import olmocr
from ocrcat.ingest.runner import ingest

REAL = REALDATA / "olmocr"


def _dark_share(img: Image.Image, box: tuple[int, int, int, int]) -> float:
    region = img.convert("L").crop(box)
    return sum(region.histogram()[:64]) / (region.width * region.height)


def test_sample_mirror_rotation_skips_and_broken_pdfs(tmp_path, catalog_dir):
    mirror = tmp_path / "m"
    olmocr.write_sample_mirror(mirror / "olmocr", 40, seed=2)
    assert (mirror / "olmocr" / "00_documents_train.parquet").exists()
    assert (mirror / "olmocr" / "01_books_eval.parquet").exists()
    with Catalog(catalog_dir) as cat:
        summaries = ingest(cat, "olmocr", mirror=mirror)
        rows = cat.con.execute("SELECT source_key, split, text, response, image_path, image_width, image_height, "
                               "meta FROM samples").fetchall()
        errors = cat.con.execute("SELECT source_key, stage, message FROM ingest_errors").fetchall()
    # 40 rows: train 36 (two configs of 18), val 4; every 10th doc of a config from #5 is broken,
    # #7 has no text (skipped), #3 is sideways, #8 has two pages.
    assert sum(s.skipped for s in summaries) == 4
    assert sorted(k for k, _, _ in errors) == ["00_documents_train.parquet#15", "00_documents_train.parquet#5",
                                              "01_books_train.parquet#15", "01_books_train.parquet#5"]
    assert all(stage == "image" and "cannot open PDF" in msg for _, stage, msg in errors)
    assert len(rows) == 40 - 4 - 4
    assert {r[1] for r in rows} == {"train", "val"}
    by_key = {r[0]: r for r in rows}
    for key, split, text, response, path, w, h, meta in rows:
        meta = json.loads(meta)
        assert response is None and text.startswith("<image>\n") and text.strip() != "<image>"
        # 300x420 pt at 144 dpi, portrait for every page, the sideways ones included.
        assert (w, h) == (600, 840), key
        img = Image.open(catalog_dir / path)
        assert _dark_share(img, (20, 20, 80, 80)) > 0.9, key  # the marker sits top left: upright
    sideways = json.loads(by_key["00_documents_train.parquet#3"][7])
    assert sideways["is_rotation_valid"] is False and sideways["rotated"] == 90
    assert json.loads(by_key["01_books_train.parquet#8"][7])["pdf_pages"] == 2


def _front_matter(md: str) -> tuple[dict, str]:
    """olmOCR's own sample format: YAML front matter of simple `key: value` lines, then the text."""
    _, head, text = (md + "\n").split("---\n", 2)
    facts = {}
    for line in head.strip().splitlines():
        key, value = (s.strip() for s in line.split(":", 1))
        facts[key] = {"True": True, "False": False}.get(value, int(value) if value.isdigit() else value)
    return facts, text.strip()


def test_real_pdfs_ingest_in_1025_layout(tmp_path, catalog_dir):
    docs = [{"id": pdf.stem, "pdf": pdf.read_bytes(), "natural_text": (REAL / "natural_text" / f"{pdf.stem}.md").read_text()}
            for pdf in sorted((REAL / "pdfs").glob("*.pdf"))]
    olmocr.write_mirror(tmp_path / "m" / "olmocr", "00_documents", "val", docs, per_tarball=6)
    with Catalog(catalog_dir) as cat:
        [summary] = ingest(cat, "olmocr", mirror=tmp_path / "m", workers=1)
        assert cat.con.execute("SELECT count(*) FROM ingest_errors").fetchone()[0] == 0
        rows = {json.loads(m)["id"]: (t, w, h) for t, w, h, m in cat.con.execute(
            "SELECT text, image_width, image_height, meta FROM samples").fetchall()}
    assert summary.skipped == 2 and summary.rows == 15  # blank_book_pg1 and ffaac…_pg1 have no text
    assert "blank_book_pg1" not in rows
    assert rows["small_page_size"][1:] == (360, 600)  # 180 x 300 pt at 144 dpi
    assert rows["earnings"][1:] == (1224, 1584)  # US letter
    assert max(rows["lincoln_letter"][1:]) == 2048  # 1836.75 x 2267.25 pt: capped at max_side
    expected = (REAL / "natural_text" / "earnings.md").read_text().strip()
    assert rows["earnings"][0] == "<image>\n" + expected


def test_0225_layout_response_json(tmp_path, catalog_dir):
    urls = {json.loads(line)["id"]: json.loads(line)["url"]
            for line in (REAL / "sample_dataset" / "urls.jsonl").read_text().splitlines() if line.strip()}
    root = tmp_path / "m" / "olmocr"
    (root / "pdf_tarballs").mkdir(parents=True)
    records = []
    with tarfile.open(root / "pdf_tarballs" / "chunk_0000.tar.gz", "w:gz") as tar:
        for doc_id in sorted(urls):
            facts, text = _front_matter((REAL / "sample_dataset" / f"{doc_id}.md").read_text())
            pdf = (REAL / "sample_dataset" / f"{doc_id}.pdf").read_bytes()
            member = doc_id.replace("/", "_") + ".pdf"
            info = tarfile.TarInfo(member)
            info.size = len(pdf)
            tar.addfile(info, io.BytesIO(pdf))
            records.append({"id": doc_id, "url": urls[doc_id], "page_number": 1,
                            "pdf_relpath": f"pdf_tarballs/chunk_0000.tar.gz:{member}",
                            "response": json.dumps({**facts, "natural_text": text or None})})
    records.append({"id": "bad", "url": None, "page_number": 1, "pdf_relpath": "chunk_0000:x.pdf",
                    "response": "{not json"})
    pq.write_table(pa.Table.from_pylist(records), root / "train-s2pdf.parquet")
    with Catalog(catalog_dir) as cat:
        [summary] = ingest(cat, "olmocr", mirror=tmp_path / "m", splits=["train"])
        rows = {json.loads(m)["id"]: (t, json.loads(m)) for t, m in cat.con.execute(
            "SELECT text, meta FROM samples").fetchall()}
        errors = cat.con.execute("SELECT source_key, stage, message FROM ingest_errors").fetchall()
    assert summary.skipped == 1  # empty_document/blanktext
    assert sorted(rows) == ["simple_document/edgar", "synth_table/untable"]
    text, meta = rows["simple_document/edgar"]
    assert text.startswith("<image>\nEdgar (or Eadgar;[1] c. 944 – 8 July 975) was King of the English")
    assert meta["is_table"] is True and meta["url"] == "https://en.wikipedia.org/wiki/Edgar,_King_of_England"
    assert "<th rowspan=\"2\">Continent and country or area" in rows["synth_table/untable"][0]
    assert errors == [("train-s2pdf.parquet#3", "parse", errors[0][2])] and "not JSON" in errors[0][2]


def test_encrypted_empty_and_zero_page_pdfs_are_reported():
    with pytest.raises(ValueError, match="encrypted"):
        olmocr.render_page(olmocr.make_pdf("secret", password="pw"), 144, 2048)
    with pytest.raises(ValueError, match="empty"):
        olmocr.render_page(b"", 144, 2048)
    zero = (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\n"
            b"trailer<</Root 1 0 R>>\n%%EOF\n")
    with pytest.raises(ValueError, match="no pages|cannot open"):
        olmocr.render_page(zero, 144, 2048)
    png, facts = olmocr.render_page(olmocr.make_pdf("two", pages=2), 72, 2048)
    assert facts == {"pdf_pages": 2} and Image.open(io.BytesIO(png)).size == (300, 420)


def test_config_option_limits_files(tmp_path):
    root = tmp_path / "olmocr"
    olmocr.write_sample_mirror(root, 20, seed=0)
    only_books = olmocr.plan(root, "train", {"config": "01_books"})
    assert only_books and all(s.payload["file"] == "01_books_train.parquet" for s in only_books)
    with pytest.raises(ValueError, match="no config"):
        olmocr.plan(root, "train", {"config": "99_nothing"})


def test_truncated_tarball_rejects_the_rest_of_its_rows(tmp_path):
    root = tmp_path / "olmocr"
    docs = [{"id": f"d{i}", "pdf": olmocr.make_pdf(f"page {i}"), "natural_text": f"page {i}"} for i in range(6)]
    olmocr.write_mirror(root, "00_documents", "train", docs, per_tarball=6)
    tarball = next((root / "pdf_tarballs").glob("*.tar.gz"))
    tarball.write_bytes(tarball.read_bytes()[: tarball.stat().st_size // 2])
    [shard] = olmocr.plan(root, "train", {"config": "all"})
    records = list(olmocr.read(shard, {"dpi": 72, "max_side": 2048}))
    assert len(records) == shard.size == 6  # exactly one record per row, whatever broke
    rejected = [r for r in records if isinstance(r, olmocr.Rejected)]
    assert rejected and all("damaged" in r.message for r in rejected)
