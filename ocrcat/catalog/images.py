"""The content-addressed image store: `images/<source>/<sha[:2]>/<sha>.<ext>`.

Bytes that decode are stored exactly as they came (no re-encoding). A file appears at its final
path only when complete: it is written to a temporary name in the same folder, then renamed.
Identical images are stored once. No name from a source is ever used as a path.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

# Refuse images whose header claims more pixels than any page or chart needs (a 30 000 x 30 000
# header is a decompression bomb, not a document). 12 000 x 12 000 leaves room for large scans.
MAX_PIXELS = 144_000_000
TMP_SUFFIX = ".tmp"

_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}


class BadImage(ValueError):
    """The bytes are not an image ocrcat can store (truncated, not an image, absurd size)."""


@dataclass(frozen=True)
class StoredImage:
    path: str  # relative to the catalog directory
    sha256: str
    format: str  # PIL format name: JPEG, PNG, ...
    width: int
    height: int
    bytes: int


def inspect_image(data: bytes) -> tuple[str, int, int]:
    """Check that `data` is a complete, decodable image of sane size; return (format, w, h)."""
    if not data:
        raise BadImage("empty image bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt, (width, height) = img.format, img.size
                if img.getexif().get(0x0112) in (5, 6, 7, 8):
                    # EXIF turns it by 90 degrees: the model sees the transposed image (SPEC 5),
                    # so record that size, or image_tokens would disagree with the crops.
                    width, height = height, width
                if fmt not in _EXTENSIONS:
                    raise BadImage(f"unsupported image format {fmt}")
                if width * height > MAX_PIXELS:
                    raise BadImage(
                        f"image header claims {width}x{height} pixels, more than the "
                        f"{MAX_PIXELS:,}-pixel limit; the file is corrupt or not a page"
                    )
                if fmt == "JPEG":
                    # Decoding at 1/8 scale still reads every entropy-coded byte, so truncation
                    # and corruption are caught, at a fraction of the cost of a full decode.
                    img.draft(img.mode, (max(1, width // 8), max(1, height // 8)))
                img.load()
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"image too large: {exc}") from None
    except Exception as exc:  # PIL raises many types for bad data: all mean "not an image"
        raise BadImage(f"cannot decode image: {exc}") from None
    return fmt, width, height


class ImageStore:
    """Writes images into `<catalog>/images/`; safe to use from several processes at once."""

    def __init__(self, catalog_dir: str | os.PathLike):
        self.catalog_dir = Path(catalog_dir)
        self.root = self.catalog_dir / "images"
        self._made_dirs: set[Path] = set()  # saves a mkdir call per image on the hot path

    def put(self, source: str, data: bytes) -> StoredImage:
        """Validate and store encoded image bytes; raises BadImage for anything unusable."""
        fmt, width, height = inspect_image(data)
        sha = hashlib.sha256(data).hexdigest()
        rel = f"images/{source}/{sha[:2]}/{sha}.{_EXTENSIONS[fmt]}"
        final = self.catalog_dir / rel
        if not final.exists():
            if final.parent not in self._made_dirs:
                final.parent.mkdir(parents=True, exist_ok=True)
                self._made_dirs.add(final.parent)
            tmp = final.with_name(f"{final.name}.{os.getpid()}{TMP_SUFFIX}")
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, final)  # atomic: readers see nothing or the whole file
        return StoredImage(rel, sha, fmt, width, height, len(data))

    def sweep(self, source: str, keep: set[str]) -> int:
        """Delete files of `source` not in `keep` (relative paths) and leftover temporaries."""
        removed = 0
        folder = self.root / source
        if not folder.exists():
            return 0
        for path in folder.rglob("*"):
            if path.is_file() and path.relative_to(self.catalog_dir).as_posix() not in keep:
                path.unlink()
                removed += 1
        return removed
