"""Mixtures (SPEC §4): a definition stored as data in the catalog, its plan computed in SQL.

A mixture is a seed, weighted components (each a SQL predicate over `samples`) and an optional
text share. Its plan is one entry per training position:

- a component of weight w over n rows gives floor(w)*n entries (every row floor(w) times) plus
  round(frac(w)*n) more, drawn without replacement by a seeded key: 1.5 = once plus a seeded half;
- the text share s draws T = round((s*V - V_text)/(1-s)), at least 0, entries from the text rows
  (V = all other entries, V_text = those of them that are text rows already), so text rows are
  fraction s of the whole to within half a row; it cycles through the text rows, each pass
  without replacement, if T is larger than the rows there are;
- positions are a seeded shuffle of all entries, like nanochat's TaskMixture shuffles its
  (task, index) pairs.

Every random choice is an MD5 of a text key (seed, component, repeat, sample_id), so the plan is a
pure function of (seed, rows, definition): MD5 and decimal formatting are the same in every DuckDB
version, on every machine, at every thread count (all orderings are total). `random()` and
`USING SAMPLE` are never used. `plan_key()` is the Python twin the tests hold the SQL to.

The view `mix_<name>` exposes the plan to any SQL client: one row per position, in plan order,
with `position`, `component`, `repeat` and the sample's columns.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from importlib import resources
from pathlib import Path

import duckdb

from ocrcat.catalog import Catalog, CatalogError
from ocrcat.catalog.sqltext import bind_json_arrows, sql_string

TEXT_COMPONENT = "text"  # the component name of the rows drawn for the text share
DEFAULT_TEXT_PREDICATE = "kind = 'text'"
PLAN_ORDER = "key, component, repeat, sample_id"
SPLITS = ("train", "val", "test")
# A row at most a million times: larger weights only overflow the plan's integer counts (and no
# mixture needs them: 1e6 × one row is already a million positions).
MAX_WEIGHT = 1e6
_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")


class MixtureError(ValueError):
    """A mixture definition or request the user has to fix; the message says what."""


class MixtureWarning(UserWarning):
    """A stored mixture that works but does not give what its definition seems to ask for."""


# --- the deterministic key -------------------------------------------------------------------

def plan_key(*parts: object) -> int:
    """The 64-bit key SQL computes with `_sql_key`: the first 8 bytes of MD5("p0:p1:…"), big-endian."""
    text = ":".join(str(p) for p in parts)
    return int.from_bytes(hashlib.md5(text.encode()).digest()[:8], "big")


def _sql_key(*parts: str) -> str:
    """SQL twin of `plan_key`; each part is a SQL expression (VARCHAR or integer)."""
    text = " || ':' || ".join(f"CAST({p} AS VARCHAR)" for p in parts)
    return f"CAST('0x' || substr(md5({text}), 1, 16) AS UBIGINT)"


# --- definitions -----------------------------------------------------------------------------

def check_name(name: str, what: str = "mixture") -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise MixtureError(
            f"{what} name {name!r} is not allowed: use lowercase letters, digits and _ "
            "(starting with a letter), e.g. stage2 or chartqa_human"
        )
    return name


def normalise(name: str, components, text_share: float = 0.0, seed: int = 0,
              text_predicate: str | None = None) -> dict:
    """A definition as a plain dict, with its shape checked (not yet against the catalog).

    `components` is a list of {"name", "predicate", "weight"} dicts, or (name, predicate, weight)
    tuples, or a {name: {"predicate", "weight"}} mapping (the TOML form).
    """
    check_name(name)
    if isinstance(components, dict):
        components = [{"name": k, **v} if isinstance(v, dict) else (k, None, v) for k, v in components.items()]
    comps = []
    for comp in components or []:
        if not isinstance(comp, dict):
            comp = dict(zip(("name", "predicate", "weight"), comp))
        cname = check_name(comp.get("name"), "component")
        predicate = comp.get("predicate")
        if not isinstance(predicate, str) or not predicate.strip():
            raise MixtureError(f"component {cname!r} of {name} needs a predicate, e.g. \"source = 'chartqa'\"")
        weight = comp.get("weight", 1)
        if (isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight)
                or not 0 < weight <= MAX_WEIGHT):
            raise MixtureError(f"component {cname!r} of {name}: weight must be a number > 0 and at most "
                               f"{MAX_WEIGHT:.0f} (each row a million times), not {weight!r}")
        comps.append({"name": cname, "predicate": predicate.strip(), "weight": float(weight)})
    if not comps:
        raise MixtureError(f"mixture {name} has no components; give at least one NAME=PREDICATE:WEIGHT")
    names = [c["name"] for c in comps]
    if len(set(names)) != len(names):
        raise MixtureError(f"mixture {name} names a component twice: {', '.join(names)}")
    if isinstance(text_share, bool) or not isinstance(text_share, (int, float)) or not 0 <= text_share < 1:
        raise MixtureError(f"text share of {name} must be a fraction in [0, 1), e.g. 0.1, not {text_share!r}")
    if text_share and TEXT_COMPONENT in names:
        raise MixtureError(f"mixture {name}: the component name {TEXT_COMPONENT!r} is reserved for the text share")
    if isinstance(seed, bool) or not isinstance(seed, int) or not -(2**63) <= seed < 2**63:
        raise MixtureError(f"seed of {name} must be an integer, not {seed!r}")
    if text_predicate is not None and (not isinstance(text_predicate, str) or not text_predicate.strip()):
        raise MixtureError(f"text predicate of {name} must be SQL over samples, e.g. \"source = 'smoltalk'\"")
    return {
        "name": name,
        "seed": seed,
        "text_share": float(text_share),
        "text_predicate": (text_predicate.strip() if text_predicate else None) if text_share else None,
        "components": comps,
    }


def _predicate_rows(con: duckdb.DuckDBPyConnection, predicate: str, where: str) -> int:
    """Rows of `samples` a predicate matches. It must parse as one SQL expression on its own, so
    that it cannot close the WHERE clause it is pasted into (no `) UNION …`, no `; DROP …`), and
    select the same rows on every read (`_check_pure`)."""
    try:
        duckdb.SQLExpression(bind_json_arrows(predicate))
        _check_pure(con, predicate, where)
        return con.execute(f"SELECT count(*) FROM samples WHERE ({bind_json_arrows(predicate)}\n)").fetchone()[0]
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0]
        raise MixtureError(
            f"{where}: predicate {predicate!r} is not a valid filter over samples ({first}); "
            "give one SQL expression, e.g. \"source = 'chartqa'\"; columns: `ocrcat sql \"DESCRIBE samples\"`"
        ) from None


# DuckDB binds these keywords, written without parentheses, to clock functions (the parser sees a
# column reference), and marks the local-time ones CONSISTENT; so they are named here.
_CLOCK = {"current_date", "current_time", "current_timestamp", "localtime", "localtimestamp",
          "current_localtime", "current_localtimestamp"}


def _check_pure(con: duckdb.DuckDBPyConnection, predicate: str, where: str) -> None:
    """Refuse a predicate whose rows can change between two reads of the same catalog: one that
    calls a function DuckDB marks VOLATILE (random(), uuid()) or CONSISTENT_WITHIN_QUERY (now()),
    reads the clock, or samples (USING SAMPLE). The plan is a pure function of (seed, rows,
    definition) (SPEC 4); such a predicate would make it change on every read.

    The calls come from DuckDB's own parse tree (`json_serialize_sql`), so strings, comments,
    casing and subqueries are seen as DuckDB sees them; their stability from `duckdb_functions()`.
    """
    sql = f"SELECT * FROM samples WHERE ({bind_json_arrows(predicate)}\n)"
    tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0])
    calls, names, samples = set(), set(), []
    _walk(tree, calls, names, samples)
    unstable = dict(con.execute(
        "SELECT function_name, max(stability) FROM duckdb_functions() "
        "WHERE function_name IN (SELECT unnest(?)) AND stability IN ('VOLATILE', 'CONSISTENT_WITHIN_QUERY') "
        "GROUP BY 1 ORDER BY 1", [sorted(calls)]).fetchall())
    clock = sorted((calls | names) & _CLOCK)
    if unstable or clock:
        name = next(iter(unstable), None) or clock[0]
        why = {"VOLATILE": "DuckDB marks volatile (a new value on every call)",
               "CONSISTENT_WITHIN_QUERY": "DuckDB marks consistent within one query only (it changes between reads)",
               }.get(unstable.get(name), "reads the clock")
        raise MixtureError(
            f"{where}: predicate {predicate!r} calls {name}(), which {why}: the plan must be the same on every "
            "read (a pure function of seed, rows and definition); filter on the rows' columns, and take a "
            "seeded fraction of them with a weight below 1 (e.g. :0.5) instead"
        )
    if samples:
        raise MixtureError(
            f"{where}: predicate {predicate!r} uses USING SAMPLE/TABLESAMPLE, whose rows differ from one read to "
            "the next: the plan must be the same on every read; take a seeded fraction with a weight below 1 "
            "(e.g. :0.5) instead"
        )


def _walk(node: object, calls: set[str], names: set[str], samples: list) -> None:
    """Collect from a `json_serialize_sql` tree: function names called, one-part column names, samples."""
    if isinstance(node, dict):
        if "function_name" in node:  # scalar, aggregate, window and table functions alike
            calls.add(node["function_name"].lower())
        if node.get("class") == "COLUMN_REF" and len(node["column_names"]) == 1:
            names.add(node["column_names"][0].lower())
        if node.get("sample"):
            samples.append(node["sample"])
        for value in node.values():
            _walk(value, calls, names, samples)
    elif isinstance(node, list):
        for value in node:
            _walk(value, calls, names, samples)


def validate(catalog: Catalog, definition: dict) -> dict[str, int]:
    """Check every predicate against the catalog; rows matched per component (text share too)."""
    rows = {}
    for comp in definition["components"]:
        where = f"mixture {definition['name']}, component {comp['name']}"
        rows[comp["name"]] = _predicate_rows(catalog.con, comp["predicate"], where)
        if rows[comp["name"]] == 0:
            raise MixtureError(f"{where}: predicate {comp['predicate']!r} matches no rows; "
                               "ingest that source first or fix the predicate")
    if definition["text_share"]:
        predicate = definition["text_predicate"] or DEFAULT_TEXT_PREDICATE
        where = f"mixture {definition['name']}, text share"
        rows[TEXT_COMPONENT] = _predicate_rows(catalog.con, predicate, where)
        if rows[TEXT_COMPONENT] == 0:
            raise MixtureError(f"{where}: no text rows match {predicate!r}; ingest smoltalk "
                               "(or set text_predicate), or use a text share of 0")
    return rows


# --- the plan in SQL -------------------------------------------------------------------------

def _components(definition: dict) -> list[tuple[str, str, float | None]]:
    """(name, predicate, weight) of every component; the text share has weight None."""
    comps = [(c["name"], bind_json_arrows(c["predicate"]), c["weight"]) for c in definition["components"]]
    if definition["text_share"]:
        comps.append((TEXT_COMPONENT, bind_json_arrows(definition["text_predicate"] or DEFAULT_TEXT_PREDICATE), None))
    return comps


def entries_sql(definition: dict, split: str | None = None) -> str:
    """A SELECT of the plan's entries (component, repeat, sample_id, key), unordered; their plan
    order is ORDER BY PLAN_ORDER (the seeded key, then the entry itself: a total order)."""
    check_split_name(split)
    seed = int(definition["seed"])
    in_split = f" AND split = {sql_string(split)}" if split else ""
    comps = _components(definition)
    matches = "\n      UNION ALL ".join(
        f"SELECT {sql_string(name)} AS component, sample_id FROM samples WHERE ({predicate}\n){in_split}"
        for name, predicate, _ in comps
    )
    weighted = ", ".join(f"({sql_string(n)}, CAST({sql_string(repr(w))} AS DOUBLE))" for n, _, w in comps if w is not None)
    # Whole weights need no draw: every row exactly w times. Fractions and the text share rank
    # their rows by a seeded key and take the first `target mod n` once more.
    copies = [
        f"SELECT component, sample_id, CAST({int(w)} AS BIGINT) AS copies FROM matches WHERE component = {sql_string(n)}"
        for n, _, w in comps if w is not None and w == int(w)
    ]
    drawn = [n for n, _, w in comps if w is not None and w != int(w)]
    if drawn:
        copies.append(_drawn_copies(seed, "weighted") + f"\n      WHERE m.component IN ({', '.join(map(sql_string, drawn))})")
    text = ""
    if definition["text_share"]:
        share = f"CAST({sql_string(repr(float(definition['text_share'])))} AS DOUBLE)"
        # T = round((s·V − V_text)/(1 − s)), not below 0, makes text rows fraction s of the whole
        # (V entries so far, V_text of them text rows the components brought). Written so that with
        # V_text = 0 it is the float expression plans were pinned with: s/(1−s)·V.
        text = f""",
    text_in_components AS (
      SELECT coalesce(sum(copies), 0) AS v,
             coalesce(sum(copies) FILTER (WHERE sample_id IN (SELECT sample_id FROM matches
                                                               WHERE component = {sql_string(TEXT_COMPONENT)})), 0) AS v_text
      FROM weighted_copies
    ),
    text_target AS (
      SELECT component, n,
             greatest(CAST(floor({share} / (1 - {share}) * v - v_text / (1 - {share}) + 0.5) AS BIGINT), 0) AS target
      FROM sizes, text_in_components WHERE component = {sql_string(TEXT_COMPONENT)}
    ),
    text_copies AS (
      {_drawn_copies(seed, "text_target")}
    )"""
    order = _sql_key(str(seed), "component", "repeat", "sample_id")
    union_copies = "\n      UNION ALL ".join(copies)
    return f"""WITH
    matches AS (
      {matches}
    ),
    sizes AS (SELECT component, count(*) AS n FROM matches GROUP BY component),
    weights(component, weight) AS (VALUES {weighted}),
    weighted AS (
      SELECT component, n, CAST(floor(weight) * n + floor((weight - floor(weight)) * n + 0.5) AS BIGINT) AS target
      FROM weights JOIN sizes USING (component)
    ),
    weighted_copies AS (
      {union_copies}
    ){text},
    copies AS (SELECT * FROM weighted_copies{" UNION ALL SELECT * FROM text_copies" if text else ""}),
    entries AS (SELECT component, sample_id, unnest(range(copies)) AS repeat FROM copies)
    SELECT component, CAST(repeat AS INTEGER) AS repeat, sample_id, {order} AS key
    FROM entries"""


def _drawn_copies(seed: int, targets: str) -> str:
    """Copies per matching row for the components in `targets` (component, n, target): every row
    target // n times, and the first target % n rows by a seeded key once more."""
    pick = _sql_key("'pick'", str(seed), "m.component", "m.sample_id")
    return f"""SELECT m.component, m.sample_id,
             t.target // t.n + CAST(row_number() OVER (PARTITION BY m.component ORDER BY {pick}, m.sample_id)
                                    <= t.target % t.n AS BIGINT) AS copies
      FROM matches m JOIN {targets} t USING (component)"""


