"""`ocrcat show SAMPLE_ID`: one row with its image facts and token counts, and a quick-look copy."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ocrcat import vision
from ocrcat.catalog.store import Catalog, CatalogError
from ocrcat.inspection.validate import path_problem


def parse_sample_id(value: str) -> int:
    """A sample id as the catalog prints it (decimal), or 0x-prefixed hex."""
    try:
        sid = int(value, 16) if value.lower().startswith("0x") else int(value)
    except ValueError:
        raise CatalogError(f"{value!r} is not a sample id: give the number from the sample_id column") from None
    if not 0 <= sid < 2**64:
        raise CatalogError(f"{value} is not a sample id: ids are unsigned 64-bit integers")
    return sid


def sample_facts(catalog: Catalog, sid: int, tokenizer=None) -> dict:
    """The row, its image facts (file, grid, tokens by the rule) and its text lengths."""
    result = catalog.con.execute("SELECT * FROM samples WHERE sample_id = ?", [sid])
    columns = [d[0] for d in result.description]
    row = result.fetchone()
    if row is None:
        raise CatalogError(
            f"no sample {sid} in {catalog.dir}; find ids with "
            "ocrcat sql \"SELECT sample_id, source, text FROM samples LIMIT 10\""
        )
    facts = dict(zip(columns, row))
    for key in ("messages", "meta"):
        if facts[key] is not None:
            facts[key] = json.loads(facts[key])
    counts: dict = {"text_chars": len(facts["text"]), "response_chars": len(facts["response"] or "")}
    if tokenizer is not None:
        counts["text_tokens"] = len(tokenizer.encode(facts["text"].replace("<image>", "")))
        counts["response_tokens"] = len(tokenizer.encode(facts["response"])) if facts["response"] else 0
        counts["sequence_tokens"] = _sequence_tokens(tokenizer, facts)
    if facts["image_path"]:
        w, h = facts["image_width"], facts["image_height"]
        sized = bool(w and h and w > 0 and h > 0)
        facts["image"] = {
            "file": f"{catalog.image_root}/{facts['image_path']}" if catalog.shared
                    else os.fspath((catalog.dir / facts["image_path"]).absolute()),
            "problem": path_problem(catalog, facts["image_path"]),
            "grid": list(vision.choose_grid(w, h, catalog.vision_mode)) if sized else None,
            "tokens_by_rule": catalog.count_image_tokens(w, h) if sized else None,
            "vision_mode": catalog.vision_mode,
        }
        counts["image_tokens"] = facts["image_tokens"]
    facts["counts"] = counts
    return facts


def _sequence_tokens(tokenizer, facts: dict) -> int | str | None:
    """Length of the rendered training sequence (SPEC §5), where the tokenizer can render one."""
    try:
        if facts["messages"] is not None and hasattr(tokenizer, "render_conversation"):
            return len(tokenizer.render_conversation(facts["messages"]))
        if facts["image_tokens"] is not None and hasattr(tokenizer, "render_vision_pretraining"):
            ids, _ = tokenizer.render_vision_pretraining(facts["text"], facts["response"], [facts["image_tokens"]])
            return len(ids)
    except (ValueError, KeyError, TypeError) as exc:  # a malformed row: say why instead of a count
        return f"cannot render: {exc}"
    return None


def write_quick_look(facts: dict, out_dir: Path) -> list[Path]:
    """Copy the image to `<out_dir>/<id>.<ext>` beside `<id>.txt` holding the text and response."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sid = facts["sample_id"]
    text_path = out_dir / f"{sid}.txt"
    parts = [f"# {facts['source']}/{facts['split']} {facts['source_key']}", "## text", facts["text"]]
    if facts["response"] is not None:
        parts += ["## response", facts["response"]]
    if facts["messages"] is not None:
        parts += ["## messages", json.dumps(facts["messages"], ensure_ascii=False, indent=2)]
    text_path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    written = [text_path]
    image = facts.get("image")
    if image and not image["problem"]:
        image_path = out_dir / f"{sid}{Path(image['file']).suffix}"
        shutil.copyfile(image["file"], image_path)
        written.insert(0, image_path)
    return written
