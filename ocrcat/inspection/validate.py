"""`ocrcat validate`: the data plan's checklist, run against a catalog, per source.

Each check is a population of rows (which rows it looks at) and a failure condition. Where the
condition needs Python (file system, PIL, the vision rule, the id hash) only the failing keys are
registered as a small table and joined back in SQL, so memory follows the failures, not the catalog.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator

import pyarrow as pa
from PIL import Image

from ocrcat import vision
from ocrcat.catalog.images import BadImage, inspect_image
from ocrcat.catalog.store import Catalog, CatalogError, sample_id
from ocrcat.mix.mixtures import describe_mixture, view_name

MAX_EXAMPLES = 5
BATCH = 10_000  # rows fetched at a time where Python has to look at every row

CHECKS = {
    "image_prefix": "vision rows' text starts with '<image>\\n' and has no other '<image>' (one image, one placeholder)",
    "image_facts": "vision rows have image_path, sha256, format and a positive width and height",
    "image_path": "image_path is relative, the file exists and (symlinks resolved) lies inside the catalog",
    "image_tokens": "image_tokens equals the vision rule for the stored width and height",
    "image_decodes": "(--deep) the file's sha256, decoding and size (after its EXIF turn, as ingest) match the catalog",
    "sample_id": "sample ids are unique and equal the hash of (source, split, source_key)",
    "conversation": "text rows hold a conversation: [system], user, assistant, … ending with assistant",
    "mixture_rows": "the mixture's plan references only rows that exist in samples",
    "mixture_shares": "realised rows per component and the text share match the definition",
}


@dataclass
class CheckResult:
    source: str  # a source name, or "mixture:<name>"
    check: str
    checked: int  # rows (or plan positions, components) looked at
    failed: int
    examples: list[int] = field(default_factory=list)  # up to five failing sample ids
    note: str = ""  # the first failure's reason, when there is more to say than the check's name

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def as_dict(self) -> dict:
        return asdict(self) | {"ok": self.ok, "description": CHECKS[self.check]}


def validate(catalog: Catalog, sources: list[str] | None = None, deep: bool = False,
             mixtures: bool = True, threads: int | None = None) -> list[CheckResult]:
    """Run every check (with `deep`, also decode every image); one result per source and check."""
    con = catalog.cursor()  # its own connection: the helper tables it registers stay private
    present = [s for (s,) in con.execute("SELECT DISTINCT source FROM samples ORDER BY 1").fetchall()]
    if sources:
        missing = sorted(set(sources) - set(present))
        if missing:
            raise CatalogError(
                f"no rows of {', '.join(missing)} in {catalog.dir}; sources in the catalog: "
                f"{', '.join(present) or 'none (ingest something first)'}"
            )
    chosen = sorted(set(sources)) if sources else present
    results = [
        # The tokenizer expands each placeholder into one image's tokens: a second one has no image.
        *_sql_check(con, chosen, "image_prefix", "kind = 'vision'",
                    "NOT starts_with(text, '<image>\n') OR strpos(substr(text, 8), '<image>') > 0"),
        *_sql_check(con, chosen, "image_facts", "kind = 'vision'",
                    "image_path IS NULL OR image_sha256 IS NULL OR image_format IS NULL "
                    "OR coalesce(image_width, 0) <= 0 OR coalesce(image_height, 0) <= 0"),
        *_image_path_check(con, catalog, chosen),
        *_image_tokens_check(con, catalog, chosen),
        *_sample_id_check(con, chosen),
        *_conversation_check(con, chosen),
    ]
    if deep:
        results += _image_decode_check(con, catalog, chosen, threads or os.cpu_count() or 1)
    if mixtures and not sources:
        results += _mixture_checks(catalog)
    order = {name: i for i, name in enumerate(CHECKS)}
    return sorted(results, key=lambda r: (r.source.startswith("mixture:"), r.source, order[r.check]))


def _sql_check(con, sources: list[str], check: str, population: str, failure: str,
               bad: dict[str, str] | None = None, key: str = "") -> list[CheckResult]:
    """Count rows of `population` per source and those meeting `failure` (both SQL over samples).

    `bad` maps keys (values of the column `key`) that Python found broken to a reason; they are
    joined in as the table `bad(bad_key, reason)`, which `failure` may refer to.
    """
    join = ""
    if bad is not None:
        con.register("bad", pa.table({"bad_key": list(bad), "reason": list(bad.values())}))
        join = f"LEFT JOIN bad ON bad.bad_key = samples.{key}"
    try:
        rows = con.execute(
            f"""
            SELECT source, count(*) AS checked, count(*) FILTER (WHERE failed) AS failed,
                   (list(sample_id ORDER BY sample_id) FILTER (WHERE failed))[1:{MAX_EXAMPLES}] AS ids,
                   min(reason) FILTER (WHERE failed) AS reason
            FROM (SELECT source, sample_id, coalesce(({failure}), true) AS failed,
                         {'bad.reason' if bad is not None else 'NULL'} AS reason
                  FROM samples {join}
                  WHERE list_contains(?, source) AND ({population}))
            GROUP BY source ORDER BY source
            """,
            [sources],
        ).fetchall()
    finally:
        if bad is not None:
            con.unregister("bad")
    return [CheckResult(src, check, checked, failed, list(ids or []), reason or "")
            for src, checked, failed, ids, reason in rows]


def _image_path_check(con, catalog: Catalog, sources: list[str]) -> list[CheckResult]:
    bad: dict[str, str] = {}
    # A shared catalog's images are objects: one listing instead of a request per image.
    stored = catalog.images.keys() if catalog.shared else None
    for (path,) in _stream(con, "SELECT DISTINCT image_path FROM samples "
                        "WHERE list_contains(?, source) AND kind = 'vision' AND image_path IS NOT NULL", [sources]):
        reason = path_problem(catalog, path, stored)
        if reason:
            bad[path] = reason
    return _sql_check(con, sources, "image_path", "kind = 'vision'",
                      "image_path IS NULL OR bad.bad_key IS NOT NULL", bad, "image_path")


def path_problem(catalog: Catalog, path: str, stored: set[str] | None = None) -> str | None:
    """Why `path` (relative to the catalog) is not a usable stored image, or None. On a shared
    catalog the image is an object under its data URL; `stored`, when given, is every key there."""
    normal = posixpath.normpath(path)
    if posixpath.isabs(path) or "\\" in path or normal == ".." or normal.startswith("../"):
        # The catalog must stay movable and must never point outside itself.
        return f"{path}: not a relative path inside the catalog"
    if catalog.shared:
        present = normal in stored if stored is not None else catalog.images.exists(normal)
        return None if present else f"{path}: object missing under {catalog.image_root}"
    root = os.fspath(catalog.dir)
    full = os.path.join(root, normal)
    if not os.path.isfile(full):
        return f"{path}: file missing"
    # A symlink planted in the store would make training read a file the catalog does not hold.
    # The folder images/ itself may be a link (the store on another disk): its target counts as inside.
    real = os.path.realpath(full)
    inside = {os.path.realpath(root), os.path.realpath(os.path.join(root, "images"))}
    if not any(os.path.commonpath([real, top]) == top for top in inside):
        return f"{path}: resolves to {real}, outside the catalog"
    return None


def _image_tokens_check(con, catalog: Catalog, sources: list[str]) -> list[CheckResult]:
    # The rule runs once per distinct size (a few thousand at most), the comparison in SQL.
    sizes = con.execute(
        "SELECT DISTINCT image_width, image_height FROM samples WHERE list_contains(?, source) "
        "AND kind = 'vision' AND image_width > 0 AND image_height > 0", [sources]
    ).fetchall()
    expected = pa.table({
        "w": [w for w, _ in sizes], "h": [h for _, h in sizes],
        "tokens": [vision.count_image_tokens(w, h, catalog.vision_mode) for w, h in sizes],
    }, schema=pa.schema([("w", pa.int32()), ("h", pa.int32()), ("tokens", pa.int32())]))
    con.register("expected_tokens", expected)
    try:
        return _sql_check(
            con, sources, "image_tokens", "kind = 'vision'",
            "image_tokens IS DISTINCT FROM (SELECT tokens FROM expected_tokens "
            "WHERE w = image_width AND h = image_height)",
        )
    finally:
        con.unregister("expected_tokens")


def _sample_id_check(con, sources: list[str]) -> list[CheckResult]:
    # The hash is Python's (blake2b, see store.sample_id): DuckDB has no stable equivalent.
    bad: dict[str, str] = {}
    for sid, source, split, key in _stream(
        con, "SELECT sample_id, source, split, source_key FROM samples WHERE list_contains(?, source)", [sources]
    ):
        if sid != sample_id(source, split, key):
            bad[str(sid)] = f"{sid} is not the hash of ({source}, {split}, {key})"
    for (sid,) in con.execute(
        "SELECT sample_id FROM samples WHERE list_contains(?, source) GROUP BY 1 HAVING count(*) > 1", [sources]
    ).fetchall():
        bad[str(sid)] = f"{sid} appears more than once"
    return _sql_check(con, sources, "sample_id", "true", "bad.bad_key IS NOT NULL", bad,
                      "sample_id::VARCHAR")


def _conversation_check(con, sources: list[str]) -> list[CheckResult]:
    # nanochat renders a conversation as an optional system turn, then user/assistant turns in
    # strict alternation; the last turn is the assistant's (it carries the training signal).
    # Arrows in brackets: DuckDB 1.5 binds `->>` looser than `AND` and `=` (catalog/sqltext.py).
    bad_conversations = """
        WITH conv AS (
            SELECT sample_id,
                   CASE WHEN json_type(messages) = 'ARRAY' THEN json_extract(messages, '$[*]') END AS turns
            FROM samples WHERE kind = 'text'),
        shape AS (
            SELECT sample_id, turns, CASE WHEN (turns[1]->>'role') = 'system' THEN 1 ELSE 0 END AS off FROM conv),
        turn AS (
            SELECT sample_id, off, unnest(turns) AS x, generate_subscripts(turns, 1) AS i FROM shape)
        SELECT sample_id FROM shape
        WHERE turns IS NULL OR len(turns) - off < 2 OR (len(turns) - off) % 2 = 1
        UNION
        SELECT sample_id FROM turn
        WHERE NOT coalesce(json_type(x) = 'OBJECT' AND json_type(x, 'content') = 'VARCHAR'
                           AND length(x->>'content') > 0
                           AND (x->>'role') = CASE WHEN i <= off THEN 'system'
                                                 WHEN (i - off) % 2 = 1 THEN 'user' ELSE 'assistant' END, false)
    """
    return _sql_check(con, sources, "conversation", "kind = 'text'",
                      f"sample_id IN ({bad_conversations}) OR image_path IS NOT NULL")


def _image_decode_check(con, catalog: Catalog, sources: list[str], threads: int) -> list[CheckResult]:
    query = ("SELECT image_path, any_value(image_sha256), any_value(image_width), any_value(image_height) "
             "FROM samples WHERE list_contains(?, source) AND kind = 'vision' AND image_path IS NOT NULL GROUP BY 1")
    bad: dict[str, str] = {}
    # PIL releases the GIL while it decodes, so threads give real parallelism here.
    with ThreadPoolExecutor(threads) as pool:
        for batch in _batches(con, query, [sources]):
            for (path, *_), reason in zip(batch, pool.map(lambda row: image_problem(catalog, *row), batch)):
                if reason:
                    bad[path] = reason
    return _sql_check(con, sources, "image_decodes", "kind = 'vision' AND image_path IS NOT NULL",
                      "bad.bad_key IS NOT NULL", bad, "image_path")


def image_problem(catalog: Catalog, path: str, sha256: str | None, width: int | None, height: int | None) -> str | None:
    """Why the stored image at `path` does not match its catalog facts (full decode), or None."""
    if problem := path_problem(catalog, path):
        return problem
    data = catalog.images.read(posixpath.normpath(path))
    if hashlib.sha256(data).hexdigest() != sha256:
        return f"{path}: content changed (sha256 differs from the catalog)"
    try:
        # The size as ingest recorded it: ingest's own function, so an EXIF turn of 90 degrees
        # (orientations 5-8) swaps width and height here exactly as it did there.
        _, *size = inspect_image(data)
        size = tuple(size)
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # a full decode (inspect_image reads JPEGs at 1/8 scale): truncation raises here
    except BadImage as exc:
        return f"{path}: does not decode ({exc})"
    except Exception as exc:  # PIL raises many types for bad data; all mean "does not decode"
        return f"{path}: does not decode ({type(exc).__name__}: {exc})"
    if size != (width, height):
        return f"{path}: decodes to {size[0]}x{size[1]}, catalog says {width}x{height}"
    return None


def _batches(con, query: str, params: list) -> Iterator[list[tuple]]:
    """Rows of `query` in batches, so that a catalog of millions of rows never sits in memory."""
    cursor = con.cursor()  # its own cursor: the caller may query `con` between batches
    cursor.execute("USE lake")  # a cursor starts in DuckDB's in-memory database, not the catalog
    try:
        cursor.execute(query, params)
        while batch := cursor.fetchmany(BATCH):
            yield batch
    finally:
        cursor.close()


def _stream(con, query: str, params: list) -> Iterator[tuple]:
    for batch in _batches(con, query, params):
        yield from batch


def _mixture_checks(catalog: Catalog) -> list[CheckResult]:
    """Per mixture: its components still match rows, and its view gives the plan the definition promises.

    The view `mix_<name>` is SQL fixed when the mixture was stored; a definition edited afterwards,
    or a catalog re-ingested under it, shows up here as counts that no longer agree.
    """
    results = []
    for (name,) in catalog.con.execute("SELECT name FROM mixtures ORDER BY name").fetchall():
        source = f"mixture:{name}"
        try:
            described = describe_mixture(catalog, name)
        except Exception as exc:  # a predicate that no longer binds (a renamed column) lands here
            results.append(CheckResult(source, "mixture_rows", 1, 1, [], f"cannot compute the plan: {exc}"))
            continue
        comps = described["components"]
        empty = [c["name"] for c in comps if c["rows"] == 0]
        results.append(CheckResult(source, "mixture_rows", len(comps), len(empty), [],
                                   f"components matching no rows: {', '.join(empty)}" if empty else ""))
        try:
            in_view = dict(catalog.con.execute(
                f"SELECT component, count(*) FROM {view_name(name)} GROUP BY 1").fetchall())
        except Exception as exc:
            results.append(CheckResult(source, "mixture_shares", len(comps), len(comps), [],
                                       f"view {view_name(name)} unusable: {exc}"))
            continue
        wrong = []
        for c in comps:
            # Whole weights promise exact counts, fractions and the text share round to one row.
            if c["realised"] != c["promised"] or in_view.get(c["name"], 0) != c["realised"]:
                wrong.append(f"{c['name']}: promised {c['promised']}, plan {c['realised']}, "
                             f"view {view_name(name)} {in_view.get(c['name'], 0)}")
        results.append(CheckResult(source, "mixture_shares", len(comps), len(wrong), [], "; ".join(wrong)))
    return results


def mixture_descriptions(catalog: Catalog) -> Iterator[tuple[str, dict | None, str | None]]:
    """(name, describe_mixture's answer, None) per stored mixture, or (name, None, why not)."""
    for (name,) in catalog.con.execute("SELECT name FROM mixtures ORDER BY name").fetchall():
        try:
            yield name, describe_mixture(catalog, name), None
        except Exception as exc:
            yield name, None, f"cannot compute the plan of {name}: {exc}"


def failed(results: Iterable[CheckResult]) -> list[CheckResult]:
    return [r for r in results if not r.ok]