def plan_sql(definition: dict, split: str | None = None) -> str:
    """A SELECT of the plan: (position, component, repeat, sample_id), in plan order.

    With `split`, the definition is applied to that split's rows only (weights and shares hold
    within it, positions run 0..n-1).
    """
    return f"""SELECT CAST(row_number() OVER (ORDER BY {PLAN_ORDER}) - 1 AS BIGINT) AS position,
           component, repeat, sample_id
    FROM ({entries_sql(definition, split)})"""


def check_split_name(split: str | None) -> None:
    if split is not None and split not in SPLITS:
        raise MixtureError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")


def check_split(catalog: Catalog, definition: dict, split: str | None) -> None:
    """Refuse an unknown split, or one where the text share cannot hold (no text rows there)."""
    check_split_name(split)
    if split is None or not definition["text_share"]:
        return
    predicate = bind_json_arrows(definition["text_predicate"] or DEFAULT_TEXT_PREDICATE)
    n = catalog.con.execute(f"SELECT count(*) FROM samples WHERE ({predicate}\n) AND split = ?", [split]).fetchone()[0]
    if n == 0:
        raise MixtureError(f"mixture {definition['name']} wants a {definition['text_share']:.0%} text share but "
                           f"split {split} has no rows matching {predicate!r}; use another split or ingest them")


