"""The `ocrcat` command line: a thin layer over the library, one function per command."""

from __future__ import annotations

import csv
import datetime
import decimal
import faulthandler
import json
import math
import re
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Optional

import duckdb
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from ocrcat import vision
from ocrcat.catalog import Catalog, CatalogError
from ocrcat.catalog.store import interrupted
from ocrcat.inspection.stats import catalog_stats
from ocrcat.ingest import mirror, registry
from ocrcat.ingest.base import MirrorError
from ocrcat.ingest.limits import Limits
from ocrcat.ingest.runner import IngestFailed, RunSummary, check_request, ingest as run_ingest

app = typer.Typer(
    help="ocrcat: OCR training data as one catalog (a DuckLake lake queried with DuckDB), SQL mixtures "
    "and a torch loader.\n\n"
    "Quick start (no network): ocrcat sample-mirror demo/mirror && "
    "ocrcat ingest all --mirror demo/mirror && ocrcat stats",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@app.callback()
def _every_command() -> None:
    # A crash inside a native library (DuckDB, its extensions, PIL) prints the Python stack that
    # led to it, so a report says which step died; the command's own guarantees do not change.
    try:
        faulthandler.enable()
    except (AttributeError, ValueError):  # stderr is no real file (captured, as in CliRunner)
        pass


# Values from the data are printed as they are: no Rich markup (`[/]`, `\sqrt[n]{x}`), no emoji
# codes (`:x:`); styled words are Text objects built in code (error, warning).
console = Console(markup=False, emoji=False, highlight=False)
err = Console(stderr=True, soft_wrap=True, markup=False, emoji=False, highlight=False)

CatalogOpt = Annotated[
    Optional[Path],
    typer.Option("--catalog", "-c", envvar="OCRCAT_HOME", help="catalog directory [default: ./ocrcat-data]"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can cause into a one-line message and exit status 2, and Ctrl-C (or
    `kill`) into "interrupted" and 130 (143), also when DuckDB caught it in the middle of a query."""
    try:
        yield
    except BaseException as exc:
        if interrupted(exc):
            err.print(Text.assemble(("interrupted", "yellow")))
            raise typer.Exit(_interrupt_status()) from None
        if isinstance(exc, (CatalogError, MirrorError, ValueError, ConnectionError, duckdb.Error)):
            error(str(exc))
            raise typer.Exit(2) from None
        if isinstance(exc, OSError) and exc.strerror:  # a path that is a folder, a read-only disk, …
            error(f"{exc.strerror}" + (f": {exc.filename}" if exc.filename else "")
                  + (f" -> {exc.filename2}" if exc.filename2 else "")
                  + "; check that path (a file where a folder is expected, or the other way round; "
                  "permissions; free space) and rerun")
            raise typer.Exit(2) from None
        raise


# C0 controls but the newline, DEL, C1 controls and the bidi overrides, which reorder what follows.
_HIDDEN = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def visible(value: str) -> str:
    """`value` with control characters shown: C0 as their Unicode pictures (TAB as ␉, ESC as ␛),
    the others as <U+XXXX>. Newlines stay line breaks. Backslashes stay as they are (LaTeX)."""
    def show(m: re.Match) -> str:
        c = ord(m.group())
        return chr(0x2400 + c) if c < 0x20 else "\u2421" if c == 0x7F else f"<U+{c:04X}>"

    return _HIDDEN.sub(show, value)


def error(message: str) -> None:
    err.print(Text.assemble(("error:", "bold red"), " ", visible(message)))


def warning(message: str) -> None:
    err.print(Text.assemble(("warning:", "yellow"), " ", visible(message)))


def _json_default(value):
    if isinstance(value, (datetime.date, datetime.datetime, datetime.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return _finite(float(value))
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    return str(value)


def _finite(value):
    """`value` with NaN and infinities as None: JSON (RFC 8259) has no spelling for them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def print_json(value) -> None:
    sys.stdout.write(json.dumps(_finite(value), default=_json_default, ensure_ascii=False, indent=2,
                                allow_nan=False) + "\n")


def _csv_cell(value):
    """A CSV field: lists, structs and maps as JSON, bytes as hex (as --json writes them)."""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(_finite(value), default=_json_default, ensure_ascii=False)
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    return value


def print_table(columns: list[str], rows: list[tuple], title: str | None = None) -> None:
    table = Table(title=None if title is None else visible(title))
    for column in columns:
        table.add_column(visible(str(column)), overflow="fold")
    for row in rows:
        table.add_row(*("NULL" if v is None else visible(str(v)) for v in row))
    console.print(table)


@app.command()
def init(
    catalog: CatalogOpt = None,
    vision_mode: Annotated[str, typer.Option(help=f"one of {', '.join(vision.MODES)}")] = vision.DEFAULT_MODE,
) -> None:
    """Create an empty catalog with a vision mode (what image_tokens counts).

    Example: ocrcat init --catalog data/ocr --vision-mode gundam-max9
    """
    with user_errors(), Catalog(catalog, vision_mode=vision_mode) as cat:
        console.print(f"catalog {cat.dir} (vision mode {cat.vision_mode})")


@app.command()
def sources(catalog: CatalogOpt = None, as_json: JsonOpt = False) -> None:
    """List the sources: hub repo, files read, splits, licence, options and rows in the catalog.

    Example: ocrcat sources --json
    """
    counts: dict[str, int] = {}
    with user_errors():
        try:
            with Catalog(catalog, read_only=True) as cat:
                counts = dict(cat.con.execute("SELECT source, count(*) FROM samples GROUP BY 1").fetchall())
        except CatalogError as exc:
            if "no catalog" not in str(exc):
                raise
    rows = []
    for name in registry.available():
        source = registry.get(name)
        info = source.INFO
        options = {key: {"default": o.default, "help": o.help} for key, o in getattr(source, "OPTIONS", {}).items()}
        rows.append({"source": name, "hub_repo": info.hub_repo, "files": list(info.files),
                     "splits": list(info.splits), "licence": info.licence, "one_row_is": info.one_row_is,
                     "options": options, "rows_in_catalog": counts.get(name, 0)})
    if as_json:
        print_json(rows)
    else:
        print_table(["source", "hub repo", "files", "splits", "licence", "options (-o KEY=VALUE)", "rows"],
                    [(r["source"], r["hub_repo"], " ".join(r["files"]), ",".join(r["splits"]), r["licence"],
                      " ".join(f"{k}={o['default']}" for k, o in r["options"].items()), r["rows_in_catalog"])
                     for r in rows])


@app.command()
def fetch(
    names: Annotated[list[str], typer.Argument(metavar="SOURCE...", help="source names, or all")],
    mirror_root: Annotated[Optional[Path], typer.Option("--mirror", help="mirror root [default: <catalog>/mirror]")] = None,
    catalog: CatalogOpt = None,
) -> None:
    """Download the hub files each source's ingester reads (and only those) into the mirror.

    Example: ocrcat fetch chartqa mathwriting --mirror /data/hf-mirror
    """
    from ocrcat.catalog import resolve_dir

    root = mirror_root or resolve_dir(catalog) / "mirror"
    with user_errors():
        for path in mirror.fetch(root, names):
            console.print(f"fetched {path}")


@app.command("sample-mirror")
def sample_mirror(
    root: Annotated[Path, typer.Argument(help="mirror root to write into")],
    sources_: Annotated[str, typer.Option("--sources", help="comma-separated sources [default: all]")] = "all",
    rows: Annotated[int, typer.Option(help="records per source (roughly; split across its splits)")] = 40,
    seed: Annotated[int, typer.Option(help="seed of the synthetic content")] = 0,
) -> None:
    """Write small synthetic mirrors in the hub's own layout and encoding (no network needed).

    Example: ocrcat sample-mirror demo/mirror --sources chartqa,mathwriting --rows 100
    """
    with user_errors():
        names = mirror.write_sample_mirror(root, [s.strip() for s in sources_.split(",") if s.strip()], rows, seed)
    console.print(f"wrote sample mirrors of {', '.join(names)} under {root}")


class RichProgress:
    """The runner's progress reports as a rich progress bar: records, rows, errors, images/s."""

    def start(self, source: str, split: str, total: int, done: int) -> None:
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rows {task.fields[rows]}  errors {task.fields[errors]}  {task.fields[rate]} img/s"),
            TimeElapsedColumn(),
            console=err,
        )
        self.bar.start()
        self.started, self.images = time.perf_counter(), 0
        self.task = self.bar.add_task(f"{source}/{split}", total=total, completed=done, rows=0, errors=0, rate="-")

    def advance(self, records: int, rows: int, errors: int, images: int) -> None:
        self.images += images
        task = self.bar.tasks[-1]
        rate = self.images / max(1e-9, time.perf_counter() - self.started)
        self.bar.update(self.task, advance=records, rows=task.fields["rows"] + rows,
                        errors=task.fields["errors"] + errors, rate=f"{rate:.0f}")

    def finish(self) -> None:
        self.bar.stop()


@app.command()
def ingest(
    names: Annotated[list[str], typer.Argument(metavar="SOURCE...", help="source names, or all")],
    mirror_root_opt: Annotated[Optional[Path], typer.Option("--mirror", "--from", help="mirror root [default: <catalog>/mirror]")] = None,
    split: Annotated[Optional[list[str]], typer.Option(help="only this split (train, val, test); repeatable")] = None,
    limit: Annotated[Optional[int], typer.Option(help="at most N records per split")] = None,
    workers: Annotated[int, typer.Option(help="parallel worker processes")] = 1,
    ray: Annotated[Optional[str], typer.Option(metavar="ADDRESS", help="run the shards as tasks on a Ray cluster: HOST:PORT, auto ($RAY_ADDRESS or the cluster on this machine) or local (start one for this command)")] = None,
    config: Annotated[Optional[str], typer.Option(help="hub config, for sources that have several")] = None,
    option: Annotated[Optional[list[str]], typer.Option("--option", "-o", help="source option KEY=VALUE; repeatable")] = None,
    max_error_rate: Annotated[Optional[float], typer.Option(help="fail a split (old rows kept, exit 1) if more than this fraction of its records are rejected")] = None,
    vision_mode: Annotated[Optional[str], typer.Option(help="vision mode of a new catalog [default: gundam]")] = None,
    max_image_mpx: Annotated[float, typer.Option(help="cap on an image's pixels (millions), from its header")] = Limits.max_image_pixels / 1e6,
    max_member_mb: Annotated[float, typer.Option(help="cap on one archive member (MiB)")] = Limits.max_member_bytes / 2**20,
    max_json_depth: Annotated[int, typer.Option(help="cap on JSON nesting depth")] = Limits.max_json_depth,
    catalog: CatalogOpt = None,
) -> None:
    """Ingest sources from a mirror into the catalog. Rerun after an interruption to resume.

    Re-ingesting a source and split replaces its rows when the run completes. Bad records go to
    ingest_errors; a fault (I/O error, full disk, corrupt file) fails the run with exit 1.
    Each source's options (-o KEY=VALUE) and their defaults: ocrcat sources --json.

    Example: ocrcat ingest chartqa mathwriting --mirror demo/mirror --workers 2 --max-error-rate 0.01

    On a Ray cluster (every node sees the mirror and the catalog's image store at the same place):
    ocrcat ingest docbank --mirror /shared/hf --ray auto
    """
    from ocrcat.catalog import resolve_dir

    summaries: list[RunSummary] = []
    failure = None
    with user_errors():
        # Everything the user can get wrong is checked before the catalog is opened (or created).
        if max_error_rate is not None and not 0 <= max_error_rate <= 1:
            raise ValueError(f"--max-error-rate must be between 0 and 1 (got {max_error_rate})")
        if min(max_image_mpx, max_member_mb, max_json_depth) <= 0:
            raise ValueError("--max-image-mpx, --max-member-mb and --max-json-depth must be positive")
        limits = Limits(max_member_bytes=int(max_member_mb * 2**20), max_image_pixels=int(max_image_mpx * 1e6),
                        max_json_depth=max_json_depth)
        plans = []
        for name in registry.expand(names):
            pairs = list(option or []) + ([f"config={config}"] if config else [])
            plans.append((name, registry.parse_options(registry.get(name), pairs)))
            check_request(resolve_dir(catalog), name, mirror_root_opt, split, limit)
        if ray:
            from ocrcat.ingest.ray_pool import connect

            connect(ray)  # an unreachable cluster is said before the catalog is created
        with _sigterm_as_interrupt(), Catalog(catalog, vision_mode=vision_mode) as cat:
            for name, options in plans:
                try:
                    summaries += run_ingest(cat, name, mirror=mirror_root_opt, splits=split, limit=limit,
                                            workers=workers, options=options, progress=RichProgress(),
                                            max_error_rate=max_error_rate, limits=limits, ray=ray)
                except IngestFailed as exc:
                    failure = exc
                    break
                except BaseException as exc:
                    if not interrupted(exc):
                        raise
                    err.print(Text.assemble(("interrupted", "yellow"), ": rerun the same command to resume where it stopped"))
                    raise typer.Exit(_interrupt_status()) from None
    if summaries:
        print_table(
            ["source", "split", "rows", "errors", "skipped", "resumed shards", "seconds", "images/s"],
            [(s.source, s.split, s.rows, s.errors, s.skipped, f"{s.shards_resumed}/{s.shards_total}",
              f"{s.seconds:.1f}", f"{s.images / max(s.seconds, 1e-9):.0f}") for s in summaries],
            title="ingest",
        )
    for s in summaries:
        if s.warning:
            warning(s.warning)
    errors = sum(s.errors for s in summaries)
    if errors:
        console.print(f"{errors} records rejected: see them with "
                      "ocrcat sql \"SELECT * FROM ingest_errors ORDER BY run_id DESC LIMIT 20\"")
    if failure is not None:
        err.print(Text.assemble(("ingest failed:", "bold red"), " ", visible(str(failure))))
        raise typer.Exit(1)


_terminated = False  # set when SIGTERM (`kill PID`) stopped the command, rather than Ctrl-C


def _interrupt_status() -> int:
    return 143 if _terminated else 130


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """`kill PID` stops an ingest like Ctrl-C: workers killed, the run marked interrupted."""
    import signal

    def interrupt(signum, frame):
        global _terminated
        _terminated = True  # DuckDB may turn the KeyboardInterrupt into its own error: remember which
        raise KeyboardInterrupt("SIGTERM")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="SQL to run against the catalog")],
    write: Annotated[bool, typer.Option("--write", help="run any statement: change the catalog, write files")] = False,
    allow: Annotated[Optional[list[str]], typer.Option("--allow", metavar="PATH", help="a file or folder outside "
                                                       "the catalog the query may read; repeatable")] = None,
    as_json: JsonOpt = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="print CSV instead of a table")] = False,
    catalog: CatalogOpt = None,
) -> None:
    """Run SQL against the catalog. Without --write it cannot change anything anywhere.

    Without --write: one query (SELECT, FROM, WITH, VALUES, DESCRIBE, SHOW, SUMMARIZE); the
    catalog opened read-only; no file read except the catalog and the paths given with --allow;
    no file written (COPY TO, EXPORT), no ATTACH, INSTALL, LOAD or SET. Anything else is refused
    with exit status 2 before it runs. With --write any statements run, with your rights; of
    several, only the last may be a query (only its result is printed).

    Example: ocrcat sql "SELECT count(*) FROM 'exports/stage2/*.parquet'" --allow exports/stage2
    """
    from ocrcat.inspection.query import read_only_query, write_query

    with user_errors():
        if write:
            if allow:
                raise ValueError("--allow is for queries without --write (with --write every file is reachable)")
            answer = write_query(catalog, query)
        else:
            answer = read_only_query(catalog, query, allow or [])
    columns, rows = answer.columns, answer.rows
    if as_json:
        print_json([dict(zip(columns, r)) for r in rows])
    elif as_csv:
        out = csv.writer(sys.stdout, lineterminator="\n")  # Unix tools expect \n (RFC 4180 allows it)
        out.writerow(columns)
        out.writerows([_csv_cell(v) for v in row] for row in rows)
    elif columns:
        print_table(columns, rows)


