"""What every source module provides, and the records its reader yields.

A source module (`ocrcat/ingest/<name>.py`) defines:

    INFO: SourceInfo                     # hub repo, files, splits, licence
    OPTIONS: dict[str, Option]           # source-specific `--option key=value` settings
    def plan(root, split, options) -> list[Shard]
    def read(shard, options) -> Iterator[Sample | Rejected | Skipped]
    def write_sample_mirror(root, rows, seed) -> None

`root` is the source's own mirror folder (`<mirror>/<source>/`), laid out like the hub repo.
`plan` looks only at metadata (file lists, Parquet footers); `read` runs in a worker process and
yields one record per catalog row in the shard, so that `Shard.size` records come out of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ocrcat.vision import IMAGE_PLACEHOLDER


class MirrorError(ValueError):
    """The mirror lacks files the ingester needs, or they are not in the hub's layout."""


@dataclass(frozen=True)
class SourceInfo:
    name: str
    hub_repo: str
    files: tuple[str, ...]  # glob patterns of the hub files the ingester reads (what fetch gets)
    splits: tuple[str, ...]  # catalog split names this source has
    licence: str
    one_row_is: str
    configs: tuple[str, ...] = ()
    default_config: str | None = None
    kind: str = "vision"


@dataclass(frozen=True)
class Option:
    default: Any
    help: str

    def parse(self, raw: str) -> Any:
        """Turn the text of `--option key=value` into the type of the default."""
        if isinstance(self.default, bool):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"expected true or false, got {raw!r}")
        if self.default is None or isinstance(self.default, str):
            return raw
        return type(self.default)(raw)


@dataclass(frozen=True)
class Shard:
    """A unit of work that lands in the catalog all at once, or not at all."""

    key: str  # stable name: the same shard gets the same key on every run
    size: int  # exact number of records `read` yields for it
    payload: dict = field(default_factory=dict)  # picklable arguments for `read`


@dataclass
class Sample:
    """One catalog row as the source sees it; the runner stores the image and fills the rest."""

    source_key: str
    text: str
    response: str | None = None
    # Encoded bytes (JPEG, PNG, …, stored as they are) or a hub Image cell {bytes, path}; a vision
    # source's sample without a usable image becomes an error row, a text source's has none.
    image: bytes | dict | None = None
    messages: list[dict] | None = None
    meta: dict | None = None


@dataclass
class Rejected:
    """A record that cannot become a row; lands in `ingest_errors`."""

    source_key: str
    stage: str  # read | parse | image | map
    message: str


@dataclass
class Skipped:
    """A record deliberately left out (e.g. an olmOCR page with no text); counted, not an error."""

    source_key: str
    reason: str


Record = Sample | Rejected | Skipped


def vision_prompt(prompt: str) -> str:
    """The `text` of a vision row: the image tag, a newline, then the prompt."""
    return f"{IMAGE_PLACEHOLDER}\n{prompt}"


def require_files(root: Path, pattern: str, what: str) -> list[Path]:
    """Files under `root` matching `pattern`, sorted; a clear MirrorError when there are none."""
    files = sorted(root.glob(pattern))
    if not files:
        raise MirrorError(
            f"no {what} in {root} (looked for {pattern}); run `ocrcat fetch` for this source, "
            "or `ocrcat sample-mirror` for a small synthetic one"
        )
    return files
