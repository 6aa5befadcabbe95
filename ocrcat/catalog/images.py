"""The content-addressed image store: `images/<source>/<sha[:2]>/<sha>.<ext>`.

Bytes that decode are stored exactly as they came (no re-encoding). A file appears at its final
path only when complete: it is written to a temporary name in the same folder, then renamed.
Identical images are stored once. No name from a source is ever used as a path.

Each distinct image costs once: `put` hashes the bytes first, and an image this store already
verified (in this process) or that is already on disk at its content address is neither decoded
nor written again. New images get the cheapest check that still catches a truncated or corrupt
file: PNG by the CRC of every chunk through IEND, JPEG by a 1/8-scale decode (which still reads
every entropy-coded byte), other formats by a full decode.

The sweep deletes only what ocrcat created: regular files at content-addressed paths, found
without following symlinks, whose real location is inside the catalog.

A shared catalog keeps the store on object storage (`ObjectImageStore`: the same keys under the
catalog's data prefix, `s3://bucket/prefix/images/…`). An object appears only when its upload
completes, so no temporary name is needed; an existing object is never rewritten.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import struct
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

# Refuse images whose header claims more pixels than any page or chart needs (a 30 000 x 30 000
# header is a decompression bomb, not a document). 12 000 x 12 000 leaves room for large scans.
MAX_PIXELS = 144_000_000
TMP_SUFFIX = ".tmp"

_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# What `put` writes, and so all the sweep may delete: <sha>.<ext>, or its temporary <sha>.<ext>.<pid>.tmp.
_OURS = re.compile(r"(?P<sha>[0-9a-f]{64})\.(?:%s)(?:\.\d+\.tmp)?" % "|".join(_EXTENSIONS.values()))


def image_key(sha: str) -> int:
    """An image's key in ImageKeys: the first 64 bits of its (hex) sha256."""
    return int(sha[:16], 16)


class ImageKeys:
    """The images to keep, by the first 64 bits of their sha256: 8 bytes an image, where a set of
    path strings costs nearly 400 (a source of a million images held ~370 MiB to sweep its folder).
    Two images sharing a prefix can only keep an orphan, never delete a file that is referenced."""

    def __init__(self, keys: np.ndarray):
        self.keys = np.unique(np.asarray(keys, dtype=np.uint64))

    def __len__(self) -> int:
        return len(self.keys)

    def contains(self, shas: Iterable[str]) -> np.ndarray:
        """A boolean mask: which of the (hex) sha256s are kept."""
        wanted = np.array([image_key(sha) for sha in shas], dtype=np.uint64)
        if not len(self.keys):
            return np.zeros(len(wanted), dtype=bool)
        at = np.searchsorted(self.keys, wanted).clip(max=len(self.keys) - 1)
        return self.keys[at] == wanted


class BadImage(ValueError):
    """The bytes are not an image ocrcat can store (truncated, not an image, absurd size)."""


class UnsafeSweep(RuntimeError):
    """The image folder leads outside the catalog (a symlink): nothing is deleted there."""


@dataclass(frozen=True)
class StoredImage:
    path: str  # relative to the catalog directory
    sha256: str
    format: str  # PIL format name: JPEG, PNG, ...
    width: int
    height: int
    bytes: int