@app.command()
def stats(
    catalog: CatalogOpt = None,
    as_json: JsonOpt = False,
    source: Annotated[Optional[list[str]], typer.Option(help="only this source in the quantiles; repeatable")] = None,
    tokenizer: Annotated[Optional[str], typer.Option(help="also count text tokens: 'byte', a nanochat "
                                                     "tokenizer dir or a tokenizer.json")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="write one PNG of histograms per source into DIR")] = None,
) -> None:
    """Rows per source/split/kind, image facts, errors, and per source and split the quantiles of
    image size, image tokens and text length (and text tokens with --tokenizer).

    Example: ocrcat stats --tokenizer byte --plot stats-png/ --json
    """
    from ocrcat.inspection.plots import write_plots
    from ocrcat.inspection.stats import MEASURES, TOKEN_MEASURES, source_stats

    with user_errors(), Catalog(catalog, read_only=True) as cat:
        tok = _load_tokenizer(tokenizer)
        result = catalog_stats(cat)
        result["per_split"] = source_stats(cat, source, tok)
        plots = write_plots(cat, plot, source) if plot else []
    if as_json:
        print_json(result | {"plots": [str(p) for p in plots]})
        return
    groups = result["groups"]
    print_table(
        ["source", "split", "kind", "rows", "unique images", "image MB", "tokens p50", "tokens p95", "errors"],
        [(g["source"], g["split"], g["kind"], g["rows"], g["unique_images"],
          f"{g['image_bytes_referenced'] / 1e6:.1f}", g["image_tokens_median"], g["image_tokens_p95"], g["errors"])
         for g in groups],
        title=f"{result['catalog']} ({result['vision_mode']})",
    )
    console.print(
        f"{result['rows']} rows, {result['unique_images']} unique images ({result['image_bytes'] / 1e6:.1f} MB), "
        f"image tokens median {result['image_tokens_median']} p95 {result['image_tokens_p95']}, "
        f"{result['errors']} ingest errors"
    )
    measures = list(MEASURES) + (list(TOKEN_MEASURES) if tok else [])
    shown = ["p50", "p90", "max"]
    print_table(
        ["source", "split", *measures] + (["total tokens"] if tok else []),
        [(g["source"], g["split"], *(" / ".join(str(g[m][q]) for q in shown) if g[m] else "-" for m in measures),
          *([g["total_tokens"]] if tok else [])) for g in result["per_split"]],
        title=f"quantiles per source and split ({' / '.join(shown)})",
    )
    for path in plots:
        console.print(f"wrote {path}")


