"""Reading tar.gz members front to back with the member-size cap (olmOCR PDFs, PubTables files).

A member larger than the cap is never read into memory: the stream skips it, and the caller
gets CapExceeded for it (an error row naming the cap), the rest of the archive goes on.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Iterator

from ocrcat.ingest import limits


def read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    """The bytes of a regular file member; CapExceeded (before reading) when it is over the cap."""
    limits.check_member_size(member.name, member.size)
    f = tar.extractfile(member)
    return f.read() if f else b""


def iter_files(path: Path) -> Iterator[tuple[tarfile.TarInfo, bytes | limits.CapExceeded]]:
    """(member, bytes) of each regular file, streamed (mode r|gz: no seeking, no index); an
    over-the-cap member comes with its CapExceeded instead of bytes. Tar errors propagate."""
    with tarfile.open(path, "r|gz") as tar:
        for member in tar:
            if member.isfile():
                try:
                    yield member, read_member(tar, member)
                except limits.CapExceeded as exc:
                    yield member, exc
