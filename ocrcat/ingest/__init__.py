"""Ingest: one module per source plus the shared machinery (registry, runner, Parquet, fetch)."""