def _load_tokenizer(spec: str | None):
    """The tokenizer for --tokenizer, or None; a bad spec becomes a user error."""
    if spec is None:
        return None
    from ocrcat.mix import load_tokenizer

    try:
        return load_tokenizer(spec)
    except FileNotFoundError as exc:
        raise ValueError(str(exc)) from None


@app.command()
def validate(
    catalog: CatalogOpt = None,
    as_json: JsonOpt = False,
    source: Annotated[Optional[list[str]], typer.Option(help="only this source; repeatable (skips mixture checks)")] = None,
    deep: Annotated[bool, typer.Option("--deep", help="also read and decode every image: hash, decoding, size")] = False,
) -> None:
    """Check the catalog against the data plan's checklist; exit status 1 when any check fails.

    Per source: <image> prefix, image facts, image files inside the catalog, image_tokens by the
    vision rule, sample ids, conversations of text rows; per mixture: rows and realised shares.

    Example: ocrcat validate --deep --source chartqa
    """
    from ocrcat.inspection.validate import CHECKS, validate as run_validate

    with user_errors(), Catalog(catalog, read_only=True) as cat:
        results = run_validate(cat, source, deep=deep)
    failed = [r for r in results if not r.ok]
    if as_json:
        print_json({"ok": not failed, "deep": deep, "checks": [r.as_dict() for r in results]})
    else:
        print_table(["source", "check", "checked", "failed", "result", "examples (sample ids)", "first reason"],
                    [(r.source, r.check, r.checked, r.failed, "pass" if r.ok else "FAIL",
                      " ".join(map(str, r.examples)), r.note) for r in results],
                    title=f"validate {'--deep ' if deep else ''}{cat.dir}")
        if failed:
            for name in sorted({r.check for r in failed}):
                console.print(f"{name}: {CHECKS[name]}")
        if not results:
            console.print(f"nothing to check: {cat.dir} holds no rows and no mixtures (ingest something first)")
        else:
            console.print(f"{len(failed)} of {len(results)} checks failed" if failed else
                          f"all {len(results)} checks passed" + ("" if deep else " (add --deep to decode every image)"))
    if failed:
        raise typer.Exit(1)


