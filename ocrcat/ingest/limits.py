"""Caps that bound what hostile input can make a worker do (SPEC §6: no input may make a worker
use more than a few GiB). Each exceeded cap is one error row that names the cap and how to raise it.

The runner sets the run's caps in each worker (`use`); the shared readers (zip members, tar
members, JSON) check against `current()`.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Iterator

from ocrcat.catalog.images import MAX_PIXELS


@dataclass(frozen=True)
class Limits:
    # One archive member (a page image, a PDF, a words file) is at most this many bytes; 256 MiB is
    # far above any real member and keeps a worker's peak near 1 GiB even when it is reached.
    max_member_bytes: int = 256 * 2**20
    # Decoded pixels of one image, from its header, before any decode (144 Mpx = 12 000 x 12 000).
    max_image_pixels: int = MAX_PIXELS
    # Nesting depth of one JSON document or entry; real files nest 3 to 5 deep.
    max_json_depth: int = 64

    def as_dict(self) -> dict:
        return asdict(self)


class CapExceeded(ValueError):
    """Input beyond one of the caps: a bad record (an error row), not a fault."""


_current = Limits()


def use(limits: Limits) -> None:
    global _current
    _current = limits


def current() -> Limits:
    return _current


@contextmanager
def using(limits: Limits) -> Iterator[None]:
    """The caps for the duration of a block (in the process that plans); restored afterwards."""
    previous = _current
    use(limits)
    try:
        yield
    finally:
        use(previous)


def check_member_size(name: str, size: int) -> None:
    """CapExceeded when an archive member is larger than the member cap (checked before reading it)."""
    cap = _current.max_member_bytes
    if size > cap:
        raise CapExceeded(
            f"archive member {name!r} is {_size(size)}, above the {_size(cap)} member cap; "
            "if it is real, raise the cap (ocrcat ingest --max-member-mb N)"
        )


def _size(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n:,} bytes"


def loads_json(text: str | bytes) -> object:
    """json.loads with the nesting cap; CapExceeded (not RecursionError) when it nests deeper."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise _too_deep("more than Python can parse") from None
    check_json_depth(value)
    return value


def check_json_depth(value: object) -> None:
    """CapExceeded when a parsed JSON value nests deeper than the cap (iterative: no recursion)."""
    cap = _current.max_json_depth
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > cap:
            raise _too_deep(f"at least {depth} levels")
        stack.extend((child, depth + 1) for child in children)


def _too_deep(how: str) -> CapExceeded:
    cap = _current.max_json_depth
    return CapExceeded(f"JSON nests {how} deep, above the JSON nesting cap of {cap}; "
                       "if it is real, raise the cap (ocrcat ingest --max-json-depth N)")