def view_name(name: str) -> str:
    return f"mix_{check_name(name)}"


def _view_sql(definition: dict) -> str:
    return f"""CREATE OR REPLACE VIEW {view_name(definition['name'])} AS
WITH plan AS ({plan_sql(definition)})
SELECT plan.position, plan.component, plan.repeat, samples.*
FROM plan JOIN samples USING (sample_id)
ORDER BY plan.position"""


# --- storing, listing, describing ------------------------------------------------------------

def _writable(catalog: Catalog) -> None:
    if catalog.read_only:
        raise CatalogError("this needs the catalog open for writing (it is open read-only)")


def _exists(catalog: Catalog, name: str) -> bool:
    return catalog.con.execute("SELECT count(*) FROM mixtures WHERE name = ?", [name]).fetchone()[0] > 0


def _store(catalog: Catalog, definitions: list[dict], replace: bool) -> None:
    """Write definitions and their views in one commit (one snapshot): all of them or none."""
    _writable(catalog)

    def write(con):
        for d in definitions:
            if _exists(catalog, d["name"]):
                if not replace:
                    raise MixtureError(f"mixture {d['name']} exists; drop it first (ocrcat mix drop {d['name']}) "
                                       "or pass --replace")
                con.execute("DELETE FROM mixture_components WHERE mixture = ?", [d["name"]])
                con.execute("DELETE FROM mixtures WHERE name = ?", [d["name"]])
            con.execute("INSERT INTO mixtures VALUES (?, ?, ?, ?, now())",
                        [d["name"], d["seed"], d["text_share"], d["text_predicate"]])
            con.executemany("INSERT INTO mixture_components VALUES (?, ?, ?, ?, ?)",
                            [[d["name"], i, c["name"], c["predicate"], c["weight"]]
                             for i, c in enumerate(d["components"])])
            con.execute(_view_sql(d))

    names = ", ".join(d["name"] for d in definitions)
    catalog.commit(write, f"mixture {names}: {'replace' if replace else 'create'}", kind="mixture",
                   mixtures=[d["name"] for d in definitions])


