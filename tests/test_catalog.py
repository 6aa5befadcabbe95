"""The catalog: image store, stable ids, locking, read-only SQL."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib

import duckdb
import pytest
from PIL import Image

from ocrcat.catalog import BadImage, Catalog, CatalogError, ImageStore, extensions, sample_id
from ocrcat.catalog.images import ImageKeys, image_key, inspect_image


def png_bytes(size=(64, 32), color=(10, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def with_ihdr_byte(png: bytes, offset: int, value: int) -> bytes:
    """`png` with one byte of its IHDR chunk set, and that chunk's CRC fixed to match."""
    data = bytearray(png)
    data[offset] = value
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def absurd_png_header() -> bytes:
    """A valid PNG whose IHDR claims 30 000 x 30 000 pixels (CRC fixed so only the size is wrong)."""
    data = bytearray(png_bytes((10, 10)))
    data[16:24] = struct.pack(">II", 30000, 30000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_sample_id_is_a_pinned_64_bit_hash():
    # Pinned literal: the id must never change across machines or versions.
    assert sample_id("chartqa", "train", "data/train-00000-of-00001.parquet#0") == 0xECC635BC2B0CB62A
    sid = sample_id("chartqa", "train", "data/train-00000-of-00001.parquet#0")
    expected = int.from_bytes(
        hashlib.blake2b(b"chartqa\x1ftrain\x1fdata/train-00000-of-00001.parquet#0", digest_size=8).digest(), "big"
    )
    assert sid == expected
    assert 0 <= sid < 2**64
    assert sample_id("chartqa", "val", "x") != sample_id("chartqa", "train", "x")


def test_store_writes_once_at_content_address(tmp_path):
    store = ImageStore(tmp_path)
    data = png_bytes()
    first = store.put("chartqa", data)
    second = store.put("chartqa", data)
    sha = hashlib.sha256(data).hexdigest()
    assert first == second
    assert first.path == f"images/chartqa/{sha[:2]}/{sha}.png"
    assert (tmp_path / first.path).read_bytes() == data  # stored as it came, not re-encoded
    assert (first.format, first.width, first.height, first.bytes) == ("PNG", 64, 32, len(data))
    assert [p.name for p in (tmp_path / "images").rglob("*") if p.is_file()] == [f"{sha}.png"]


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"definitely not an image", "cannot decode"),
        (png_bytes()[:-30], "cannot decode"),
        (absurd_png_header(), "image cap"),
    ],
)
def test_bad_images_are_refused(data, message):
    with pytest.raises(BadImage, match=message):
        inspect_image(data)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"])
@pytest.mark.parametrize("interlace", [False, True])
def test_png_sizes_read_from_the_header_agree_with_pil(mode, interlace):
    from ocrcat.catalog.images import _plain_png_size

    buf = io.BytesIO()
    Image.effect_noise((37, 23), 60).convert("L").convert(mode).save(buf, "PNG")
    data = buf.getvalue()
    if interlace:  # PIL writes no interlaced PNG: set IHDR's interlace byte
        data = with_ihdr_byte(data, 28, 1)
    with Image.open(io.BytesIO(data)) as opened:
        assert _plain_png_size(data) == opened.size == (37, 23)
    assert inspect_image(data) == ("PNG", 37, 23)


def test_unusual_pngs_are_left_to_pil():
    from ocrcat.catalog.images import _plain_png_size

    data = png_bytes((64, 32))
    assert _plain_png_size(data) == (64, 32)
    bad_depth = with_ihdr_byte(data, 24, 3)  # bit depth 3 exists for no colour type; CRC still right
    with pytest.raises(BadImage, match="cannot decode"):
        inspect_image(bad_depth)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated by 90 degrees: the recorded size is the transposed one
    buf = io.BytesIO()
    Image.new("RGB", (64, 32)).save(buf, "PNG", exif=exif.tobytes())
    assert _plain_png_size(bad_depth) is None and _plain_png_size(buf.getvalue()) is None
    assert inspect_image(buf.getvalue()) == ("PNG", 32, 64)


