"""DocBank: split image zip read across parts, reading-order transcripts, splits, bad pages, and
targets without artefacts: (cid:N) placeholders, running heads, paragraphs told by indentation."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest

from conftest import REALDATA
from ocrcat.catalog import Catalog
from ocrcat.ingest import docbank
from ocrcat.ingest.docbank_layout import Token
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

    pages = docbank.sample_pages(24, 3)
    expected = {name: text for name, (_, _, text) in pages.items()}
    with _ingest(mirror, catalog_dir) as cat:
        rows = cat.con.execute(
            "SELECT source_key, split, text, response, meta->>'columns', image_format, meta FROM samples").fetchall()
        assert cat.con.execute("SELECT count(*) FROM ingest_errors").fetchone()[0] == 0
    assert len(rows) == 24
    assert {r[1] for r in rows} == {"train", "val", "test"}
    two_column = cids = heads = indented = 0
    for key, split, text, response, columns, fmt, meta in rows:
        assert text == "<image>\n" + expected[key], key
        assert response is None and fmt == "JPEG"
        two_column += columns == "2"
        # The real forms the mirror writes: (cid:N) tokens (counted, not in the target), running
        # heads on every page but a paper's first (plain lines), paragraphs set without space.
        meta = json.loads(meta)
        assert meta["cid"] == len(re.findall(r"\(cid:\d+\)", pages[key][0])) and "(cid:" not in text
        assert meta["running_heads"] == (0 if key.endswith("_0") else 1)
        cids += meta["cid"]
        heads += meta["running_heads"]
        indented += sum(1 for t in docbank.parse_tokens(pages[key][0])
                        if t.label == "paragraph" and t.x0 in (70 + docbank.PARINDENT, 100 + docbank.PARINDENT,
                                                               520 + docbank.PARINDENT))
    assert two_column >= 5 and cids >= 5 and heads == 18 and indented >= 20


def test_two_column_page_reads_left_column_first(tmp_path):
    blocks = [("section", "1. Left"), ("paragraph", " ".join(["left"] * 480) + "."),
              ("section", "2. Right"), ("paragraph", " ".join(["right"] * 80) + ".")]
    tokens, expected = docbank.layout_page(blocks, True, 1)
    content = docbank.token_lines(tokens)
    # pdfplumber order interleaves the columns: right-column words come before left-column ones.
    xs = [int(line.split("\t")[1]) for line in content.splitlines() if not line.startswith("##")]
    first_right = next(i for i, x in enumerate(xs) if x >= 520)
    assert any(x < 480 for x in xs[first_right:])
    text, columns, heads = docbank.transcript(docbank.parse_tokens(content))
    assert columns == 2 and text == expected and heads == 0
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


def _count_cid(content: str) -> int:
    return len(re.findall(r"\(cid:\d+\)", content))


RUNNING_HEAD_PAGE = "143.tar_1805.08652.gz_General_Boundary_Transport_Draft_18"


def _with_running_head_as_title(content: str) -> str:
    """The page's real running head ("BOUNDARY LAYER OF TRANSPORT EQUATION 19", y0 = 66) labelled
    `title`, as DocBank labels running heads on many pages; the 20 sample pages happen to label
    theirs `paragraph`."""
    out = []
    for line in content.split("\r\n"):
        fields = line.split("\t")
        if len(fields) == 10 and fields[2] == "66" and fields[9] == "paragraph":
            fields[9] = "title"
        out.append("\t".join(fields))
    return "\r\n".join(out)


def _real_pages(edit: dict | None = None) -> dict[str, tuple[str, bytes]]:
    pages = {}
    for txt in sorted(PAGES.glob("*.txt")):
        content = txt.read_bytes().decode("utf-8")
        pages[txt.stem] = ((edit or {}).get(txt.stem, lambda c: c)(content), (PAGES / f"{txt.stem}_ori.jpg").read_bytes())
    return pages


@pytest.mark.parametrize("keep_cid", [False, True])
def test_real_pages_cid_running_head_and_indented_paragraphs(tmp_path, catalog_dir, keep_cid):
    pages = _real_pages({RUNNING_HEAD_PAGE: _with_running_head_as_title})
    assert "BOUNDARY\t346\t66\t" in pages[RUNNING_HEAD_PAGE][0] and "\ttitle\r\n" in pages[RUNNING_HEAD_PAGE][0]
    docbank.write_mirror(tmp_path / "m" / "docbank", pages, parts=3)
    cat = Catalog(catalog_dir)
    with cat:
        ingest(cat, "docbank", mirror=tmp_path / "m", workers=1, options={"keep_cid": keep_cid})
        assert cat.con.execute("SELECT count(*) FROM ingest_errors").fetchone()[0] == 0
        rows = {k: (t, json.loads(m)) for k, t, m in cat.con.execute("SELECT source_key, text, meta FROM samples").fetchall()}
    assert len(rows) == 20
    # (cid:N): counted per page whatever the option; in the target only when asked to keep them.
    with_cid = {name for name, (content, _) in pages.items() if _count_cid(content)}
    assert len(with_cid) >= 10 and sum(_count_cid(pages[n][0]) for n in with_cid) >= 300
    for name, (text, meta) in rows.items():
        assert meta["cid"] == _count_cid(pages[name][0]), name
        assert ("(cid:" in text) == (keep_cid and name in with_cid), name
    if not keep_cid:
        assert "S int = ddx − g f abc ∂ µ Aa ν Abµ Acν" in rows["62.tar_1803.02335.gz_Tesi_16"][0]
    else:
        assert "S int = (cid:90) ddx (cid:110) − g f abc" in rows["62.tar_1803.02335.gz_Tesi_16"][0]

    # The running head of a body page: a plain first line, page number and all, not a `# ` heading.
    text, meta = rows[RUNNING_HEAD_PAGE]
    assert text.startswith("<image>\nBOUNDARY LAYER OF TRANSPORT EQUATION 19\n\n") and "# BOUNDARY" not in text
    assert meta["running_heads"] == 1
    # On a paper's first page the title stays the heading.
    first = rows["126.tar_1706.03453.gz_soft_graviton_yukawa_scalar_v2_06.10.17_0"]
    assert "\n# Soft Graviton Emission at High and Low Energies in Yukawa and Scalar Theories\n" in first[0]
    assert first[1]["running_heads"] == 0
    assert sum(m["running_heads"] for _, m in rows.values()) == 1

    # Paragraphs set without space between them, told apart only by the first line's indent.
    for name, boundary in [("135.tar_1410.4804.gz_mpk_2", "gets reduced.\n\nIn the particular case of localized"),
                           ("209.tar_1807.08272.gz_main_1", "shows the full algorithm.\n\nThe simulation was run"),
                           ("80.tar_1605.00521.gz_323_3", "only a euristic.\n\nThe direct transformation from")]:
        assert boundary in rows[name][0], name
    # A double-spaced page: a paragraph is one block (not a block per line), the next starts at its indent.
    manuscript = rows["20.tar_1801.07927.gz_Manuscript_V5_0"][0]
    assert ("\n\nWe present a comprehensible introduction to tight informationally complete mea-surements for "
            "arbitrarily large multipartite systems") in manuscript
    assert "quantum ﬁngerprinting [3].\n\nAmong existing schemes of generalised quantum measurements" in manuscript
    assert "\n\nInformation stored in physical systems can be retrieved by choosing a suitable set of " \
           "measurements. In quantum mechanics" in manuscript
    # Double-spaced references with hanging indents: one block per entry; the page number on top alone.
    references = rows["11.tar_1401.6921.gz_rad-lep-II-2_13"][0]
    assert references.startswith("<image>\n14\n\nand we can also induce")
    assert ("\n\n[1] E. Komatsu et al. [WMAP Collaboration], Astrophys. J. Suppl. 192, 18 (2011) "
            "[arXiv:1001.4538 [astro-ph.CO]].\n\n[2] P. A. R. Ade et al.") in references
    assert "[arXiv:1111.0932 [astro-ph.CO]].\n\n[12] E. Ma, Phys. Rev. D 73" in references
    assert references.count("\n\n[") == 15


def test_running_head_needs_the_top_band_and_a_body_page():
    def tokens(y: int) -> list:
        return [Token(w, 300 + 60 * i, y, 350 + 60 * i, y + 12, "title")
                for i, w in enumerate(["Galaxy", "Groups", "15"])] + [
            Token(f"w{i}", 100 + 40 * (i % 20), 200 + 20 * (i // 20), 130 + 40 * (i % 20),
                                         212 + 20 * (i // 20), "paragraph") for i in range(40)]
    assert docbank.transcript(tokens(40), first_page=False).text.startswith("Galaxy Groups 15\n\n")
    assert docbank.transcript(tokens(40), first_page=True).text.startswith("# Galaxy Groups 15\n\n")
    assert docbank.transcript(tokens(150), first_page=False).text.startswith("# Galaxy Groups 15\n\n")


def test_splits_from_dev_and_test_lists_alone(tmp_path, catalog_dir):
    """DocBank's train list is "everything else": with only 500K_dev.txt and 500K_test.txt given,
    a listed page goes to its list's split and every other page to train, never to a hash split."""
    names = sorted(p.stem for p in PAGES.glob("*.txt"))
    dev = ["187.tar_1511.05780.gz_Levy_irregular_sampling_5", names[0]]
    test = names[-3:]
    docbank.write_mirror(tmp_path / "m" / "docbank", _real_pages(), parts=2, split_lists={"val": dev, "test": test})
    assert not (tmp_path / "m" / "docbank" / "indexed_files" / "500K_train.txt").exists()
    with _ingest(tmp_path / "m", catalog_dir) as cat:
        rows = {k: (s, json.loads(m)["split_from"]) for k, s, m in cat.con.execute(
            "SELECT source_key, split, meta FROM samples").fetchall()}
    assert len(rows) == 20
    assert {k for k, (s, _) in rows.items() if s == "val"} == set(dev)
    assert {k for k, (s, _) in rows.items() if s == "test"} == set(test)
    rest = {k for k in rows if k not in dev + test}
    assert len(rest) == 15 and all(rows[k] == ("train", "rest") for k in rest)
    assert all(rows[k][1] == "list" for k in dev + test)
    # These 15 pages would not all be train under the hash split: the lists decided.
    assert any(docbank.hash_split(k) != "train" for k in rest)
