"""Zip archives cut into byte ranges (`x.zip.001`, `x.zip.002`, …) read as one, without joining.

DocBank ships its 47 GB image zip as ten 5 GiB parts. `MultiPartFile` is a seekable, read-only
file object spanning the parts. Planning lists member locations once (`member_locations`);
workers then read a member straight from its local header (`read_member`), so they never parse
a central directory of 500 000 entries again.

The central directory is read entry by entry (`iter_members`), not through `zipfile.ZipFile`,
which keeps a ~550-byte ZipInfo per member: 330 MB for LLaVA's 595 000 images.
"""

from __future__ import annotations

import bisect
import io
import os
import re
import struct
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO, Iterator, NamedTuple

from ocrcat.ingest import limits
from ocrcat.ingest.base import MirrorError

_LOCAL_HEADER = struct.Struct("<4s5H3L2H")
# signature, made by, needed, flags, method, time, date, crc, compressed, size, name/extra/comment
# lengths, disk, internal attributes, external attributes, local header offset
_CENTRAL = struct.Struct("<4s6H3L5H2L")
_END = struct.Struct("<4s4H2LH")  # signature, disks, entries here, entries, size, offset, comment length
_END64_LOCATOR = struct.Struct("<4sLQL")  # signature, disk, offset of the ZIP64 end record, disks
_END64 = struct.Struct("<4sQ2H2L4Q")  # signature, size, versions, disks, entries here, entries, size, offset
_UTF8_FLAG = 0x800
_CHUNK = 1 << 20


class MultiPartFile(io.RawIOBase):
    """The concatenation of `paths`, read-only and seekable; a part is opened when first read."""

    def __init__(self, paths: list[Path]):
        super().__init__()
        self.paths = [Path(p) for p in paths]
        sizes = [p.stat().st_size for p in self.paths]
        self.starts = [sum(sizes[:i]) for i in range(len(sizes))]
        self.size = sum(sizes)
        self.pos = 0
        self._files: dict[int, io.BufferedReader] = {}

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self.pos = base + offset
        return self.pos

    def readinto(self, buffer) -> int:
        # Fill the whole buffer, crossing part boundaries: zipfile expects a header that
        # straddles two parts to come back in one read.
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view) and self.pos < self.size:
            part = bisect.bisect_right(self.starts, self.pos) - 1
            f = self._files.get(part)
            if f is None:
                f = self._files[part] = open(self.paths[part], "rb")
            f.seek(self.pos - self.starts[part])
            n = f.readinto(view[filled:])
            if not n:
                raise OSError(f"{self.paths[part]} is shorter than when it was opened")
            filled += n
            self.pos += n
        return filled

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
        super().close()


def zip_parts(root: Path, name: str) -> list[Path]:
    """The parts `name.001`, `name.002`, … in order (or `[name]` for an uncut zip)."""
    whole = root / name
    parts = sorted(root.glob(f"{name}.[0-9][0-9][0-9]"), key=lambda p: int(p.suffix[1:]))
    if not parts:
        return [whole] if whole.is_file() else []
    numbers = [int(p.suffix[1:]) for p in parts]
    if numbers != list(range(1, len(parts) + 1)):
        missing = sorted(set(range(1, max(numbers) + 1)) - set(numbers))
        raise MirrorError(f"{name} parts are incomplete in {root}: missing .{missing[0]:03d}; fetch all parts")
    return parts


def open_parts(parts: list[Path]) -> io.RawIOBase:
    return MultiPartFile(parts) if len(parts) > 1 else open(parts[0], "rb")


class MemberLocation(NamedTuple):
    offset: int  # of the local header, in the joined archive
    compressed: int
    size: int
    method: int
    crc: int

    def packed(self) -> bytes:
        """30 bytes: a third of the tuple's memory, for keeping hundreds of thousands of them."""
        return _PACKED.pack(*self)

    @classmethod
    def unpack(cls, data: bytes) -> MemberLocation:
        return cls._make(_PACKED.unpack(data))


_PACKED = struct.Struct("<3QHL")


def _name(raw: bytes, flags: int) -> str:
    # As zipfile decodes names: UTF-8 when the flag says so, else the DOS code page. A name flagged
    # UTF-8 that is not (zipfile refuses the whole archive) keeps its bad bytes written \xNN: one
    # odd name must not make every other member of a 500 000-page archive unreadable.
    return raw.decode("utf-8", "backslashreplace") if flags & _UTF8_FLAG else raw.decode("cp437")


def _central_directory(f: BinaryIO) -> tuple[int, int, int]:
    """(start, shift, entries) of the central directory, from the end records; ValueError if none.

    `shift` is what to add to recorded offsets: bytes before the archive proper (a self-extracting
    stub) move everything, and zipfile allows that too.
    """
    size = f.seek(0, os.SEEK_END)
    tail_start = max(0, size - _END.size - 0xFFFF - _END64_LOCATOR.size)  # a comment is at most 64 KiB
    f.seek(tail_start)
    tail = f.read(size - tail_start)
    at = tail.rfind(b"PK\x05\x06", 0, len(tail) - _END.size + 4)
    if at < 0:
        raise ValueError("no end of central directory record (not a zip, or cut short)")
    _, disk, cd_disk, _, entries, cd_size, cd_offset, _ = _END.unpack_from(tail, at)
    end = tail_start + at  # where the directory (and a ZIP64 end record) must stop
    locator = at - _END64_LOCATOR.size
    if locator >= 0 and tail[locator:locator + 4] == b"PK\x06\x07":
        # ZIP64: past 65 535 members or 4 GiB the real counts are in the ZIP64 end record.
        # Like zipfile, expect the ZIP64 end record right before its locator.
        record_at = tail_start + locator - _END64.size
        f.seek(max(0, record_at))
        record = f.read(_END64.size)
        if record_at < 0 or len(record) < _END64.size or record[:4] != b"PK\x06\x06":
            raise ValueError("ZIP64 end of central directory record is missing")
        _, _, _, _, disk, cd_disk, _, entries, cd_size, cd_offset = _END64.unpack(record)
        end = record_at
    if disk or cd_disk:
        raise ValueError("archives spanning several disks are not supported")
    start = end - cd_size
    if start < cd_offset:
        raise ValueError("the archive is shorter than its end record says (bytes missing before its end)")
    return start, start - cd_offset, entries


