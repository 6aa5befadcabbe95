"""The registry of sources: one module per source under `ocrcat/ingest/`, looked up by name."""

from __future__ import annotations

import importlib
from types import ModuleType

from ocrcat.ingest.base import Option

# The ten sources of the data plan, in the order the catalog lists them.
SOURCE_NAMES: tuple[str, ...] = (
    "docbank",
    "olmocr",
    "llava_cc3m",
    "plotqa",
    "chartqa",
    "figureqa",
    "pubtables",
    "latex_formulas",
    "mathwriting",
    "smoltalk",
)


class UnknownSource(ValueError):
    pass


def get(name: str) -> ModuleType:
    """The module of source `name`, with INFO, OPTIONS, plan, read and write_sample_mirror."""
    if name not in SOURCE_NAMES:
        raise UnknownSource(f"unknown source {name!r}; known sources: {', '.join(SOURCE_NAMES)}")
    try:
        return importlib.import_module(f"ocrcat.ingest.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"ocrcat.ingest.{name}":
            raise
        raise UnknownSource(f"source {name!r} is not implemented in this version of ocrcat") from None


def available() -> list[str]:
    """Names of the sources this version can ingest, in catalog order."""
    names = []
    for name in SOURCE_NAMES:
        try:
            get(name)
        except UnknownSource:
            continue
        names.append(name)
    return names


def expand(names: list[str]) -> list[str]:
    """Resolve `all` and check every name; keeps the user's order otherwise."""
    if "all" in names:
        return available()
    for name in names:
        get(name)
    return names


def parse_options(source: ModuleType, pairs: list[str]) -> dict:
    """Turn `key=value` strings into the source's option dict (defaults filled in)."""
    options: dict[str, Option] = getattr(source, "OPTIONS", {})
    values = {key: opt.default for key, opt in options.items()}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in options:
            known = ", ".join(f"{k}=<{type(o.default).__name__}>" for k, o in options.items()) or "none"
            raise ValueError(
                f"bad option {pair!r} for {source.INFO.name}; its options are: {known}"
            )
        try:
            values[key] = options[key].parse(raw.strip())
        except ValueError as exc:
            raise ValueError(f"option {key} of {source.INFO.name}: {exc}") from None
    return values
