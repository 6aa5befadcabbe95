"""Mirrors: the hub repos' own file layouts on local disk, fetched or generated.

`<root>/<source>/` holds the files of that source's hub repo, as `huggingface_hub` downloads them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ocrcat.ingest import registry


def write_sample_mirror(root: Path, sources: list[str] | None = None, rows: int = 40, seed: int = 0) -> list[str]:
    """Write a small synthetic mirror of each source in the hub's own layout; returns the sources.

    An existing sample mirror of a source is replaced (written to a temporary folder first).
    """
    names = registry.expand(sources or ["all"])
    if rows < 1:
        raise ValueError("--rows must be at least 1")
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        source = registry.get(name)
        tmp = root / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        source.write_sample_mirror(tmp, rows, seed)
        final = root / name
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    return names


def fetch(root: Path, sources: list[str], token: str | None = None) -> list[Path]:
    """Download the files each source's ingester reads from the hub into `<root>/<source>/`."""
    from huggingface_hub import snapshot_download

    paths = []
    for name in registry.expand(sources):
        info = registry.get(name).INFO
        try:
            path = snapshot_download(
                repo_id=info.hub_repo,
                repo_type="dataset",
                allow_patterns=list(info.files),
                local_dir=root / name,
                token=token,
            )
        except Exception as exc:
            raise ConnectionError(
                f"could not fetch {info.hub_repo} for {name}: {type(exc).__name__}: {exc}. "
                "Check the network and, for gated repos, HF_TOKEN; a mirror made another way "
                "works too (ocrcat ingest --mirror DIR)"
            ) from None
        paths.append(Path(path))
    return paths
