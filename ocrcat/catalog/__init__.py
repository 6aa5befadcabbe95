"""The catalog: DuckDB tables plus the content-addressed image store (reading and judging it: ocrcat.inspection)."""

from ocrcat.catalog.images import BadImage, ImageStore, StoredImage
from ocrcat.catalog.store import Catalog, CatalogBusy, CatalogError, resolve_dir, sample_id

__all__ = [
    "BadImage",
    "Catalog",
    "CatalogBusy",
    "CatalogError",
    "ImageStore",
    "StoredImage",
    "resolve_dir",
    "sample_id",
]
