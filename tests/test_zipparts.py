"""The streaming central-directory reader checked against zipfile: ZIP64 end records and extra
fields, byte-split parts, a prepended stub, damaged archives; read_member's guards."""

from __future__ import annotations

import io
import zipfile
import zlib
from pathlib import Path

import pytest

from ocrcat.ingest.base import MirrorError
from ocrcat.ingest.zipparts import MemberLocation, MultiPartFile, iter_members, member_locations, read_member


def zipfile_view(f) -> list[tuple[str, MemberLocation]]:
    """What zipfile itself reads from the central directory, in iter_members' terms."""
    f.seek(0)
    with zipfile.ZipFile(f) as z:
        return [(i.filename, MemberLocation(i.header_offset, i.compress_size, i.file_size, i.compress_type, i.CRC))
                for i in z.infolist()]


def members_of(f) -> list[tuple[str, MemberLocation]]:
    f.seek(0)
    return list(iter_members(f))


def test_more_than_65535_members_use_the_zip64_end_record():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i in range(70_000):
            z.writestr(f"m{i:05d}.txt", b"x" if i % 3 else b"")
        z.writestr("folder/", b"")
        z.writestr("naïve/☕.txt", "unicode names".encode(), zipfile.ZIP_DEFLATED)
    data = buf.getvalue()
    # The classic end record saturates its count; the real one is only in the ZIP64 record.
    assert b"PK\x06\x06" in data[-200:] and b"PK\x06\x07" in data[-200:]
    assert data[-22:][10:12] == b"\xff\xff"
    found = members_of(buf)
    assert len(found) == 70_002
    assert found == zipfile_view(buf)
    with zipfile.ZipFile(buf) as z:
        for name, loc in found[-3:]:
            assert read_member(buf, loc, name) == z.read(name)


def test_zip64_extra_fields_for_sizes_and_offsets(monkeypatch):
    """zipfile writes ZIP64 extra fields past ZIP64_LIMIT; a low limit gives them for small members."""
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 300)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i in range(6):
            method = zipfile.ZIP_DEFLATED if i % 2 else zipfile.ZIP_STORED
            z.writestr(f"d/m{i}.bin", bytes(range(256)) * (i + 2) + b"tail", method)
    monkeypatch.undo()
    expected = zipfile_view(buf)
    # Each field saturated alone or together: sizes only (first member), sizes and offset (later ones).
    with zipfile.ZipFile(buf) as z:
        assert [i.extra[:4] for i in z.infolist()] == [b"\x01\x00\x10\x00"] + [b"\x01\x00\x18\x00"] * 5
        assert members_of(buf) == expected
        for name, loc in expected:
            assert read_member(buf, loc, name) == z.read(name)


def test_forced_zip64_local_headers_are_skipped_when_reading():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("a.txt", "w", force_zip64=True) as w:
            w.write(b"hello " * 100)
        z.writestr("b.txt", b"after")
    with zipfile.ZipFile(buf) as z:
        for name, loc in members_of(buf):
            assert read_member(buf, loc, name) == z.read(name)


def test_byte_split_parts_and_a_prepended_stub(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.comment = b"an archive comment"
        for i in range(300):
            z.writestr(f"pages/p{i}_ori.jpg", bytes([i % 256]) * (50 + i))
    data = b"#!stub before the archive\n" * 3 + buf.getvalue()
    whole = io.BytesIO(data)
    expected = zipfile_view(whole)
    assert expected[0][1].offset == 78  # zipfile shifts offsets by the stub, and so must we
    assert members_of(whole) == expected
    # Cut in three, one cut inside the central directory, one inside the end record.
    cuts = [0, len(data) // 3, len(data) - 3000, len(data) - 10, len(data)]
    parts = []
    for n, (a, b) in enumerate(zip(cuts, cuts[1:])):
        parts.append(tmp_path / f"x.zip.{n + 1:03d}")
        parts[-1].write_bytes(data[a:b])
    with MultiPartFile(parts) as f:
        assert members_of(f) == expected
        for name, loc in expected[::37]:
            assert read_member(f, loc, name) == whole.getvalue()[loc.offset:][30 + len(name):][:loc.size]
    assert member_locations(parts) == {name.rsplit("/", 1)[-1]: loc for name, loc in expected}


def test_damaged_directories_are_errors(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i in range(20):
            z.writestr(f"m{i}", b"data")
    data = buf.getvalue()
    start = data.index(b"PK\x01\x02")
    for damaged, message in [(b"not a zip at all" * 10, "no end of central directory"),
                             (data[:-5], "no end of central directory"),
                             (data[:start + 100] + data[start + 101:], "bytes missing"),
                             (data[:start] + data[start:].replace(b"PK\x01\x02", b"PK\x01\x03", 2), "signature"),
                             (data[start:], "bytes missing")]:
        with pytest.raises(ValueError, match=message):
            list(iter_members(io.BytesIO(damaged)))
    path = tmp_path / "bad.zip"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MirrorError, match="bad.zip is not a readable zip"):
        member_locations([path])


def test_read_member_guards():
    buf = io.BytesIO()
    zeros = bytes(1 << 20)
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("zeros", zeros)
        z.writestr("other", b"other member")
    (_, loc), (_, other) = members_of(buf)
    assert read_member(buf, loc, "zeros") == zeros
    with pytest.raises(ValueError, match="is 'zeros'; the archive changed"):
        read_member(buf, loc, "other")
    # A member claiming 10 bytes that inflates to a MiB: stopped after 11, not inflated whole.
    with pytest.raises(ValueError, match="does not inflate to its declared size"):
        read_member(buf, loc._replace(size=10, crc=zlib.crc32(bytes(10))))
    with pytest.raises(ValueError, match="CRC"):
        read_member(buf, other._replace(crc=other.crc ^ 1))
    with pytest.raises(ValueError, match="no zip local header"):
        read_member(buf, other._replace(offset=other.offset + 1))
    with pytest.raises(ValueError, match="cut short"):
        read_member(io.BytesIO(buf.getvalue()[: other.offset + 40]), other)


def test_packed_location_round_trips():
    loc = MemberLocation(6_400_000_000, 5 << 32, 7 << 32, 8, 0xFFFFFFFF)
    assert len(loc.packed()) == 30 and MemberLocation.unpack(loc.packed()) == loc


def test_member_locations_keep_base_names_and_drop_folders(tmp_path: Path):
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("dir/", b"")
        z.writestr("dir/x_ori.jpg", b"x")
        z.writestr("y.txt", b"yy")
    found = member_locations([path])
    assert sorted(found) == ["x_ori.jpg", "y.txt"] and found["y.txt"].size == 2


def test_a_name_flagged_utf8_that_is_not_keeps_its_bytes_escaped(tmp_path: Path):
    """zipfile refuses the whole archive over one such name; ocrcat reads it as \\xNN and the rest as is."""
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("page\u00e9_0.txt", b"text")  # non-ASCII: stored as UTF-8 with the flag set
        z.writestr("page_1.txt", b"more")
    data = path.read_bytes()
    assert data.count("\u00e9".encode()) == 2  # the local header and the central directory
    path.write_bytes(data.replace("\u00e9".encode(), b"\xff\xfe"))
    with pytest.raises(UnicodeDecodeError):
        zipfile.ZipFile(path)
    found = member_locations([path])
    assert sorted(found) == ["page\\xff\\xfe_0.txt", "page_1.txt"]
    with open(path, "rb") as f:
        assert read_member(f, found["page\\xff\\xfe_0.txt"], "page\\xff\\xfe_0.txt") == b"text"
