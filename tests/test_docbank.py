"""DocBank: split image zip read across parts, reading-order transcripts, splits, bad pages."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from conftest import REALDATA
from ocrcat.catalog import Catalog
from ocrcat.ingest import docbank
from ocrcat.ingest.runner import ingest
from ocrcat.ingest.zipparts import MultiPartFile, zip_parts

PAGES = REALDATA / "docbank" / "pages"


def _ingest(mirror: Path, catalog_dir: Path) -> Catalog:
    cat = Catalog(catalog_dir)
    ingest(cat, "docbank", mirror=mirror, workers=1)
    return cat


def test_sample_mirror_is_a_split_zip_and_transcripts_match(tmp_path, catalog_dir):
    mirror = tmp_path / "mirror"
    docbank.write_sample_mirror(mirror / "docbank", 24, seed=3)
    parts = zip_parts(mirror / "docbank", docbank.IMG_ZIP)
    assert [p.name for p in parts] == [f"{docbank.IMG_ZIP}.00{i}" for i in (1, 2, 3)]
    # The parts are one zip only when read together: the first part alone is not a zip.
    assert not zipfile.is_zipfile(parts[0])
    with MultiPartFile(parts) as f, zipfile.ZipFile(f) as z:
        assert z.testzip() is None
        assert len(z.namelist()) == 24

    expected = {name: text for name, (_, _, text) in docbank.sample_pages(24, 3).items()}
    with _ingest(mirror, catalog_dir) as cat:
        rows = cat.con.execute(
            "SELECT source_key, split, text, response, meta->>'columns', image_format FROM samples").fetchall()
        assert cat.con.execute("SELECT count(*) FROM ingest_errors").fetchone()[0] == 0
    assert len(rows) == 24
    assert {r[1] for r in rows} == {"train", "val", "test"}
    two_column = 0
    for key, split, text, response, columns, fmt in rows:
        assert text == "<image>\n" + expected[key], key
        assert response is None and fmt == "JPEG"
        two_column += columns == "2"
    assert two_column >= 5


def test_two_column_page_reads_left_column_first(tmp_path):
    blocks = [("section", "1. Left"), ("paragraph", " ".join(["left"] * 480) + "."),
              ("section", "2. Right"), ("paragraph", " ".join(["right"] * 80) + ".")]
    tokens, expected = docbank.layout_page(blocks, True, 1)
    content = docbank.token_lines(tokens)
    # pdfplumber order interleaves the columns: right-column words come before left-column ones.
    xs = [int(line.split("\t")[1]) for line in content.splitlines() if not line.startswith("##")]
    first_right = next(i for i, x in enumerate(xs) if x >= 520)
    assert any(x < 480 for x in xs[first_right:])
    text, columns = docbank.transcript(docbank.parse_tokens(content))
    assert columns == 2 and text == expected
    assert text.index("## 2. Right") > text.rindex("left")


def _real_mirror(root: Path, split_lists: dict | None, drop_image: str | None = None) -> None:
    pages = {}
    for txt in sorted(PAGES.glob("*.txt")):
        name = txt.stem
        image = None if name == drop_image else (PAGES / f"{name}_ori.jpg").read_bytes()
        pages[name] = (txt.read_bytes().decode("utf-8"), image)
    docbank.write_mirror(root, pages, parts=4, split_lists=split_lists)


def test_real_pages_ingest_with_hand_checked_facts(tmp_path, catalog_dir):
    names = sorted(p.stem for p in PAGES.glob("*.txt"))
    dev = "187.tar_1511.05780.gz_Levy_irregular_sampling_5"
    lists = {"train": [n for n in names if n != dev][:-2], "val": [dev], "test": [n for n in names if n != dev][-2:]}
    _real_mirror(tmp_path / "m" / "docbank", lists)
    with _ingest(tmp_path / "m", catalog_dir) as cat:
        assert cat.con.execute("SELECT count(*) FROM ingest_errors").fetchone()[0] == 0
        rows = dict(cat.con.execute("SELECT source_key, text FROM samples").fetchall())
        split_of = dict(cat.con.execute("SELECT source_key, split FROM samples").fetchall())
        meta = dict(cat.con.execute("SELECT source_key, meta->>'columns' FROM samples").fetchall())
    assert len(rows) == 20
    assert split_of[dev] == "val"  # from 500K_dev.txt
    title = rows["126.tar_1706.03453.gz_soft_graviton_yukawa_scalar_v2_06.10.17_0"]
    assert "\n# Soft Graviton Emission at High and Low Energies in Yukawa and Scalar Theories\n" in title
    for two in ("107.tar_1804.07036.gz_Wu-Hu_6", "175.tar_1511.00117.gz_wcci_papier4_6", "209.tar_1807.08272.gz_main_1"):
        assert meta[two] == "2", two
    page = rows["209.tar_1807.08272.gz_main_1"]
    assert "## IV. REINFORCEMENT LEARNING METHODS AS CONTROLLERS" in page
    # Left column bottom (y=805) before the right column top (y=263), though the file lists it later.
    assert page.index("The Q matrix had 20 columns") < page.index("Fig. 4: Rewards for different α")
    assert page.index("Fig. 4: Rewards for different α") < page.index("## B. Deep Q Network (DQN)")
    assert "##LTLine##" not in page and "\r" not in page
    assert "[1] E. Komatsu et al. [WMAP Collaboration]" in rows["11.tar_1401.6921.gz_rad-lep-II-2_13"]


def test_hash_split_without_lists_and_bad_pages_are_errors(tmp_path, catalog_dir):
    missing = "135.tar_1410.4804.gz_mpk_2"
    root = tmp_path / "m" / "docbank"
    _real_mirror(root, None, drop_image=missing)
    # A page whose .txt has a line with nine fields: a parse error, not a crash.
    with zipfile.ZipFile(root / docbank.TXT_ZIP, "a") as z:
        z.writestr("zz_broken_1.txt", "word\t1\t2\t3\t4\t0\t0\t0\tparagraph\r\n")
    with _ingest(tmp_path / "m", catalog_dir) as cat:
        errors = cat.con.execute("SELECT source_key, stage, message FROM ingest_errors").fetchall()
        splits = dict(cat.con.execute("SELECT source_key, split FROM samples").fetchall())
    stages = {key: (stage, message) for key, stage, message in errors}
    assert stages[missing][0] == "image" and "no image" in stages[missing][1]
    assert stages["zz_broken_1"][0] == "parse" and "9 TAB-separated fields" in stages["zz_broken_1"][1]
    assert len(splits) == 19
    assert all(split == docbank.hash_split(key) for key, split in splits.items())


def test_missing_part_is_a_clear_error(tmp_path):
    root = tmp_path / "docbank"
    docbank.write_sample_mirror(root, 6, seed=0)
    (root / f"{docbank.IMG_ZIP}.002").unlink()
    with pytest.raises(docbank.MirrorError, match="missing .002"):
        docbank.plan(root, "train", {"pages_per_shard": 256})


def test_token_lines_split_on_crlf_only():
    content = "x\x0cy\t1\t2\t3\t4\t0\t0\t0\tF\tparagraph\r\n##LTFigure##\t5\t6\t7\t8\t0\t0\t0\tF\tfigure\r\n"
    tokens = docbank.parse_tokens(content)
    assert [(t.text, t.x0, t.y1, t.label) for t in tokens] == [("x\x0cy", 1, 4, "paragraph")]