@app.command()
def report(
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write")] = Path("report.html"),
    seed: Annotated[int, typer.Option(help="which random samples the gallery shows")] = 0,
    per_source: Annotated[int, typer.Option(help="gallery samples per source")] = 6,
    tokenizer: Annotated[Optional[str], typer.Option(help="also count text tokens ('byte', a dir, a tokenizer.json)")] = None,
    catalog: CatalogOpt = None,
) -> None:
    """Write one self-contained HTML report: overview, validation, statistics and charts, mixtures,
    and a gallery of random samples per source (images embedded; opens without a network).

    Example: ocrcat report --out report.html --seed 3 --per-source 8
    """
    from ocrcat.inspection.report import build_report

    if per_source < 0:
        error("--per-source must be 0 or more")
        raise typer.Exit(2)
    with user_errors(), Catalog(catalog, read_only=True) as cat:
        path = build_report(cat, out, seed=seed, per_source=per_source, tokenizer=_load_tokenizer(tokenizer))
    console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


@app.command()
def show(
    sample: Annotated[str, typer.Argument(metavar="SAMPLE_ID", help="a sample_id from the catalog")],
    open_: Annotated[bool, typer.Option("--open", help="write the image and a text file into --to for a look")] = False,
    to: Annotated[Path, typer.Option(help="folder for --open")] = Path("ocrcat-show"),
    tokenizer: Annotated[Optional[str], typer.Option(help="also count text tokens ('byte', a dir, a tokenizer.json)")] = None,
    as_json: JsonOpt = False,
    catalog: CatalogOpt = None,
) -> None:
    """One sample: its row, its image facts (file, grid, tokens by the vision rule) and token counts.

    Example: ocrcat show 4186833955207072339 --open --to /tmp/look
    """
    from ocrcat.inspection.show import parse_sample_id, sample_facts, write_quick_look

    with user_errors(), Catalog(catalog, read_only=True) as cat:
        facts = sample_facts(cat, parse_sample_id(sample), _load_tokenizer(tokenizer))
    written = write_quick_look(facts, to) if open_ else []
    if as_json:
        print_json(facts | {"written": [str(p) for p in written]})
    else:
        table = Table(show_header=False, title=f"sample {facts['sample_id']}")
        table.add_column("field", style="bold")
        table.add_column("value", overflow="fold")
        for key, value in facts.items():
            if key not in ("sample_id",):
                shown = json.dumps(value, ensure_ascii=False, default=_json_default) if isinstance(value, (dict, list)) else value
                table.add_row(key, "NULL" if shown is None else visible(str(shown)))
        console.print(table)
        for path in written:
            console.print(f"wrote {path}")
    image = facts.get("image")
    if image and image["problem"]:
        warning(f"{image['problem']} (run ocrcat validate)")


