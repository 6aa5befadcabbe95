"""Which data files of an export a reader takes: one rule for MixtureDataset and ExportTask.

An export folder's `manifest.json` lists what it holds:
- a plain export (`ocrcat export`): `exports`, one entry per split exported into the folder
  (`train`, `val`, … or `all`), each with its one `file`;
- an embedded export (`--embed-images`): one `split` in `files`, its shards in plan order;
- anything else lists `files` named `<name>.<split or all>.<parquet|jsonl>`.
"""

from __future__ import annotations

# The names trainers use for a split (nanochat's tasks say "validation" or "test"), as ocrcat names it.
SPLIT_ALIASES = {"train": "train", "val": "val", "validation": "val", "eval": "val", "dev": "val", "test": "test"}


def split_files(manifest: dict, split: str | None, where: str) -> list[str]:
    """The file names (relative to the export) holding `split`, in plan order.

    With no split asked for: the `all` export, else the only one there is. Several and no choice is
    an error, never their union: that would put validation rows in training and serve positions twice.
    """
    if manifest.get("embedded_images"):
        held = {manifest.get("split") or "all": list(manifest.get("files", []))}
    elif "exports" in manifest:
        held = {name: [entry["file"]] for name, entry in manifest["exports"].items()}
    else:  # a manifest that lists only `files` (written by hand, say): the split is in each name
        held = {}
        for name in manifest.get("files", []):
            held.setdefault(name.rsplit(".", 2)[-2] if name.count(".") >= 2 else "all", []).append(name)
    split = SPLIT_ALIASES.get(split, split)
    if split is None:
        split = "all" if "all" in held else (next(iter(held)) if len(held) == 1 else None)
        if split is None:
            raise FileNotFoundError(f"the export at {where} holds the splits {', '.join(sorted(held))}; "
                                    "pass split= to choose one")
    if split not in held:
        raise FileNotFoundError(f"the export at {where} has no split {split!r}; it holds "
                                f"{', '.join(sorted(held)) or 'nothing'}")
    return held[split]