def create_mixture(catalog: Catalog, name: str, components, text_share: float = 0.0, seed: int = 0,
                   text_predicate: str | None = None, replace: bool = False) -> dict:
    """Validate a mixture against the catalog, store it and (re)create its view `mix_<name>`.

    >>> create_mixture(cat, "charts", [("chartqa", "source = 'chartqa'", 1.5)], seed=7)
    """
    definition = normalise(name, components, text_share, seed, text_predicate)
    rows = validate(catalog, definition)
    _store(catalog, [definition], replace)
    _warn(catalog.con, definition, rows)
    return definition


def read_toml(path_or_preset: str | Path | None = None) -> list[dict]:
    """Definitions from a TOML file, or the packaged presets (stage1, stage2) when None.

    One table per mixture: `[stage2]` with seed, text_share, text_predicate and a
    `[stage2.components]` table of `name = { predicate = "…", weight = 2 }`.
    """
    if path_or_preset is None:
        text = resources.files("ocrcat.mix").joinpath("presets.toml").read_text()
        where = "the packaged presets"
    else:
        path = Path(path_or_preset)
        if not path.is_file():
            raise MixtureError(f"no mixture file at {path}; give a TOML file, or --preset for stage1/stage2")
        text, where = path.read_text(), str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MixtureError(f"{where} is not valid TOML: {exc}") from None
    definitions = []
    for name, table in data.items():
        if not isinstance(table, dict) or "components" not in table:
            raise MixtureError(f"{where}: [{name}] needs a components table, e.g. "
                               f"[{name}.components] chartqa = {{ predicate = \"source = 'chartqa'\", weight = 1 }}")
        unknown = set(table) - {"seed", "text_share", "text_predicate", "components"}
        if unknown:
            raise MixtureError(f"{where}: [{name}] has unknown keys {', '.join(sorted(unknown))}")
        definitions.append(normalise(name, table["components"], table.get("text_share", 0.0),
                                     table.get("seed", 0), table.get("text_predicate")))
    if not definitions:
        raise MixtureError(f"{where} defines no mixtures")
    return definitions