mix_app = typer.Typer(
    help="Mixtures: weighted SQL predicates over samples, planned with a seed; each one is the view mix_<name>.\n\n"
    "Example: ocrcat mix load --preset && ocrcat mix show stage2",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(mix_app, name="mix")


@contextmanager
def mixture_warnings() -> Iterator[None]:
    """Print the warnings a mixture call raises (a component that gets no positions, …) on stderr,
    one line each, as the CLI's other warnings, instead of Python's file:line form."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        warning(str(w.message))


def _parse_component(spec: str) -> dict:
    """NAME=PREDICATE:WEIGHT; the weight follows the last colon, and is 1 when that is no number."""
    name, eq, rest = spec.partition("=")
    if not eq or not rest.strip():
        raise ValueError(f"--component {spec!r} is not NAME=PREDICATE:WEIGHT, "
                         "e.g. --component \"charts=source = 'chartqa':1.5\"")
    predicate, colon, weight = rest.rpartition(":")
    if colon:
        try:
            return {"name": name.strip(), "predicate": predicate, "weight": float(weight)}
        except ValueError:
            pass  # that colon belongs to the predicate (a :: cast)
    return {"name": name.strip(), "predicate": rest, "weight": 1.0}


@mix_app.command("list")
def mix_list(catalog: CatalogOpt = None, as_json: JsonOpt = False) -> None:
    """List the mixtures stored in the catalog.

    Example: ocrcat mix list --json
    """
    from ocrcat.mix.mixtures import list_mixtures

    with user_errors(), Catalog(catalog, read_only=True) as cat:
        rows = list_mixtures(cat)
    if as_json:
        print_json(rows)
    else:
        print_table(["name", "seed", "text share", "components", "view"],
                    [(r["name"], r["seed"], f"{r['text_share']:.0%}", r["components"], r["view"]) for r in rows])


@mix_app.command("show")
def mix_show(
    name: Annotated[str, typer.Argument(help="mixture name")],
    split: Annotated[Optional[str], typer.Option(help="apply the definition to this split only")] = None,
    catalog: CatalogOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Components, rows per component before and after weighting, realised against intended shares.

    Example: ocrcat mix show stage2 --split train
    """
    from ocrcat.mix.mixtures import describe_mixture

    with user_errors(), Catalog(catalog, read_only=True) as cat:
        d = describe_mixture(cat, name, split)
    if as_json:
        print_json(d)
        return
    print_table(
        ["component", "weight", "rows", "promised", "in plan", "intended", "realised"],
        [(c["name"], "text share" if c["weight"] is None else f"{c['weight']:g}", c["rows"], c["promised"],
          c["realised"], f"{c['intended_share']:.2%}", f"{c['realised_share']:.2%}") for c in d["components"]],
        title=f"{name}{f' ({split})' if split else ''}: seed {d['seed']}, text share {d['text_share']:.0%}",
    )
    width = max(len(c["name"]) for c in d["components"])
    for c in d["components"]:  # predicates below the table: long SQL would squeeze the numbers
        console.print(f"  {c['name']:{width}}  {visible(c['predicate'])}")
    console.print(f"{d['total']} plan positions; query them as the view {d['view']}")
    for message in d["warnings"]:
        warning(message)


@mix_app.command("create")
def mix_create(
    name: Annotated[str, typer.Argument(help="mixture name (lowercase letters, digits, _)")],
    component: Annotated[list[str], typer.Option("--component", "-C", metavar="NAME=PREDICATE:WEIGHT",
                                                 help="a SQL predicate over samples with a weight; repeatable")],
    text_share: Annotated[float, typer.Option(help="fraction of the plan drawn from text rows")] = 0.0,
    text_predicate: Annotated[Optional[str], typer.Option(help="which rows the text share draws [default: kind = 'text']")] = None,
    seed: Annotated[int, typer.Option(help="seed of the draws and the order")] = 0,
    replace: Annotated[bool, typer.Option("--replace", help="replace a mixture of the same name")] = False,
    catalog: CatalogOpt = None,
) -> None:
    """Define a mixture; every predicate is checked (valid SQL, known columns, some rows) before anything is written.

    Example: ocrcat mix create charts -C "human=source = 'chartqa' AND meta->>'origin' = 'human':2" -C "plots=source = 'plotqa':0.5" --text-share 0.1 --seed 7
    """
    from ocrcat.mix.mixtures import create_mixture

    with user_errors(), Catalog(catalog, create=False) as cat, mixture_warnings():
        create_mixture(cat, name, [_parse_component(c) for c in component], text_share, seed, text_predicate, replace)
    console.print(f"created mixture {name}: ocrcat mix show {name}, or SELECT … FROM mix_{name}")


@mix_app.command("load")
def mix_load(
    file: Annotated[Optional[Path], typer.Argument(help="TOML file of mixture definitions")] = None,
    preset: Annotated[bool, typer.Option("--preset", help="load the data plan's presets stage1 and stage2")] = False,
    only: Annotated[Optional[list[str]], typer.Option("--only", help="load only this mixture of the file; repeatable")] = None,
    catalog: CatalogOpt = None,
) -> None:
    """Load mixtures from a TOML file (or the packaged presets), replacing those of the same name.

    All definitions are checked before any is written. Example: ocrcat mix load --preset
    """
    from ocrcat.mix.mixtures import load_toml

    if (file is None) == (not preset):
        error("give a TOML file or --preset (not both)")
        raise typer.Exit(2)
    with user_errors(), Catalog(catalog, create=False) as cat, mixture_warnings():
        loaded = load_toml(cat, file, only)
    console.print(f"loaded {', '.join(d['name'] for d in loaded)}")


@mix_app.command("drop")
def mix_drop(name: Annotated[str, typer.Argument(help="mixture name")], catalog: CatalogOpt = None) -> None:
    """Remove a mixture's definition and its view (samples are untouched).

    Example: ocrcat mix drop charts
    """
    from ocrcat.mix.mixtures import drop_mixture

    with user_errors(), Catalog(catalog, create=False) as cat:
        drop_mixture(cat, name)
    console.print(f"dropped mixture {name}")


@app.command("export")
def export(
    name: Annotated[str, typer.Argument(help="mixture name")],
    out: Annotated[str, typer.Option("--out", "-o", help="output folder (with --embed-images also s3://bucket/prefix)")],
    format: Annotated[str, typer.Option("--format", help="parquet or jsonl")] = "parquet",
    split: Annotated[Optional[str], typer.Option(help="apply the mixture to this split only (train, val, test)")] = None,
    relative_paths: Annotated[bool, typer.Option("--relative-paths", help="image paths relative to the catalog folder")] = False,
    at: Annotated[Optional[int], typer.Option("--at", metavar="SNAPSHOT",
                                              help="export the catalog as it was at this snapshot (ocrcat history)")] = None,
    require_images: Annotated[bool, typer.Option("--require-images", help="refuse a plan whose image files are missing (default: warn)")] = False,
    embed_images: Annotated[bool, typer.Option("--embed-images", help="put the image bytes in the rows (hub Image encoding), in shards for streaming")] = False,
    shard_mb: Annotated[int, typer.Option("--shard-mb", help="with --embed-images: size of a shard")] = 256,
    catalog: CatalogOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a mixture's plan in order (every column a trainer needs) and manifest.json to a folder.

    The manifest names the catalog snapshot it was read from; --at SNAPSHOT writes the same bytes again.

    Example: ocrcat export stage2 --out exports/stage2 --split train --at 42

    For training on other machines, with the images inside (credentials and endpoint of object
    storage from the standard AWS environment variables):
    ocrcat export stage2 --embed-images --out s3://my-bucket/stage2 --split train
    """
    from ocrcat.mix.embed import export_embedded
    from ocrcat.mix.export import export_mixture

    with user_errors():
        if embed_images and (format != "parquet" or relative_paths):
            raise ValueError("--embed-images writes Parquet with the images inside: drop --format and --relative-paths")
        with Catalog(catalog, read_only=True, at=at) as cat:
            if embed_images:
                manifest = export_embedded(cat, name, out, split, shard_mb)
            else:
                manifest = export_mixture(cat, name, Path(out), format, split, relative_paths,
                                          require_images=require_images)
    if as_json:  # the manifest carries the counts and the missing images
        print_json(manifest)
        return
    if embed_images:
        console.print(f"wrote {manifest['rows']} rows with their images in {len(manifest['shards'])} shards "
                      f"and manifest.json to {out}")
        return
    entry = manifest["exports"][split or "all"]
    console.print(f"wrote {entry['rows']} rows to {Path(out) / entry['file']} and {Path(out) / 'manifest.json'}")
    empty = [c["name"] for c in manifest["mixture"]["components"] if not entry["components"].get(c["name"])]
    if empty:
        warning(f"component(s) {', '.join(empty)} of {name} matched no rows in this export; their filters "
                f"select nothing now (see `ocrcat mix show {name}`)")
    if manifest["missing_images_count"]:
        warning(f"{manifest['missing_images_count']} image files of this plan are missing "
                "(listed in manifest.json under missing_images); training will fail on their rows")


@app.command()
def history(
    all_: Annotated[bool, typer.Option("--all", help="also list the per-shard commits of ingests")] = False,
    limit: Annotated[int, typer.Option(help="at most this many snapshots, newest first")] = 30,
    catalog: CatalogOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The catalog's snapshots, newest first: every ingest, mixture change, rollback and compaction.

    Any listed snapshot can be exported (ocrcat export NAME --at N) or restored (ocrcat rollback N).

    Example: ocrcat history --limit 10
    """
    from ocrcat.catalog.snapshots import history as snapshot_history

    with user_errors(), Catalog(catalog, read_only=True) as cat:
        rows = snapshot_history(cat, shards=all_, limit=limit)
    if as_json:
        print_json(rows)
    else:
        print_table(["snapshot", "time (UTC)", "what", "changes"],
                    [(r["snapshot"], r["time"], r["message"], r["changes"]) for r in rows], title=f"history of {cat.dir}")


@app.command()
def rollback(
    snapshot: Annotated[int, typer.Argument(metavar="SNAPSHOT", help="snapshot id from ocrcat history")],
    catalog: CatalogOpt = None,
) -> None:
    """Restore the catalog to an earlier snapshot: rows, runs, errors, mixtures and their views.

    The rollback is itself a new snapshot, so it can be undone by rolling back to the one before it.
    Image files are kept as long as a kept snapshot references them.

    Example: ocrcat rollback 41
    """
    from ocrcat.catalog.snapshots import rollback as restore

    with user_errors(), Catalog(catalog, create=False) as cat:
        made = restore(cat, snapshot)
    console.print(f"restored snapshot {snapshot} as snapshot {made}; undo with: ocrcat rollback {made - 1}")


@app.command()
def compact(
    expire_before: Annotated[Optional[int], typer.Option(
        "--expire-before", metavar="SNAPSHOT",
        help="also expire every snapshot older than this one (no --at or rollback to them afterwards); "
             "frees the files and images only they used")] = None,
    catalog: CatalogOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Merge small data files, expire the per-shard snapshots of ended ingests, delete files and
    images that no kept snapshot needs. Every ingest ends with this; run it after interrupted ones.

    Example: ocrcat compact --expire-before 40
    """
    from ocrcat.catalog.snapshots import compact as run_compact

    with user_errors(), Catalog(catalog, create=False) as cat:
        result = run_compact(cat, older_than_snapshot=expire_before)
    if as_json:
        print_json(result)
    else:
        flushed = result["inlined_tables_flushed"]
        written = f" ({flushed} tables' rows kept in the metadata written out as files)" if flushed else ""
        console.print(f"data files {result['data_files_before']} -> {result['data_files_after']}{written}, "
                      f"{result['expired_snapshots']} snapshots expired, {result['images_swept']} image files swept",
                      soft_wrap=True)


@app.command()
def migrate(catalog: CatalogOpt = None, as_json: JsonOpt = False) -> None:
    """Convert a catalog of the first version (catalog.duckdb) into the lake, without re-ingesting.

    Example: ocrcat migrate --catalog ocrcat-data && ocrcat validate --catalog ocrcat-data
    """
    from ocrcat.catalog.migrate import migrate as run_migrate

    with user_errors():
        counts = run_migrate(catalog)
    if as_json:
        print_json(counts)
    else:
        console.print("migrated " + ", ".join(f"{table} {n}" for table, n in counts.items())
                      + "; the old file is now catalog.duckdb.migrated (delete it when satisfied)")


if __name__ == "__main__":
    app()