@contextmanager
def _pixel_cap(max_pixels: int):
    """Let PIL open images up to our own cap: its default (89.5 Mpx) is lower than the documented one."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels  # PIL warns above this and refuses above twice this
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own check follows
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _too_large(width: int, height: int, max_pixels: int) -> BadImage:
    return BadImage(
        f"image header claims {width}x{height} pixels ({width * height / 1e6:.1f} Mpx), more than the "
        f"{max_pixels / 1e6:g} Mpx image cap; if the file is a real page, raise the cap "
        "(ocrcat ingest --max-image-mpx N)"
    )


def image_header(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[str, int, int]:
    """(format, width, height) from the header alone, size after EXIF rotation; BadImage if unusable."""
    if not data:
        raise BadImage("empty image bytes")
    plain_png = _plain_png_size(data)
    fmt, width, height = ("PNG", *plain_png) if plain_png else _pil_header(data, max_pixels)
    if fmt not in _EXTENSIONS:
        raise BadImage(f"unsupported image format {fmt}")
    if width * height > max_pixels:
        raise _too_large(width, height, max_pixels)
    return fmt, width, height


def _pil_header(data: bytes, max_pixels: int) -> tuple[str, int, int]:
    """(format, width, height) as PIL opens the bytes, size after EXIF rotation."""
    try:
        with _pixel_cap(max_pixels), Image.open(io.BytesIO(data)) as img:
            fmt, (width, height) = img.format, img.size
            # PIL looks for a PNG's EXIF by decoding the whole image (it may follow the pixels):
            # only ask when the file has an eXIf chunk at all.
            has_exif = fmt != "PNG" or _png_may_have_exif(data)
            if has_exif and img.getexif().get(0x0112) in (5, 6, 7, 8):
                # EXIF turns it by 90 degrees: the model sees the transposed image (SPEC 5),
                # so record that size, or image_tokens would disagree with the crops.
                width, height = height, width
    except Image.DecompressionBombError:
        raise _too_large(*_claimed_size(data), max_pixels) from None
    except Exception as exc:  # PIL raises many types for bad data: all mean "not an image"
        raise BadImage(f"cannot decode image: {exc}") from None
    return fmt, width, height


# The bit depths PNG allows for each colour type (PNG spec, IHDR): every one of them PIL opens.
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}


def _plain_png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG read straight from its IHDR chunk, or None to ask PIL instead.

    The common case of the chart sources (ChartQA, FigureQA, PlotQA) costs a few byte comparisons
    rather than opening the file with PIL (~0.2 ms an image). Anything unusual goes to PIL: a header
    that breaks the spec, and any PNG that may carry EXIF (its rotation changes the size we record).
    The chunk CRCs are checked by `verify_image` either way.
    """
    if len(data) < 33 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    length, width, height, depth, colour, compression, filtering, interlace = struct.unpack_from(
        ">I4xIIBBBBB", data, 8)
    if (length != 13 or not 0 < width < 2**31 or not 0 < height < 2**31
            or depth not in _PNG_DEPTHS.get(colour, ()) or compression or filtering or interlace > 1):
        return None
    if _png_may_have_exif(data):
        return None
    return width, height


_PNG_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
_RAW_EXIF_KEYWORD = b"Raw profile type exif\0"  # ImageMagick's EXIF in a text chunk, which PIL reads


def _png_may_have_exif(data: bytes) -> bool:
    """Whether a PNG may carry EXIF: an eXIf chunk, or a text chunk keyed "Raw profile type exif".

    Walks the chunk headers only (a chart has a handful of chunks), where searching the bytes
    for the names read every pixel byte twice. A file whose chunks cannot be walked may: PIL decides.
    """
    pos, end = len(_PNG_SIGNATURE), len(data)
    while pos + 8 <= end:
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"eXIf" or (kind in _PNG_TEXT_CHUNKS and data.startswith(_RAW_EXIF_KEYWORD, pos + 8)):
            return True
        if kind == b"IEND":
            return False
        pos += 12 + length
    return True


def _claimed_size(data: bytes) -> tuple[int, int]:
    """The size a header claims, read without PIL's bomb check (only for the error message)."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception:
        return 0, 0
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def verify_image(data: bytes, fmt: str, max_pixels: int = MAX_PIXELS) -> None:
    """BadImage unless the bytes are complete and uncorrupted, by the cheapest sure check per format."""
    if fmt == "PNG":
        _verify_png_chunks(data)
        return
    try:
        with _pixel_cap(max_pixels), Image.open(io.BytesIO(data)) as img:
            if fmt == "JPEG":
                # Decoding at 1/8 scale still reads every entropy-coded byte, so truncation
                # and corruption are caught, at a fraction of the cost of a full decode.
                width, height = img.size
                img.draft(img.mode, (max(1, width // 8), max(1, height // 8)))
            img.load()
    except Exception as exc:
        raise BadImage(f"cannot decode image: {exc}") from None


def _verify_png_chunks(data: bytes) -> None:
    """Every chunk's CRC through IEND: a flipped byte or a cut anywhere in the file fails one."""
    if not data.startswith(_PNG_SIGNATURE):
        raise BadImage("cannot decode image: not a PNG signature")
    pos, end, seen_data = len(_PNG_SIGNATURE), len(data), False
    while True:
        if pos + 12 > end:
            raise BadImage("cannot decode image: PNG is truncated (no IEND chunk)")
        length, kind = struct.unpack_from(">I4s", data, pos)
        body_end = pos + 8 + length
        if body_end + 4 > end:
            raise BadImage(f"cannot decode image: PNG is truncated inside its {kind!r} chunk")
        (crc,) = struct.unpack_from(">I", data, body_end)
        if zlib.crc32(data[pos + 4:body_end]) != crc:
            raise BadImage(f"cannot decode image: PNG chunk {kind!r} at byte {pos} fails its CRC (corrupt)")
        seen_data |= kind == b"IDAT"
        if kind == b"IEND":
            if not seen_data:
                raise BadImage("cannot decode image: PNG has no image data (IDAT)")
            return
        pos = body_end + 4


