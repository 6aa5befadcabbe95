"""olmOCR-mix: tarball streaming, PDF rendering, rotation, skipped and broken pages, both layouts."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pymupdf
import pytest
from PIL import Image, ImageChops, ImageStat

from conftest import REALDATA
from ocrcat.catalog import Catalog
from ocrcat.ingest import olmocr
from ocrcat.ingest.runner import ingest

REAL = REALDATA / "olmocr"


def _dark_share(img: Image.Image, box: tuple[int, int, int, int]) -> float:
    region = img.convert("L").crop(box)
    return sum(region.histogram()[:64]) / (region.width * region.height)


def test_sample_mirror_both_layouts_rotation_skips_and_broken_pdfs(tmp_path, catalog_dir):
    mirror = tmp_path / "m"
    olmocr.write_sample_mirror(mirror / "olmocr", 40, seed=2)
    root = mirror / "olmocr"
    assert (root / "00_documents_train.parquet").exists() and (root / "00_documents_eval.parquet").exists()
    # 01_books in the 0225 layout: `response` JSON, no pdf_relpath, PDFs as `{id}.pdf` with a `/` in the id.
    assert (root / "train-iabooks.parquet").exists() and (root / "eval-iabooks.parquet").exists()
    books = pq.read_table(root / "train-iabooks.parquet")
    assert books.column_names == ["id", "url", "page_number", "response"]
    assert books.schema.field("page_number").type == pa.float64() and books.column("id")[0].as_py() == "books/train/0000"
    with tarfile.open(root / "pdf_tarballs" / "iabooks_train_00000.tar.gz") as tar:
        assert "books/train/0000.pdf" in tar.getnames()
    with Catalog(catalog_dir) as cat:
        summaries = ingest(cat, "olmocr", mirror=mirror)
        rows = cat.con.execute("SELECT source_key, split, text, response, image_path, image_width, image_height, "
                               "meta FROM samples").fetchall()
        errors = cat.con.execute("SELECT source_key, stage, message FROM ingest_errors").fetchall()
    # 40 rows: train 36 (two configs of 18), val 4. Per config: #5 a truncated PDF, #15 an HTML page
    # saved as .pdf, #7 and #17 no text (skipped), #3, #9, #13 stored turned, #8 two pages.
    assert sum(s.skipped for s in summaries) == 4
    by_error = {key: (stage, message) for key, stage, message in errors}
    assert sorted(by_error) == ["00_documents_train.parquet#15", "00_documents_train.parquet#5",
                                "train-iabooks.parquet#15", "train-iabooks.parquet#5"]
    for file in ("00_documents_train.parquet", "train-iabooks.parquet"):
        assert by_error[f"{file}#5"][0] == "image" and "cannot open PDF" in by_error[f"{file}#5"][1]
        assert by_error[f"{file}#15"] == ("image", "not a PDF: it starts with b'<!DOCTYPE html>\\n<html><h', "
                                                   "expected %PDF- (an HTML error page saved as .pdf?)")
    assert len(rows) == 40 - 4 - 4
    assert {r[1] for r in rows} == {"train", "val"}
    by_key = {r[0]: json.loads(r[7]) for r in rows}
    for key, split, text, response, path, w, h, meta in rows:
        meta = json.loads(meta)
        assert response is None and text.startswith("<image>\n") and text.strip() != "<image>"
        # 300x420 pt at 144 dpi, portrait for every page, the turned ones included.
        assert (w, h) == (600, 840), key
        img = Image.open(catalog_dir / path)
        assert _dark_share(img, (20, 20, 80, 80)) > 0.9, key  # the marker sits top left: upright
        assert meta["page_number"] == 1 and type(meta["page_number"]) is int  # 1.0 in the 0225 file
    for file in ("00_documents_train.parquet", "train-iabooks.parquet"):
        assert [by_key[f"{file}#{i}"]["rotated"] for i in (3, 9, 13)] == [90, 270, 180]
        assert by_key[f"{file}#3"]["is_rotation_valid"] is False
        assert by_key[f"{file}#8"]["pdf_pages"] == 2
    assert by_key["train-iabooks.parquet#3"]["id"] == "books/train/0003"


def _gray(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(png)).convert("L")


def _difference(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute grey difference at a quarter of the size (blind to sub-pixel shifts, not to
    a page turned the wrong way)."""
    size = (a.width // 4, a.height // 4)
    a, b = a.resize(size, Image.BOX), b.resize(size, Image.BOX)
    return ImageStat.Stat(ImageChops.difference(a, b)).mean[0]


def _stored_turned(pdf: bytes, correction: int) -> bytes:
    """The page as olmOCR's data holds a page whose rotation_correction is `correction`: its content
    turned clockwise by that much, so that turning it counter-clockwise (olmOCR's PIL
    ROTATE_{correction} on the rendered page) makes it upright again."""
    src = pymupdf.open(stream=pdf)
    w, h = src[0].rect.width, src[0].rect.height
    out = pymupdf.open()
    page = out.new_page(width=h if correction % 180 else w, height=w if correction % 180 else h)
    page.show_pdf_page(page.rect, src, 0, rotate=(360 - correction) % 360)  # `rotate` here is counter-clockwise
    return out.tobytes()


PIL_TURN = {90: Image.ROTATE_90, 180: Image.ROTATE_180, 270: Image.ROTATE_270}


def test_rotation_correction_is_counter_clockwise_on_real_pdfs(tmp_path, catalog_dir):
    names = ["earnings", "math_2503_04086", "multi_column_miss"]
    docs = []
    for name in names:
        pdf = (REAL / "pdfs" / f"{name}.pdf").read_bytes()
        text = (REAL / "natural_text" / f"{name}.md").read_text()
        for correction in (90, 180, 270):
            docs.append({"id": f"{name}/{correction}", "pdf": _stored_turned(pdf, correction), "natural_text": text,
                         "is_rotation_valid": False, "rotation_correction": correction})
        # A page whose rotation is valid is rendered as stored, whatever rotation_correction says.
        docs.append({"id": f"{name}/valid", "pdf": pdf, "natural_text": text, "rotation_correction": 90})
    olmocr.write_mirror(tmp_path / "m" / "olmocr", "00_documents", "train", docs, per_tarball=5)
    with Catalog(catalog_dir) as cat:
        [summary] = ingest(cat, "olmocr", mirror=tmp_path / "m", options={"dpi": 72})
        stored = {json.loads(m)["id"]: (catalog_dir / p).read_bytes() for p, m in cat.con.execute(
            "SELECT image_path, meta FROM samples").fetchall()}
    assert (summary.rows, summary.errors) == (12, 0)
    for name in names:
        upright = _gray(olmocr.render_page((REAL / "pdfs" / f"{name}.pdf").read_bytes(), 72, 4096)[0])
        assert _gray(stored[f"{name}/valid"]).size == upright.size
        assert _difference(upright, _gray(stored[f"{name}/valid"])) < 1
        for correction in (90, 180, 270):
            doc = next(d for d in docs if d["id"] == f"{name}/{correction}")
            image = _gray(stored[doc["id"]])
            assert image.size == upright.size, (name, correction)
            assert _difference(upright, image) < 1, (name, correction)  # upright: the unturned page's pixels
            # olmOCR's own way: render the stored page, then PIL transpose(ROTATE_{correction}).
            as_olmocr = _gray(olmocr.render_page(doc["pdf"], 72, 4096)[0]).transpose(PIL_TURN[correction])
            assert _difference(as_olmocr, image) < 3, (name, correction)
            # The mismatched direction (clockwise, what ocrcat did before) leaves 90 and 270 upside
            # down; for 180 both directions agree, and leaving the page unturned is what fails.
            wrong = (360 - correction) % 360 if correction != 180 else 0
            assert _difference(upright, _gray(olmocr.render_page(doc["pdf"], 72, 4096, wrong)[0])) > 8, (name, correction)


def _with_boxes(pdf: bytes, media: str | None = None, crop: str | None = None, media_on_parent: bool = False) -> bytes:
    """`pdf` with its page's /MediaBox and /CropBox set (PDF arrays), or the MediaBox moved to the
    page tree's root, whence the page inherits it."""
    doc = pymupdf.open(stream=pdf)
    xref = doc[0].xref
    if media_on_parent:
        parent = int(doc.xref_get_key(xref, "Parent")[1].split()[0])
        doc.xref_set_key(parent, "MediaBox", media or doc.xref_get_key(xref, "MediaBox")[1])
        doc.xref_set_key(xref, "MediaBox", "null")
    elif media:
        doc.xref_set_key(xref, "MediaBox", media)
    doc.xref_set_key(xref, "CropBox", crop or "null")
    return doc.tobytes()


@pytest.mark.parametrize("name", ["earnings", "multi_column_miss"])
def test_the_whole_sheet_is_rendered_as_olmocr_renders_it_not_just_the_cropbox(name):
    # olmOCR's text describes the MediaBox (poppler's pdftoppm, which its renderpdf.py runs, renders
    # that); MuPDF on its own renders the CropBox and would cut text the row's response holds.
    pdf = (REAL / "pdfs" / f"{name}.pdf").read_bytes()
    x0, y0, x1, y1 = pymupdf.open(stream=pdf)[0].mediabox
    top_two_thirds = f"[{x0} {y0 + (y1 - y0) / 3} {x1} {y1}]"
    shifted = f"[{x0 + 10} {y0 + 20} {x1 + 10} {y1 + 20}]"  # a MediaBox not at the origin
    wider = f"[{x0} {y0} {x1 + 50} {y1 + 40}]"  # not Letter, MuPDF's size for a page without one
    cases = [  # (the page as stored, the same sheet without a CropBox)
        (_with_boxes(pdf, crop=top_two_thirds), _with_boxes(pdf)),
        (_with_boxes(pdf, media=wider, crop=top_two_thirds, media_on_parent=True), _with_boxes(pdf, media=wider)),
        (_with_boxes(pdf, media=shifted, crop=f"[{x0 + 60} {y0 + 80} {x1 - 40} {y1 - 90}]"), _with_boxes(pdf, media=shifted)),
    ]
    for stored, whole in cases:
        for correction in (0, 90):
            got, want = (_gray(olmocr.render_page(p, 72, 4096, correction)[0]) for p in (stored, whole))
            assert got.size == want.size, (correction, got.size, want.size)
            assert _difference(got, want) < 1, correction


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


def _tar(path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_0225_layout_finds_pdfs_by_id(tmp_path, catalog_dir):
    """olmOCR's own sample documents in the 0225 hub layout: `response` JSON, no pdf_relpath, PDFs
    as tarball members `{id}.pdf` (ids with a `/`) spread over two tarballs, page_number a double."""
    urls = {json.loads(line)["id"]: json.loads(line)["url"]
            for line in (REAL / "sample_dataset" / "urls.jsonl").read_text().splitlines() if line.strip()}
    root = tmp_path / "m" / "olmocr"
    records = []
    for doc_id in sorted(urls):
        facts, text = _front_matter((REAL / "sample_dataset" / f"{doc_id}.md").read_text())
        records.append({"id": doc_id, "url": urls[doc_id], "page_number": 1.0,
                        "response": json.dumps({**facts, "natural_text": text or None})})
    pdfs = {f"{i}.pdf": (REAL / "sample_dataset" / f"{i}.pdf").read_bytes() for i in sorted(urls)}
    facts = json.dumps({"primary_language": "en", "is_rotation_valid": True, "rotation_correction": 0,
                        "is_table": False, "is_diagram": False, "natural_text": "some text"})
    records += [{"id": "bad", "url": None, "page_number": 1.0, "response": "{not json"},
                {"id": "saved/html", "url": None, "page_number": 1.0, "response": facts},
                {"id": "not/anywhere", "url": None, "page_number": 1.0, "response": facts},
                {"id": "odd/page", "url": None, "page_number": 2.5, "response": facts}]
    _tar(root / "pdf_tarballs" / "chunk_00000.tar.gz", {"simple_document/edgar.pdf": pdfs["simple_document/edgar.pdf"],
                                                         "empty_document/blanktext.pdf": pdfs["empty_document/blanktext.pdf"],
                                                         "saved/html.pdf": b"<html><body>Rate limited</body></html>"})
    _tar(root / "pdf_tarballs" / "chunk_00001.tar.gz", {"synth_table/untable.pdf": pdfs["synth_table/untable.pdf"],
                                                         "odd/page.pdf": olmocr.make_pdf("odd")})
    # A tarball named for another config and split is not searched, though it holds an edgar.pdf.
    _tar(root / "pdf_tarballs" / "01_books_eval_00000.tar.gz", {"simple_document/edgar.pdf": olmocr.make_pdf("decoy")})
    pq.write_table(pa.Table.from_pylist(records), root / "train-s2pdf.parquet")
    assert "pdf_relpath" not in pq.read_schema(root / "train-s2pdf.parquet").names
    with Catalog(catalog_dir) as cat:
        [summary] = ingest(cat, "olmocr", mirror=tmp_path / "m", splits=["train"])
        rows = {json.loads(m)["id"]: (t, json.loads(m)) for t, m in cat.con.execute(
            "SELECT text, meta FROM samples").fetchall()}
        errors = {k: (stage, message) for k, stage, message in cat.con.execute(
            "SELECT source_key, stage, message FROM ingest_errors").fetchall()}
    assert summary.skipped == 1  # empty_document/blanktext
    assert sorted(rows) == ["simple_document/edgar", "synth_table/untable"]
    text, meta = rows["simple_document/edgar"]
    assert text.startswith("<image>\nEdgar (or Eadgar;[1] c. 944 – 8 July 975) was King of the English")
    assert meta["is_table"] is True and meta["url"] == "https://en.wikipedia.org/wiki/Edgar,_King_of_England"
    assert meta["page_number"] == 1 and type(meta["page_number"]) is int
    assert "<th rowspan=\"2\">Continent and country or area" in rows["synth_table/untable"][0]
    assert errors["train-s2pdf.parquet#3"][0] == "parse" and "not JSON" in errors["train-s2pdf.parquet#3"][1]
    assert errors["train-s2pdf.parquet#4"] == ("image", "not a PDF: it starts with b'<html><body>Rate limited', "
                                                        "expected %PDF- (an HTML error page saved as .pdf?)")
    assert errors["train-s2pdf.parquet#5"] == ("read", "not/anywhere.pdf (the row's id + .pdf; it has no pdf_relpath) "
                                                       "is in none of the tarballs for 00_documents train in the "
                                                       "mirror's pdf_tarballs/")
    assert errors["train-s2pdf.parquet#6"] == ("map", "page_number 2.5 is not a whole number")
    assert len(errors) == 4


def test_pdf_relpath_wins_over_the_id_where_a_row_has_one(tmp_path):
    root = tmp_path / "olmocr"
    _tar(root / "pdf_tarballs" / "x.tar.gz", {"a.pdf": olmocr.make_pdf("by id"), "other/b.pdf": olmocr.make_pdf("by path")})
    facts = {"is_rotation_valid": True, "rotation_correction": 0, "natural_text": "t"}
    pq.write_table(pa.Table.from_pylist([
        {"id": "a", "page_number": 1, "pdf_relpath": None, **facts},
        {"id": "a", "page_number": 1, "pdf_relpath": "pdf_tarballs/x.tar.gz:other/b.pdf", **facts},
        {"id": "a", "page_number": 1, "pdf_relpath": "no-colon.pdf", **facts},
        {"id": "a", "page_number": 1, "pdf_relpath": "pdf_tarballs/gone.tar.gz:a.pdf", **facts},
    ]), root / "00_documents_train.parquet")
    shards = olmocr.plan(root, "train", {"config": "all"})
    assert [(s.payload["tarball"] and Path(s.payload["tarball"]).name, s.payload["rows"]) for s in shards] == \
        [(None, [2, 3]), ("x.tar.gz", [0, 1])]
    records = [r for shard in shards for r in olmocr.read(shard, {"dpi": 72, "max_side": 2048})]
    assert [type(r).__name__ for r in records] == ["Rejected", "Rejected", "Sample", "Sample"]
    assert records[0].message == "pdf_relpath 'no-colon.pdf' is not tarball:member; cannot find the PDF"
    assert records[1].message == ("tarball of pdf_relpath 'pdf_tarballs/gone.tar.gz:a.pdf' is not in the mirror's "
                                  "pdf_tarballs/")
    # Row 0 (no pdf_relpath) rendered a.pdf, row 1 the member its pdf_relpath names.
    pages = {r.source_key: r.image for r in records[2:]}
    assert pages["00_documents_train.parquet#0"] == olmocr.render_page(olmocr.make_pdf("by id"), 72, 2048)[0]
    assert pages["00_documents_train.parquet#1"] == olmocr.render_page(olmocr.make_pdf("by path"), 72, 2048)[0]


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
    assert only_books and all(s.payload["file"] == "train-iabooks.parquet" for s in only_books)
    only_documents = olmocr.plan(root, "train", {"config": "00_documents"})
    assert only_documents and all(s.payload["file"] == "00_documents_train.parquet" for s in only_documents)
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


def test_a_damaged_tarball_listed_for_ids_fails_planning_with_its_name(tmp_path):
    root = tmp_path / "olmocr"
    olmocr.write_mirror_0225(root, "01_books", "train", [{"id": f"b/{i}", "pdf": olmocr.make_pdf(f"p{i}"),
                                                          "natural_text": "t"} for i in range(30)])
    tarball = root / "pdf_tarballs" / "iabooks_train_00000.tar.gz"
    tarball.write_bytes(tarball.read_bytes()[: tarball.stat().st_size // 2])
    with pytest.raises(olmocr.MirrorError, match="cannot list .*iabooks_train_00000.tar.gz to find PDFs by id"):
        olmocr.plan(root, "train", {"config": "01_books"})
