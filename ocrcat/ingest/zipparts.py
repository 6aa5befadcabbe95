"""Zip archives cut into byte ranges (`x.zip.001`, `x.zip.002`, …) read as one, without joining.

DocBank ships its 47 GB image zip as ten 5 GiB parts. `MultiPartFile` is a seekable, read-only
file object spanning the parts, so `zipfile` can read the central directory at the end of the
last part and members anywhere. Planning lists member locations once (`member_locations`);
workers then read a member straight from its local header (`read_member`), so they never parse
a central directory of 500 000 entries again.
"""

from __future__ import annotations

import bisect
import io
import os
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from ocrcat.ingest.base import MirrorError

_LOCAL_HEADER = struct.Struct("<4s5H3L2H")


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


@dataclass(frozen=True)
class MemberLocation:
    offset: int  # of the local header, in the joined archive
    compressed: int
    size: int
    method: int
    crc: int


_TRAILING_PART = re.compile(r"\.\d{3}$")


def member_locations(parts: list[Path]) -> dict[str, MemberLocation]:
    """Every file member of the (possibly cut) zip by its base name (folders inside are dropped)."""
    label = _TRAILING_PART.sub("", parts[0].name)
    with open_parts(parts) as f:
        try:
            with zipfile.ZipFile(f) as z:
                return {
                    info.filename.rsplit("/", 1)[-1]: MemberLocation(
                        info.header_offset, info.compress_size, info.file_size, info.compress_type, info.CRC
                    )
                    for info in z.infolist()
                    if not info.is_dir()
                }
        except zipfile.BadZipFile as exc:
            raise MirrorError(f"{label} is not a readable zip ({exc}); are all its parts complete?") from None


def read_member(f: io.RawIOBase, loc: MemberLocation) -> bytes:
    """The uncompressed bytes of one member, read from its local header; ValueError if damaged."""
    f.seek(loc.offset)
    header = f.read(_LOCAL_HEADER.size)
    if len(header) < _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
        raise ValueError("no zip local header at the member's offset (damaged archive)")
    fields = _LOCAL_HEADER.unpack(header)
    name_len, extra_len = fields[-2], fields[-1]
    f.seek(loc.offset + _LOCAL_HEADER.size + name_len + extra_len)
    raw = f.read(loc.compressed)
    if len(raw) < loc.compressed:
        raise ValueError("member data is cut short (truncated archive)")
    if loc.method == zipfile.ZIP_STORED:
        data = raw
    elif loc.method == zipfile.ZIP_DEFLATED:
        try:
            data = zlib.decompress(raw, -15)
        except zlib.error as exc:
            raise ValueError(f"member data does not inflate: {exc}") from None
    else:
        raise ValueError(f"unsupported zip compression method {loc.method}")
    if len(data) != loc.size or zlib.crc32(data) != loc.crc:
        raise ValueError("member fails its CRC check (corrupt archive)")
    return data