def load_toml(catalog: Catalog, path_or_preset: str | Path | None = None, names: list[str] | None = None) -> list[dict]:
    """Load (replacing same-named ones) the mixtures of a TOML file, or the presets when None.

    Every definition is checked before any is written, so a bad file changes nothing.
    """
    definitions = read_toml(path_or_preset)
    if names:
        missing = set(names) - {d["name"] for d in definitions}
        if missing:
            raise MixtureError(f"no mixture {', '.join(sorted(missing))} in the file; it has "
                               + ", ".join(d["name"] for d in definitions))
        definitions = [d for d in definitions if d["name"] in names]
    rows = [validate(catalog, d) for d in definitions]
    _store(catalog, definitions, replace=True)
    for d, r in zip(definitions, rows):
        _warn(catalog.con, d, r)
    return definitions


def drop_mixture(catalog: Catalog, name: str) -> None:
    """Remove a mixture's definition and its view."""
    _writable(catalog)
    get_mixture(catalog, name)

    def drop(con):
        con.execute(f"DROP VIEW IF EXISTS {view_name(name)}")
        con.execute("DELETE FROM mixture_components WHERE mixture = ?", [name])
        con.execute("DELETE FROM mixtures WHERE name = ?", [name])

    catalog.commit(drop, f"mixture {name}: drop", kind="mixture", mixtures=[name])


