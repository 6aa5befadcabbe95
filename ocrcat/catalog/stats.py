"""Catalog statistics, computed in SQL."""

from __future__ import annotations

from ocrcat.catalog.store import Catalog


def catalog_stats(catalog: Catalog) -> dict:
    """Rows per source/split/kind, image facts, token quantiles and error counts."""
    con = catalog.con
    groups = con.execute(
        """
        SELECT source, split, kind, count(*) AS rows,
               count(DISTINCT image_sha256) AS unique_images,
               coalesce(sum(image_bytes), 0) AS image_bytes_referenced,
               quantile_disc(image_tokens, 0.5) AS image_tokens_median,
               quantile_disc(image_tokens, 0.95) AS image_tokens_p95
        FROM samples GROUP BY ALL ORDER BY source, split, kind
        """
    ).fetchall()
    cols = ["source", "split", "kind", "rows", "unique_images", "image_bytes_referenced",
            "image_tokens_median", "image_tokens_p95"]
    errors = dict(con.execute("SELECT source || '/' || split, count(*) FROM ingest_errors GROUP BY 1").fetchall())
    rows = [dict(zip(cols, g)) | {"errors": errors.get(f"{g[0]}/{g[1]}", 0)} for g in groups]
    total_rows, unique_images, image_bytes, median, p95 = con.execute(
        """
        WITH images AS (SELECT DISTINCT image_sha256, image_bytes FROM samples WHERE image_sha256 IS NOT NULL)
        SELECT (SELECT count(*) FROM samples), (SELECT count(*) FROM images),
               (SELECT coalesce(sum(image_bytes), 0) FROM images),
               (SELECT quantile_disc(image_tokens, 0.5) FROM samples),
               (SELECT quantile_disc(image_tokens, 0.95) FROM samples)
        """
    ).fetchone()
    return {
        "catalog": str(catalog.dir),
        "vision_mode": catalog.vision_mode,
        "rows": total_rows,
        "unique_images": unique_images,
        "image_bytes": image_bytes,
        "image_tokens_median": median,
        "image_tokens_p95": p95,
        "errors": sum(errors.values()),
        "groups": rows,
    }
