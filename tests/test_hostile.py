"""Hostile input meets a cap (archive member size, decoded pixels, JSON nesting), each an error row
naming the cap and how to raise it; and the small wrong outcomes of issue 10, point 7."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image

from ocrcat.catalog import BadImage, Catalog, ImageStore
from ocrcat.catalog.images import inspect_image
from ocrcat.ingest import chartqa, pubtables
from ocrcat.ingest.base import Rejected
from ocrcat.ingest.parquet import split_file_name, write_hub_parquet

from test_llava_cc3m import entry, write_mirror as write_llava_mirror

OCRCAT = [sys.executable, "-m", "ocrcat.cli"]
TRAIN = f"data/{split_file_name('train')}"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(OCRCAT + list(args), capture_output=True, text=True, timeout=600)


def table(catalog: Path, sql: str) -> list[tuple]:
    with Catalog(catalog, read_only=True) as cat:
        return cat.con.execute(sql).fetchall()


def bilevel_png(width: int, height: int) -> bytes:
    """A real PNG of width x height pixels that is small to make (1 bit per pixel, all black)."""
    buf = io.BytesIO()
    Image.new("1", (width, height)).save(buf, "PNG")
    return buf.getvalue()


def small_png(color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buf, "PNG")
    return buf.getvalue()


# --- Decoded pixels.


def test_pixel_cap_is_the_documented_144_mpx():
    assert inspect_image(bilevel_png(10_000, 10_000)) == ("PNG", 10_000, 10_000)  # 100 Mpx: PIL alone refused it
    big = bilevel_png(12_500, 12_000)  # 150 Mpx
    with pytest.raises(BadImage, match=r"12500x12000 pixels \(150.0 Mpx\), more than the 144 Mpx image cap.*--max-image-mpx"):
        inspect_image(big)
    assert inspect_image(big, max_pixels=200_000_000) == ("PNG", 12_500, 12_000)


def test_pixel_cap_in_ingest_names_the_cap_and_can_be_raised(tmp_path):
    rows = [{"image": small_png(), "query": "small?", "label": ["1"], "human_or_machine": 0},
            {"image": bilevel_png(12_500, 12_000), "query": "huge?", "label": ["2"], "human_or_machine": 0}]
    write_hub_parquet(tmp_path / "m/chartqa" / TRAIN, rows, chartqa.FEATURES)
    args = ["ingest", "chartqa", "--mirror", str(tmp_path / "m"), "--catalog", str(tmp_path / "c")]
    assert run(*args).returncode == 0
    [(key, stage, message)] = table(tmp_path / "c", "SELECT source_key, stage, message FROM ingest_errors")
    assert (key, stage) == (f"{TRAIN}#1", "image") and "144 Mpx image cap" in message and "--max-image-mpx" in message
    assert run(*args, "--max-image-mpx", "200").returncode == 0
    assert table(tmp_path / "c", "SELECT image_width, image_height FROM samples ORDER BY source_key") == [
        (40, 30), (12_500, 12_000)]
    assert table(tmp_path / "c", "SELECT count(*) FROM ingest_errors") == [(0,)]


# --- Archive members: every archive reader checks the member cap before reading a member.


@pytest.mark.parametrize("source", ["docbank", "olmocr", "pubtables", "llava_cc3m"])
def test_member_cap_in_every_archive_reader(source, sample_mirror_factory, tmp_path):
    mirror = sample_mirror_factory(source)
    r = run("ingest", source, "--mirror", str(mirror), "--catalog", str(tmp_path / "c"), "--max-member-mb", "0.0001")
    assert r.returncode == 0, r.stderr  # over-the-cap members are bad records, not a fault
    errors = table(tmp_path / "c", "SELECT message FROM ingest_errors")
    assert table(tmp_path / "c", "SELECT count(*) FROM samples") == [(0,)] and errors
    capped = [m for (m,) in errors if "above the 104 bytes member cap" in m and "--max-member-mb" in m]
    # Every record whose member was reached is refused by the cap; olmOCR's sample mirror also has
    # rows that fail before any member is read (no tarball, bad rotation), which keep their own reason.
    assert capped and (len(capped) == len(errors) or source == "olmocr")
    assert all("member cap" in m for (m,) in errors if "archive member" in m)


def test_zip_bomb_member_is_refused_before_it_is_inflated(tmp_path):
    """A 300 MiB member of zeros (deflated to ~300 KB) under a 64 MiB cap: an error row, not 300 MiB."""
    import zipfile

    root = tmp_path / "m/llava_cc3m"
    root.mkdir(parents=True)
    with zipfile.ZipFile(root / "images.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("ok.jpg", small_png())
        with archive.open("bomb.jpg", "w", force_zip64=True) as f:
            chunk = bytes(2**20)
            for _ in range(300):
                f.write(chunk)
    (root / "chat.json").write_text(json.dumps([entry("ok"), entry("bomb")]))
    r = run("ingest", "llava_cc3m", "--mirror", str(tmp_path / "m"), "--catalog", str(tmp_path / "c"),
            "--max-member-mb", "64")
    assert r.returncode == 0, r.stderr
    assert table(tmp_path / "c", "SELECT source_key FROM samples") == [("ok",)]
    [(message,)] = table(tmp_path / "c", "SELECT message FROM ingest_errors WHERE source_key = 'bomb'")
    assert "'bomb.jpg' is 300.0 MiB, above the 64.0 MiB member cap" in message


# --- JSON nesting and broken encodings.


def nested(depth: int) -> object:
    value: object = "x"
    for _ in range(depth - 1):
        value = [value]
    return value


def test_json_nesting_cap_in_chat_json(tmp_path):
    deep_entry = entry("deep") | {"extra": nested(100)}
    deeper = "[" * 50_000 + "]" * 50_000  # beyond what Python's parser can recurse into
    text = "[" + ",".join([json.dumps(entry("a")), json.dumps(deep_entry), json.dumps(entry("b")), deeper,
                           json.dumps(entry("lost"))]) + "]"
    root = write_llava_mirror(tmp_path / "m", [], {f"{k}.jpg": small_png() for k in ("a", "b", "deep", "lost")},
                              chat_text=text)
    r = run("ingest", "llava_cc3m", "--mirror", str(root), "--catalog", str(tmp_path / "c"))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert table(tmp_path / "c", "SELECT source_key FROM samples ORDER BY 1") == [("a",), ("b",)]
    errors = dict(table(tmp_path / "c", "SELECT source_key, message FROM ingest_errors"))
    assert "JSON nesting cap of 64" in errors["chat.json#1"] and "--max-json-depth" in errors["chat.json#1"]
    at = len(text[: text.index(deeper)].encode())
    assert f"chat.json@{at}" in errors and "nests deeper than Python can parse" in errors[f"chat.json@{at}"]


def test_json_nesting_cap_in_pubtables_words():
    record = pubtables._table("PMC1_table_1", b"<annotation/>", json.dumps(nested(80)).encode(), small_png(), True)
    assert isinstance(record, Rejected) and "JSON nesting cap of 64" in record.message


def test_invalid_utf8_keeps_the_entries_before_it_and_names_the_byte(tmp_path):
    good = ",".join(json.dumps(entry(k)) for k in ("a", "b", "c"))
    data = ("[" + good + ",").encode() + b'{"id": "bad\xff"}' + b"]"
    root = write_llava_mirror(tmp_path / "m", [], {f"{k}.jpg": small_png() for k in "abc"}, chat_text="")
    (root / "llava_cc3m/chat.json").write_bytes(data)
    r = run("ingest", "llava_cc3m", "--mirror", str(root), "--catalog", str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr
    assert table(tmp_path / "c", "SELECT source_key FROM samples ORDER BY 1") == [("a",), ("b",), ("c",)]
    [(key, message)] = table(tmp_path / "c", "SELECT source_key, message FROM ingest_errors")
    bad_at = data.index(b"\xff")
    assert f"at byte {bad_at}: not UTF-8 (invalid start byte: byte 0xff)" in message
    assert key == f"chat.json@{bad_at}"


def test_a_pubtables_member_name_that_is_not_utf8_is_one_error_row(tmp_path):
    """tar keeps names as bytes; one that is not UTF-8 (here 0xff) becomes an error row under its
    name written \\xff, and the other tables land (it used to stop the whole ingest)."""
    tables = {s: {n: v[:3] for n, v in items.items()} for s, items in pubtables.sample_tables(6, 1).items()}
    first = next(iter(tables["train"].values()))
    tables["train"]["PMC\udcff9_table_1"] = first  # tarfile writes this surrogate back as the byte 0xff
    pubtables.write_mirror(tmp_path / "m" / "pubtables", tables)
    r = run("ingest", "pubtables", "--mirror", str(tmp_path / "m"), "--catalog", str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr
    assert table(tmp_path / "c", "SELECT count(*) FROM samples")[0][0] == sum(map(len, tables.values())) - 1
    [(key, stage, message)] = table(tmp_path / "c", "SELECT source_key, stage, message FROM ingest_errors")
    assert key == "PMC\\xff9_table_1" and stage == "read"
    assert "PMC\\xff9_table_1.xml is not UTF-8 (PubTables tables are named PMC<id>_table_<n>.xml)" in message


def test_a_json_lone_surrogate_is_one_error_row_not_a_failed_shard(tmp_path):
    """JSON may escape half of a surrogate pair (\\ud800) and Python keeps it, but no UTF-8 column
    can: such a record is an error row (its key written \\udXXX when the key is the bad text); the
    others land. It used to fail the whole shard."""
    entries = [entry("a"), entry("b", caption="broken \ud800 caption"), entry("c\udcff", image="c.jpg"), entry("d")]
    text = json.dumps(entries)  # ensure_ascii: the lone surrogates are written as \\ud800 escapes
    root = write_llava_mirror(tmp_path / "m", [], {f"{k}.jpg": small_png() for k in "abcd"}, chat_text=text)
    r = run("ingest", "llava_cc3m", "--mirror", str(root), "--catalog", str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr
    assert table(tmp_path / "c", "SELECT source_key FROM samples ORDER BY 1") == [("a",), ("d",)]
    assert table(tmp_path / "c", "SELECT source_key, stage, message FROM ingest_errors ORDER BY 1") == [
        ("b", "map", "response is not valid Unicode text: a lone surrogate \\ud800 at character 7 (a JSON "
                     "escape such as \\ud800 without its pair); record skipped"),
        ("c\\udcff", "map", "source_key is not valid Unicode text: a lone surrogate \\udcff at character 1 (a "
                           "JSON escape such as \\ud800 without its pair); record skipped")]


def test_a_question_holding_the_literal_image_placeholder_is_an_error_row(tmp_path):
    """The tokenizer puts the image where `<image>` stands: a second one in a vision row's text (a
    question or transcript quoting it) would stop training at that row. It is an error row; the
    others land and the export's rows all tokenize."""
    rows = [{"image": small_png(), "query": "How tall is the bar?", "label": ["3"], "human_or_machine": 0},
            {"image": small_png(), "query": "What does the <image> tag mean?", "label": ["a picture"],
             "human_or_machine": 1}]
    write_hub_parquet(tmp_path / "m/chartqa" / TRAIN, rows, chartqa.FEATURES)
    r = run("ingest", "chartqa", "--mirror", str(tmp_path / "m"), "--catalog", str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr
    assert table(tmp_path / "c", "SELECT source_key, text FROM samples") == [
        (f"{TRAIN}#0", "<image>\nQuestion: How tall is the bar?")]
    assert table(tmp_path / "c", "SELECT source_key, stage, message FROM ingest_errors") == [
        (f"{TRAIN}#1", "map", "the text holds 2 <image> placeholders; a vision row has exactly one, where its image "
                              "goes (the transcript or question contains the literal text <image>, which the "
                              "training format reserves); record skipped")]


# --- Point 7: one-line messages, nothing created or replaced by a refused command.


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_limit_below_one_is_refused_and_changes_nothing(limit, sample_mirror_factory, tmp_path):
    mirror = sample_mirror_factory("mathwriting")
    fresh = run("ingest", "mathwriting", "--mirror", str(mirror), "--catalog", str(tmp_path / "new"), "--limit", limit)
    assert fresh.returncode == 2 and f"--limit must be 1 or more (got {limit})" in fresh.stderr
    assert len(fresh.stderr.strip().splitlines()) == 1 and not (tmp_path / "new").exists()
    assert run("ingest", "mathwriting", "--mirror", str(mirror), "--catalog", str(tmp_path / "c")).returncode == 0
    again = run("ingest", "mathwriting", "--mirror", str(mirror), "--catalog", str(tmp_path / "c"), "--limit", limit)
    assert again.returncode == 2 and table(tmp_path / "c", "SELECT count(*) FROM samples") == [(40,)]


def test_catalog_that_is_a_file_is_a_one_line_error(sample_mirror_factory, tmp_path):
    path = tmp_path / "catalog.txt"
    path.write_text("not a catalog")
    for args in (["ingest", "mathwriting", "--mirror", str(sample_mirror_factory("mathwriting"))], ["stats"]):
        r = run(*args, "--catalog", str(path))
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert f"the catalog path {path} is a file, not a folder" in " ".join(r.stderr.split())
    assert path.read_text() == "not a catalog"


def test_failed_ingest_creates_no_catalog(tmp_path, sample_mirror_factory):
    unknown = run("ingest", "chartqaa", "--mirror", str(tmp_path), "--catalog", str(tmp_path / "c1"))
    assert unknown.returncode == 2 and "unknown source 'chartqaa'" in unknown.stderr
    missing = run("ingest", "chartqa", "--mirror", str(tmp_path / "nowhere"), "--catalog", str(tmp_path / "c2"))
    assert missing.returncode == 2 and "no mirror of chartqa" in missing.stderr
    split = run("ingest", "chartqa", "--mirror", str(sample_mirror_factory("chartqa")), "--split", "dev",
                "--catalog", str(tmp_path / "c3"))
    assert split.returncode == 2 and "has no split 'dev'" in split.stderr
    assert not any((tmp_path / c).exists() for c in ("c1", "c2", "c3"))


def test_missing_olmocr_tarball_says_which(sample_mirror_factory, tmp_path):
    import shutil

    mirror = tmp_path / "m"
    shutil.copytree(sample_mirror_factory("olmocr"), mirror)
    tarball = sorted((mirror / "olmocr/pdf_tarballs").glob("*.tar.gz"))[0]
    tarball.unlink()
    r = run("ingest", "olmocr", "--mirror", str(mirror), "--catalog", str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr
    messages = [m for (m,) in table(tmp_path / "c", "SELECT message FROM ingest_errors")]
    assert any(f"{tarball.name}" in m and "is not in the mirror's pdf_tarballs/" in m for m in messages)
    assert not any("Is a directory" in m for m in messages)


def test_export_of_a_plan_with_missing_images_warns_or_refuses(sample_mirror_factory, tmp_path):
    catalog = tmp_path / "c"
    assert run("ingest", "chartqa", "--mirror", str(sample_mirror_factory("chartqa")), "--catalog", str(catalog)).returncode == 0
    assert run("mix", "create", "charts", "-C", "c=source = 'chartqa':1", "--catalog", str(catalog)).returncode == 0
    [(gone,)] = table(catalog, "SELECT image_path FROM samples ORDER BY image_path LIMIT 1")
    (catalog / gone).unlink()
    warned = run("export", "charts", "--out", str(tmp_path / "e1"), "--catalog", str(catalog))
    assert warned.returncode == 0 and "1 image files of this plan are missing" in " ".join(warned.stderr.split())
    manifest = json.loads((tmp_path / "e1/manifest.json").read_text())
    assert manifest["missing_images_count"] == 1 and manifest["missing_images"] == [gone]
    refused = run("export", "charts", "--out", str(tmp_path / "e2"), "--require-images", "--catalog", str(catalog))
    assert refused.returncode == 2 and gone in refused.stderr and not (tmp_path / "e2/charts.all.parquet").exists()


# --- Each distinct image is paid for once, by the cheapest check that still catches damage.


def test_png_chunk_crcs_catch_a_flipped_byte_and_a_cut():
    data = bytearray(small_png((10, 200, 30)))
    idat = data.index(b"IDAT")
    flipped = bytes(data[:idat + 8]) + bytes([data[idat + 8] ^ 0x01]) + bytes(data[idat + 9:])
    with pytest.raises(BadImage, match="chunk b'IDAT' at byte .* fails its CRC"):
        inspect_image(flipped)
    with pytest.raises(BadImage, match="truncated"):
        inspect_image(bytes(data[:-5]))


def test_png_exif_orientation_is_still_read():
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.new("RGB", (40, 20)).save(buf, "PNG", exif=exif)
    assert inspect_image(buf.getvalue()) == ("PNG", 20, 40)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@pytest.mark.parametrize("where", ["eXIf after IDAT", "ImageMagick text chunk"])
def test_png_exif_is_found_after_the_pixels_and_in_a_text_chunk(where):
    # Both spellings PIL reads: an eXIf chunk (which may follow IDAT) and ImageMagick's
    # "Raw profile type exif" text chunk (hex). Either turns the 40x20 image by 90 degrees.
    exif = Image.Exif()
    exif[0x0112] = 6
    raw = exif.tobytes()
    if where == "eXIf after IDAT":
        chunk = png_chunk(b"eXIf", raw)
    else:
        chunk = png_chunk(b"tEXt", b"Raw profile type exif\0\nexif\n" + str(len(raw)).encode() + b"\n" + raw.hex().encode())
    buf = io.BytesIO()
    Image.new("RGB", (40, 20)).save(buf, "PNG")
    data = buf.getvalue()
    data = data[:-12] + chunk + data[-12:]  # before IEND
    assert inspect_image(data) == ("PNG", 20, 40)
    assert inspect_image(buf.getvalue()) == ("PNG", 40, 20)  # the same pixels without it


def test_an_image_repeated_under_another_source_is_stored_there_too(tmp_path):
    store, data = ImageStore(tmp_path), small_png()
    first, again, other = store.put("chartqa", data), store.put("chartqa", data), store.put("plotqa", data)
    assert first == again and other.sha256 == first.sha256
    assert other.path.startswith("images/plotqa/") and (tmp_path / other.path).read_bytes() == data


def test_a_repeated_or_stored_image_is_neither_verified_nor_written_again(tmp_path, monkeypatch):
    from ocrcat.catalog import images

    calls = {"verify": 0, "write": 0}
    real_verify, real_write = images.verify_image, images.ImageStore._write

    def verify(*a, **k):
        calls["verify"] += 1
        return real_verify(*a, **k)

    def write(self, *a):
        calls["write"] += 1
        return real_write(self, *a)

    monkeypatch.setattr(images, "verify_image", verify)
    monkeypatch.setattr(images.ImageStore, "_write", write)
    data = small_png()
    first = ImageStore(tmp_path).put("chartqa", data)
    store = ImageStore(tmp_path)  # another run: the file is on disk already
    assert store.put("chartqa", data) == store.put("chartqa", data) == first
    assert calls == {"verify": 1, "write": 1}