def get_mixture(catalog: Catalog, name: str) -> dict:
    """A stored definition as a plain dict (the shape `normalise` returns)."""
    row = catalog.con.execute("SELECT seed, text_share, text_predicate FROM mixtures WHERE name = ?",
                              [name]).fetchone()
    if row is None:
        known = [n for (n,) in catalog.con.execute("SELECT name FROM mixtures ORDER BY name").fetchall()]
        raise MixtureError(f"no mixture {name!r} in {catalog.dir}; "
                           + (f"known: {', '.join(known)}" if known else "create one with `ocrcat mix load --preset`"))
    comps = catalog.con.execute(
        "SELECT name, predicate, weight FROM mixture_components WHERE mixture = ? ORDER BY position", [name]
    ).fetchall()
    return {"name": name, "seed": row[0], "text_share": row[1], "text_predicate": row[2],
            "components": [{"name": n, "predicate": p, "weight": w} for n, p, w in comps]}


def list_mixtures(catalog: Catalog) -> list[dict]:
    """Every stored mixture: name, seed, text share, component count and view name."""
    rows = catalog.con.execute(
        """SELECT m.name, m.seed, m.text_share, count(c.name), m.created_at
           FROM mixtures m LEFT JOIN mixture_components c ON c.mixture = m.name
           GROUP BY ALL ORDER BY m.name"""
    ).fetchall()
    return [{"name": n, "seed": s, "text_share": t, "components": k, "view": view_name(n),
             "created_at": str(c)} for n, s, t, k, c in rows]


def promised_counts(definition: dict, rows: dict[str, int], text_in_components: int = 0) -> dict[str, int]:
    """Plan entries each component should get, given its matching rows (Python twin of the SQL).

    `text_in_components`: how many of the components' entries are text rows themselves (which rows
    a fractional weight takes is the plan's seeded draw, so this count comes from the plan).
    """
    counts = {}
    for name, _, weight in _components(definition):
        if weight is not None:
            n = rows.get(name, 0)
            counts[name] = int(math.floor(weight) * n + math.floor((weight - math.floor(weight)) * n + 0.5))
    if definition["text_share"]:
        share = float(definition["text_share"])
        v = sum(counts.values())
        counts[TEXT_COMPONENT] = max(int(math.floor(share / (1 - share) * v - text_in_components / (1 - share) + 0.5)), 0)
    return counts


def _plan_counts(con: duckdb.DuckDBPyConnection, definition: dict, split: str | None) -> dict[str, tuple[int, int]]:
    """Per component: its entries in the plan, and how many of them are text rows (rows the text
    predicate matches), counted from the plan itself."""
    predicate = bind_json_arrows(definition["text_predicate"] or DEFAULT_TEXT_PREDICATE)
    counts = con.execute(
        f"""SELECT component, count(*),
                   count(*) FILTER (WHERE sample_id IN (SELECT sample_id FROM samples WHERE ({predicate}\n)))
            FROM ({entries_sql(definition, split)}) GROUP BY 1""").fetchall()
    return {name: (entries, text) for name, entries, text in counts}