def inspect_image(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[str, int, int]:
    """Check that `data` is a complete, uncorrupted image of sane size; return (format, w, h)."""
    fmt, width, height = image_header(data, max_pixels)
    verify_image(data, fmt, max_pixels)
    return fmt, width, height


class ImageStore:
    """Writes images into `<catalog>/images/`; safe to use from several processes at once."""

    def __init__(self, catalog_dir: str | os.PathLike, max_pixels: int = MAX_PIXELS):
        self.catalog_dir = Path(catalog_dir)
        self.root = self.catalog_dir / "images"
        self.max_pixels = max_pixels
        self._base = str(self.catalog_dir)  # paths on the hot path are plain strings: pathlib costs ~15 µs an image
        self._made_dirs: set[str] = set()  # saves a mkdir call per image on the hot path
        self._known: dict[tuple[str, str], StoredImage] = {}  # (source, sha) -> verified and stored
        self._last: tuple[str, bytes, StoredImage] | None = None  # the previous put

    def put(self, source: str, data: bytes) -> StoredImage:
        """Validate and store encoded image bytes; raises BadImage for anything unusable.

        An OSError (full disk, I/O error) is not bad input: it propagates, and no partial file
        is left behind.
        """
        last = self._last
        if last is not None and last[0] == source and last[1] == data:
            # The same bytes as the previous image: FigureQA's questions share one cell, a chart's
            # questions are neighbours. A memcmp (that fails fast on another image) saves the hash.
            return last[2]
        stored = self._put(source, data)
        self._last = (source, data, stored)
        return stored

    def _put(self, source: str, data: bytes) -> StoredImage:
        sha = hashlib.sha256(data).hexdigest()
        known = self._known.get((source, sha))
        if known is not None:
            return known  # a repeat (ChartQA, FigureQA): no decode, no write
        fmt, width, height = image_header(data, self.max_pixels)
        rel = f"images/{source}/{sha[:2]}/{sha}.{_EXTENSIONS[fmt]}"
        final = self._location(rel)
        if not self._exists(final):  # stored already means verified when it was written
            verify_image(data, fmt, self.max_pixels)
            self._write(final, data)
        stored = StoredImage(rel, sha, fmt, width, height, len(data))
        self._known[(source, sha)] = stored
        return stored

    def _location(self, rel: str) -> str:
        return f"{self._base}/{rel}"

    def _exists(self, final: str) -> bool:
        return os.path.exists(final)

    def read(self, rel: str) -> bytes:
        """The stored bytes of `rel` (a row's image_path)."""
        return (self.catalog_dir / rel).read_bytes()

    def sources(self) -> list[str]:
        """Sources that have a folder in the store."""
        return sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []

    def _write(self, final: str, data: bytes) -> None:
        folder = os.path.dirname(final)
        if folder not in self._made_dirs:
            os.makedirs(folder, exist_ok=True)
            self._made_dirs.add(folder)
        tmp = f"{final}.{os.getpid()}{TMP_SUFFIX}"
        try:
            # os.open/os.write, not open(): no file object and buffer for one write (~20 % of the
            # CPU a write costs, and a repeated-image ingest writes tens of thousands of files).
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.replace(tmp, final)  # atomic: readers see nothing or the whole file
        except BaseException as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if isinstance(exc, OSError) and exc.errno and not exc.filename:
                raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), tmp) from None  # name it
            raise

    def sweep(self, source: str, keep: ImageKeys) -> int:
        """Delete files of `source` whose sha is not in `keep`, and leftover temporaries.

        Only regular files named as `put` names them, at depth <sha[:2]>/<file>, found without
        following symlinks and really inside the catalog, are deleted. UnsafeSweep when
        `images/` or `images/<source>/` is a symlink leading outside the catalog.
        """
        folder = self.root / source
        inside = self.catalog_dir.resolve()
        for path in (self.root, folder):
            if path.is_symlink() and not path.resolve().is_relative_to(inside):
                raise UnsafeSweep(
                    f"{path} is a symlink to {path.resolve()}, outside the catalog {inside}; ocrcat only "
                    "deletes files inside its catalog, so unreferenced images were not swept there"
                )
        try:
            top = os.lstat(folder)
        except FileNotFoundError:
            return 0
        if not stat.S_ISDIR(top.st_mode) and not folder.is_dir():
            return 0
        removed = 0
        for prefix in os.scandir(folder):
            if not prefix.is_dir(follow_symlinks=False) or len(prefix.name) != 2:
                continue  # a symlinked folder is never entered
            ours = []  # (entry, sha, temporary?) of the files ocrcat wrote here
            for entry in os.scandir(prefix.path):
                match = _OURS.fullmatch(entry.name)
                if match and match["sha"][:2] == prefix.name and entry.is_file(follow_symlinks=False):
                    ours.append((entry, match["sha"], entry.name.endswith(TMP_SUFFIX)))
                # anything else is not a file ocrcat wrote (or a symlink): left alone
            kept = keep.contains(sha for _, sha, _ in ours)
            for (entry, _, temporary), is_kept in zip(ours, kept):
                if (is_kept and not temporary) or not Path(entry.path).resolve().is_relative_to(inside):
                    continue
                os.unlink(entry.path)
                removed += 1
        return removed