def test_truncated_jpeg_is_refused():
    buf = io.BytesIO()
    Image.effect_noise((300, 200), 60).convert("RGB").save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    assert inspect_image(data) == ("JPEG", 300, 200)
    with pytest.raises(BadImage, match="truncated"):
        inspect_image(data[: len(data) // 2])


def test_image_keys_are_the_first_64_bits_of_each_sha():
    a, b, c = (hashlib.sha256(x).hexdigest() for x in (b"a", b"b", b"c"))
    keys = ImageKeys([image_key(a), image_key(b), image_key(a)])
    assert len(keys) == 2
    assert keys.contains([a, c, b, "f" * 64]).tolist() == [True, False, True, False]
    assert keys.contains([a[:16] + "0" * 48]).tolist() == [True]  # the rest of the sha is not looked at
    assert ImageKeys([]).contains([a]).tolist() == [False]
    assert image_key("f" * 64) == 2**64 - 1  # above int64: unsigned all the way


def test_sweep_removes_unreferenced_files_and_temporaries(tmp_path):
    store = ImageStore(tmp_path)
    kept = store.put("chartqa", png_bytes(color=(1, 2, 3)))
    orphan = store.put("chartqa", png_bytes(color=(4, 5, 6)))
    leftover = tmp_path / kept.path
    tmp = leftover.with_name(leftover.name + ".123.tmp")
    tmp.write_bytes(b"half")
    assert store.sweep("chartqa", ImageKeys([image_key(kept.sha256)])) == 2
    assert (tmp_path / kept.path).exists()
    assert not (tmp_path / orphan.path).exists() and not tmp.exists()


def test_catalog_location_and_vision_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("OCRCAT_HOME", str(tmp_path / "home"))
    with Catalog() as cat:
        assert cat.dir == tmp_path / "home"
        assert cat.vision_mode == "gundam"
    with Catalog(tmp_path / "tiny", vision_mode="tiny") as cat:
        assert cat.vision_mode == "tiny"
        assert cat.count_image_tokens(2000, 2000) == 73
    with pytest.raises(CatalogError, match="uses vision mode 'tiny'"):
        Catalog(tmp_path / "tiny", vision_mode="gundam")
    with pytest.raises(ValueError, match="unknown vision mode"):
        Catalog(tmp_path / "other", vision_mode="huge")


def test_read_only_open_of_missing_catalog_says_what_to_do(tmp_path):
    with pytest.raises(CatalogError, match="no catalog at .*ingest something first"):
        Catalog(tmp_path / "nothing", read_only=True)
    assert not (tmp_path / "nothing").exists()


def test_samples_has_every_spec_column(tmp_path):
    with Catalog(tmp_path) as cat:
        columns = [r[0] for r in cat.con.execute("DESCRIBE samples").fetchall()]
    assert columns == [
        "sample_id", "source", "split", "source_key", "kind", "text", "response", "messages", "image_path",
        "image_sha256", "image_format", "image_width", "image_height", "image_bytes", "image_tokens", "meta",
        "ingest_run",
    ]
    # The lake: metadata in SQLite, data under lake/; no single-file DuckDB catalog.
    assert os.path.exists(tmp_path / "catalog.sqlite")
    assert not os.path.exists(tmp_path / "catalog.duckdb")


def test_a_catalog_whose_creation_was_cut_short_says_so_to_readers(tmp_path):
    # A first ingest killed while it laid the lake out leaves catalog.sqlite without the tables
    # (or empty); a reader got DuckDB's "Table with name catalog_info does not exist! Did you mean…".
    half = tmp_path / "half"
    half.mkdir()
    con = duckdb.connect()
    extensions.load(con)
    con.execute(f"ATTACH 'ducklake:sqlite:{half / 'catalog.sqlite'}' AS l (DATA_PATH '{half / 'lake'}/', "
                "METADATA_PARAMETERS MAP {'journal_mode': 'WAL'})")  # as the writer attaches
    con.close()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "catalog.sqlite").write_bytes(b"")
    for folder in (half, empty):
        with pytest.raises(CatalogError, match="is not laid out yet: it is being created, or its creation was interrupted"):
            Catalog(folder, read_only=True)
    with Catalog(half) as cat:  # a writer finishes the job
        assert cat.vision_mode == "gundam"