def _text_from_components(counts: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """(entries of the weighted components, how many of them are text rows)."""
    weighted = [c for name, c in counts.items() if name != TEXT_COMPONENT]
    return sum(e for e, _ in weighted), sum(t for _, t in weighted)


def plan_warnings(definition: dict, rows: dict[str, int], counts: dict[str, tuple[int, int]]) -> list[str]:
    """What a valid definition gives that its user probably did not mean: a component whose weight
    rounds to no positions at all; components that alone bring more text rows than the text share
    (none are then drawn for it, and text is more than that share). `counts`: `_plan_counts`."""
    promised = promised_counts(definition, rows)
    out = []
    for c in definition["components"]:
        n = rows[c["name"]]
        if n and not promised[c["name"]]:
            out.append(f"component {c['name']} of {definition['name']} gets no positions now: weight {c['weight']:g} × "
                       f"{n} matching rows is less than half a row; give it a weight of at least {1 / n:.3g} "
                       "(one row) or drop it")
    share = float(definition["text_share"])
    v, v_text = _text_from_components(counts)
    if share and v_text > share * v:
        names = ", ".join(n for n, (_, t) in counts.items() if t and n != TEXT_COMPONENT)
        predicate = definition["text_predicate"] or DEFAULT_TEXT_PREDICATE
        out.append(f"component(s) {names} of {definition['name']} alone bring {v_text} text rows ({predicate}), "
                   f"{v_text / v:.2%} of their positions, more than the text share of {share:.2%}: none are drawn for "
                   f"the share; narrow those predicates (e.g. AND NOT ({predicate})) or lower their weights")
    return out


def _warn(con: duckdb.DuckDBPyConnection, definition: dict, rows: dict[str, int]) -> None:
    counts = _plan_counts(con, definition, None) if definition["text_share"] else {}
    for message in plan_warnings(definition, rows, counts):
        warnings.warn(message, MixtureWarning, stacklevel=3)


def describe_mixture(catalog: Catalog, name: str, split: str | None = None) -> dict:
    """A mixture's definition with, per component: rows matched, plan entries promised by the
    weights and realised by the plan (and how many of them are text rows), and intended against
    realised share of the plan; and `plan_warnings`.

    Realised shares are counted in the plan: a component's entries, and for the text share every
    position holding a text row, whichever component brought it. Intended shares: s for the text
    rows; for the others w·n / N, N = the plan's size had the draw hit the share exactly
    (Σ w·n less the components' own text rows, over 1 − s; Σ w·n where those exceed the share).
    """
    definition = get_mixture(catalog, name)
    con = catalog.con
    comps = _components(definition)
    in_split = f" AND split = {sql_string(split)}" if split else ""
    counts = _plan_counts(con, definition, split)  # checks the split
    rows = {n: con.execute(f"SELECT count(*) FROM samples WHERE ({p}\n){in_split}").fetchone()[0] for n, p, _ in comps}
    _, text_in_components = _text_from_components(counts)
    promised = promised_counts(definition, rows, text_in_components)
    total = sum(e for e, _ in counts.values())
    share = float(definition["text_share"])
    mass = sum(w * rows[n] for n, _, w in comps if w is not None)
    size = max(mass, (mass - text_in_components) / (1 - share))
    out = []
    for n, p, w in comps:
        entries, text = counts.get(n, (0, 0))
        intended = share if w is None else (w * rows[n] / size if size else 0.0)
        realised = sum(t for _, t in counts.values()) if w is None else entries
        out.append({
            "name": n, "predicate": p, "weight": w, "rows": rows[n],
            "promised": promised[n], "realised": entries, "text_rows": text,
            "intended_share": intended, "realised_share": realised / total if total else 0.0,
        })
    return definition | {"view": view_name(name), "split": split, "total": total, "components": out,
                         "warnings": plan_warnings(definition, rows, counts)}