class ObjectImageStore(ImageStore):
    """The image store on object storage, under `<data prefix>/images/`: the same keys and checks.

    `put` writes an object only when its key is absent (write-once by content address); the
    sweep lists and deletes only keys under `<prefix>/images/<source>/` named as `put` names them.
    """

    def __init__(self, url: str, max_pixels: int = MAX_PIXELS):
        from ocrcat.catalog.objects import filesystem

        self.url = url.rstrip("/")
        self.fs, self.base = filesystem(self.url)
        self.catalog_dir = Path(self.base)  # for messages only: nothing local is touched
        self.root = Path(self.base) / "images"
        self.max_pixels = max_pixels
        self._known, self._last = {}, None

    def _location(self, rel: str) -> str:
        return f"{self.base}/{rel}"

    def _exists(self, final: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(final).type != pafs.FileType.NotFound

    def exists(self, rel: str) -> bool:
        """Whether the object `rel` (a row's image_path) is stored."""
        return self._exists(self._location(rel))

    def keys(self) -> set[str]:
        """Every stored object under images/, as rows name them (one listing)."""
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(f"{self.base}/images", recursive=True, allow_not_found=True))
        return {i.path.removeprefix(f"{self.base}/") for i in infos if i.type == pafs.FileType.File}

    def _write(self, final: str, data: bytes) -> None:
        try:
            with self.fs.open_output_stream(final) as f:  # visible only once the upload completes
                f.write(data)
        except OSError as exc:
            raise OSError(exc.errno or 5, f"cannot write {self.url}/{final.removeprefix(self.base + '/')}: {exc}",
                          f"{self.url}/{final.removeprefix(self.base + '/')}") from None

    def read(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self._location(rel)) as f:
            return f.read()

    def sources(self) -> list[str]:
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(f"{self.base}/images", allow_not_found=True))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    def sweep(self, source: str, keep: ImageKeys, newer_kept=None) -> int:
        """Delete this source's unreferenced objects; `newer_kept` (epoch seconds): keep every object
        modified since (another machine's run may not have committed its rows yet)."""
        import pyarrow.fs as pafs

        folder = f"{self.base}/images/{source}"
        infos = self.fs.get_file_info(pafs.FileSelector(folder, recursive=True, allow_not_found=True))
        ours = []  # (info, sha) of the keys ocrcat wrote
        for info in infos:
            parts = info.path.removeprefix(f"{self.base}/").split("/")
            if info.type != pafs.FileType.File or len(parts) != 4 or parts[:2] != ["images", source]:
                continue
            match = _OURS.fullmatch(parts[3])
            if match and match["sha"][:2] == parts[2]:
                ours.append((info, match["sha"]))
        removed = 0
        for (info, _), kept in zip(ours, keep.contains(sha for _, sha in ours)):
            if kept and not info.path.endswith(TMP_SUFFIX):
                continue  # still referenced
            if newer_kept is not None and info.mtime is not None and info.mtime.timestamp() >= newer_kept:
                continue  # perhaps a running ingest's, on another machine
            self.fs.delete_file(info.path)
            removed += 1
        return removed


def open_store(location: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> ImageStore:
    """The image store of a catalog folder, or of a shared catalog's data URL."""
    if "://" in str(location):
        return ObjectImageStore(str(location), max_pixels)
    return ImageStore(location, max_pixels)