def iter_members(f: BinaryIO) -> Iterator[tuple[str, MemberLocation]]:
    """(name, location) of every member (folders too), read from the central directory entry by entry.

    Memory stays one read buffer whatever the member count; the results agree with
    `zipfile.ZipFile(f).infolist()` (ZIP64 included). ValueError if the directory is damaged.
    """
    start, shift, entries = _central_directory(f)
    f.seek(start)
    buf, pos = b"", 0

    def take(n: int) -> bytes:
        nonlocal buf, pos
        if pos + n > len(buf):
            buf, pos = buf[pos:] + f.read(max(n, _CHUNK)), 0
            if n > len(buf):
                raise ValueError("central directory is cut short")
        pos += n
        return buf[pos - n:pos]

    for _ in range(entries):
        (signature, _, _, flags, method, _, _, crc, compressed, size,
         name_len, extra_len, comment_len, _, _, _, offset) = _CENTRAL.unpack(take(_CENTRAL.size))
        if signature != b"PK\x01\x02":
            raise ValueError("bad central directory entry signature (damaged archive)")
        name = _name(take(name_len), flags)
        extra = take(extra_len)
        take(comment_len)
        if 0xFFFFFFFF in (size, compressed, offset):
            size, compressed, offset = _zip64_fields(extra, (size, compressed, offset))
        yield name, MemberLocation(offset + shift, compressed, size, method, crc)


def _zip64_fields(extra: bytes, values: tuple[int, int, int]) -> tuple[int, ...]:
    """(size, compressed, offset) with each one saturated at 0xFFFFFFFF taken from the ZIP64 extra field."""
    at = 0
    while at + 4 <= len(extra):
        kind, length = struct.unpack_from("<2H", extra, at)
        length = min(length, len(extra) - at - 4)
        if kind == 1:  # holds only the saturated fields, in this order
            wide = list(struct.unpack_from(f"<{length // 8}Q", extra, at + 4))[::-1]
            if len(wide) >= sum(v == 0xFFFFFFFF for v in values):
                return tuple(wide.pop() if v == 0xFFFFFFFF else v for v in values)
            break
        at += 4 + length
    raise ValueError("a member needs a ZIP64 extra field it lacks (damaged archive)")


_TRAILING_PART = re.compile(r"\.\d{3}$")


def member_locations(parts: list[Path]) -> dict[str, MemberLocation]:
    """Every file member of the (possibly cut) zip by its base name (folders inside are dropped)."""
    label = _TRAILING_PART.sub("", parts[0].name)
    with open_parts(parts) as f:
        try:
            return {name.rsplit("/", 1)[-1]: loc for name, loc in iter_members(f) if not name.endswith("/")}
        except ValueError as exc:
            raise MirrorError(f"{label} is not a readable zip ({exc}); are all its parts complete?") from None


def read_member(f: io.RawIOBase, loc: MemberLocation, name: str | None = None) -> bytes:
    """The uncompressed bytes of one member, read from its local header; ValueError if damaged.

    With `name`, the local header must carry that name: locations recorded at planning time
    then cannot silently point at another member of an archive replaced since.
    """
    limits.check_member_size(name or f"at byte {loc.offset}", max(loc.size, loc.compressed))
    f.seek(loc.offset)
    header = f.read(_LOCAL_HEADER.size)
    if len(header) < _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
        raise ValueError("no zip local header at the member's offset (damaged archive)")
    fields = _LOCAL_HEADER.unpack(header)
    flags, name_len, extra_len = fields[2], fields[-2], fields[-1]
    if name is not None and (found := _name(f.read(name_len), flags)) != name:
        raise ValueError(f"the member at its offset is {found!r}; the archive changed since planning, rerun")
    f.seek(loc.offset + _LOCAL_HEADER.size + name_len + extra_len)
    raw = f.read(loc.compressed)
    if len(raw) < loc.compressed:
        raise ValueError("member data is cut short (truncated archive)")
    if loc.method == zipfile.ZIP_STORED:
        data = raw
    elif loc.method == zipfile.ZIP_DEFLATED:
        inflate = zlib.decompressobj(-15)
        try:
            # At most one byte past the declared size: a deflate bomb stops there.
            data = inflate.decompress(raw, loc.size + 1)
        except zlib.error as exc:
            raise ValueError(f"member data does not inflate: {exc}") from None
        if not inflate.eof or len(data) > loc.size:
            raise ValueError("member data does not inflate to its declared size (corrupt archive)")
    else:
        raise ValueError(f"unsupported zip compression method {loc.method}")
    if len(data) != loc.size or zlib.crc32(data) != loc.crc:
        raise ValueError("member fails its CRC check (corrupt archive)")
    return data
