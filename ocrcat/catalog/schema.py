"""The catalog's tables. Columns may be added over time, never removed (SPEC §2).

The lake (DuckLake) has no PRIMARY KEY/UNIQUE constraints and no sequences: sample ids are unique
by construction (the runner replaces a split as a whole and drops repeated keys before writing;
`ocrcat validate` checks it), run ids are max + 1 taken while holding the commit lock.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

# Column order of `samples`; ingest builds Arrow batches in exactly this order.
SAMPLE_COLUMNS: list[tuple[str, str]] = [
    ("sample_id", "UBIGINT NOT NULL"),
    ("source", "VARCHAR NOT NULL"),
    ("split", "VARCHAR NOT NULL"),
    ("source_key", "VARCHAR NOT NULL"),
    ("kind", "VARCHAR NOT NULL"),
    ("text", "VARCHAR NOT NULL"),
    ("response", "VARCHAR"),
    ("messages", "JSON"),
    ("image_path", "VARCHAR"),
    ("image_sha256", "VARCHAR"),
    ("image_format", "VARCHAR"),
    ("image_width", "INTEGER"),
    ("image_height", "INTEGER"),
    ("image_bytes", "BIGINT"),
    ("image_tokens", "INTEGER"),
    ("meta", "JSON"),
    ("ingest_run", "INTEGER NOT NULL"),
]
SAMPLE_COLUMN_NAMES = [name for name, _ in SAMPLE_COLUMNS]

DDL = [
    # Key/value facts about the catalog itself: schema version, vision mode.
    """CREATE TABLE IF NOT EXISTS catalog_info (key VARCHAR NOT NULL, value VARCHAR NOT NULL)""",
    "CREATE TABLE IF NOT EXISTS samples (\n  "
    + ",\n  ".join(f"{name} {type_}" for name, type_ in SAMPLE_COLUMNS)
    + "\n)",
    # The rows of unfinished ingest runs, shard by shard; a run that completes moves its split's
    # rows into `samples` in one commit (so readers never see a half-replaced split).
    "CREATE TABLE IF NOT EXISTS samples_pending (\n  "
    + ",\n  ".join(f"{name} {type_}" for name, type_ in SAMPLE_COLUMNS)
    + "\n)",
    # run_id is allocated by the ingest runner (max + 1 inside its commit): no sequence needed.
    """CREATE TABLE IF NOT EXISTS ingest_runs (
        run_id INTEGER NOT NULL,
        source VARCHAR NOT NULL,
        split VARCHAR NOT NULL,
        fingerprint VARCHAR NOT NULL,  -- hash of the arguments that shape the rows
        arguments JSON NOT NULL,
        started_at TIMESTAMP NOT NULL,
        finished_at TIMESTAMP,
        status VARCHAR NOT NULL,       -- running | completed | failed | interrupted
        rows BIGINT DEFAULT 0,
        errors BIGINT DEFAULT 0,
        skipped BIGINT DEFAULT 0,
        resumed_from INTEGER,          -- the unfinished run this one continued, if any
        message VARCHAR,               -- why it failed or stopped, as the CLI printed it
        snapshot BIGINT                -- the lake snapshot its last commit made
    )""",
    """CREATE TABLE IF NOT EXISTS ingest_errors (
        run_id INTEGER NOT NULL,
        source VARCHAR NOT NULL,
        split VARCHAR NOT NULL,
        source_key VARCHAR NOT NULL,
        stage VARCHAR NOT NULL,        -- read | parse | image | map | insert
        message VARCHAR NOT NULL
    )""",
    # One row per finished shard: what lets an interrupted ingest resume where it stopped.
    """CREATE TABLE IF NOT EXISTS ingest_shards (
        source VARCHAR NOT NULL,
        split VARCHAR NOT NULL,
        fingerprint VARCHAR NOT NULL,
        shard_key VARCHAR NOT NULL,
        run_id INTEGER NOT NULL,
        rows BIGINT NOT NULL,
        errors BIGINT NOT NULL,
        skipped BIGINT NOT NULL
    )""",
    # Mixtures (SPEC §4): a definition as data; `ocrcat.mix` builds the view `mix_<name>` from it.
    """CREATE TABLE IF NOT EXISTS mixtures (
        name VARCHAR NOT NULL,
        seed BIGINT NOT NULL,
        text_share DOUBLE NOT NULL DEFAULT 0,
        text_predicate VARCHAR,        -- which rows count as text rows for the share; NULL = kind = 'text'
        created_at TIMESTAMP NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS mixture_components (
        mixture VARCHAR NOT NULL,
        position INTEGER NOT NULL,     -- order of definition
        name VARCHAR NOT NULL,
        predicate VARCHAR NOT NULL,    -- SQL over samples
        weight DOUBLE NOT NULL
    )""",
]

TABLES = ["catalog_info", "samples", "samples_pending", "ingest_runs", "ingest_errors", "ingest_shards",
          "mixtures", "mixture_components"]
