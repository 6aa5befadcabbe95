"""Catalog statistics, computed in SQL."""

from __future__ import annotations

from ocrcat.catalog.store import Catalog, CatalogError


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


# Per source and split: the distributions a person checks before spending GPU hours on the data.
QUANTILES = {"min": 0.0, "p10": 0.1, "p50": 0.5, "p90": 0.9, "p99": 0.99, "max": 1.0}
MEASURES = {
    "image_width": "image_width",
    "image_height": "image_height",
    "image_tokens": "image_tokens",
    "text_chars": "length(text)",
    "response_chars": "length(response)",
}
TOKEN_MEASURES = ("text_tokens", "response_tokens")
TOKEN_BATCH = 4096


def source_stats(catalog: Catalog, sources: list[str] | None = None, tokenizer=None) -> list[dict]:
    """Quantiles of image size, image tokens and text length per source and split.

    With `tokenizer` (anything with `encode(str) -> list[int]`, e.g. `ocrcat.mix.load_tokenizer(...)`)
    also the token counts of the prompt (its `<image>` placeholders removed: those are counted by
    image_tokens) and of the response, and the total tokens a pass over the group costs.
    """
    con = catalog.con.cursor()  # its own connection: the table it registers stays private to this call
    if sources:
        present = {s for (s,) in con.execute("SELECT DISTINCT source FROM samples").fetchall()}
        if set(sources) - present:
            raise CatalogError(f"no rows of {', '.join(sorted(set(sources) - present))} in {catalog.dir}; "
                               f"sources in the catalog: {', '.join(sorted(present)) or 'none'}")
    measures = dict(MEASURES)
    if tokenizer is not None:
        con.register("text_token_counts", _token_counts(con, sources, tokenizer))
        measures |= {m: f"t.{m}" for m in TOKEN_MEASURES}
    quantiles = ", ".join(
        f"quantile_disc({expr}, {list(QUANTILES.values())}) AS {name}" for name, expr in measures.items()
    )
    join = "LEFT JOIN text_token_counts t USING (sample_id)" if tokenizer is not None else ""
    total = ("coalesce(sum(image_tokens), 0) + sum(t.text_tokens) + sum(t.response_tokens)" if tokenizer is not None
             else "NULL")
    try:
        result = con.execute(
            f"""
            SELECT source, split, count(*) AS rows, count(*) FILTER (WHERE kind = 'vision') AS vision_rows,
                   count(*) FILTER (WHERE kind = 'text') AS text_rows, count(DISTINCT image_sha256) AS unique_images,
                   {total} AS total_tokens, {quantiles}
            FROM samples {join}
            WHERE ? IS NULL OR list_contains(?, source)
            GROUP BY ALL ORDER BY source, split
            """,
            [sources, sources],
        )
        columns = [d[0] for d in result.description]
        rows = result.fetchall()
    finally:
        if tokenizer is not None:
            con.unregister("text_token_counts")
    out = []
    for row in rows:
        record = dict(zip(columns, row))
        for name in measures:
            values = record.pop(name)
            record[name] = None if values is None or values[0] is None else dict(zip(QUANTILES, values))
        out.append(record)
    return out


def _token_counts(con, sources: list[str] | None, tokenizer):
    """Arrow table (sample_id, text_tokens, response_tokens): 24 bytes per row, no text kept."""
    import numpy as np
    import pyarrow as pa

    ids, text_tokens, response_tokens = [], [], []
    cursor = con.cursor()
    try:
        cursor.execute(
            "SELECT sample_id, replace(text, '<image>', ''), response FROM samples "
            "WHERE ? IS NULL OR list_contains(?, source)", [sources, sources])
        while batch := cursor.fetchmany(TOKEN_BATCH):
            ids.append(np.array([sid for sid, _, _ in batch], np.uint64))
            text_tokens.append(np.array([len(tokenizer.encode(t)) for _, t, _ in batch], np.int64))
            response_tokens.append(np.array([len(tokenizer.encode(r)) if r is not None else 0 for _, _, r in batch],
                                            np.int64))
    finally:
        cursor.close()

    def column(parts: list, dtype) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0, dtype)

    return pa.table({"sample_id": column(ids, np.uint64), "text_tokens": column(text_tokens, np.int64),
                     "response_tokens": column(response_tokens, np.int64)})


def histogram(catalog: Catalog, source: str, measure: str, bins: int = 30) -> tuple[list[float], list[int]]:
    """Equal-width histogram of a MEASURES column for one source: (bin edges, counts), binned in SQL."""
    expr = MEASURES[measure]
    lo, hi = catalog.con.execute(
        f"SELECT min({expr}), max({expr}) FROM samples WHERE source = ?", [source]).fetchone()
    if lo is None:
        return [], []
    # Every measure is an integer: never cut finer than one unit, so no bin falls between values.
    bins = max(1, min(bins, hi - lo + 1))
    width = (hi - lo + 1) / bins
    counts = [0] * bins
    for b, n in catalog.con.execute(
        f"SELECT least(floor(({expr} - ?) / ?)::INTEGER, ? - 1) AS b, count(*) FROM samples "
        f"WHERE source = ? AND {expr} IS NOT NULL GROUP BY 1", [lo, width, bins, source]
    ).fetchall():
        counts[b] += n
    return [lo + i * width for i in range(bins + 1)], counts
