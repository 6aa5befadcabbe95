"""`ocrcat report`: one self-contained HTML file to look at a catalog before training on it.

Everything is inline (CSS, a few lines of JS, charts and thumbnails as data: URIs), so the file
opens anywhere without a network or the catalog beside it. Text from the data is always escaped;
HTML tables in responses (PubTables) are rendered after passing an allow-list of table tags.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import os
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from string import Template

from PIL import Image, ImageOps

from ocrcat.inspection.plots import source_histograms_png
from ocrcat.inspection.stats import catalog_stats, source_stats
from ocrcat.catalog.store import Catalog
from ocrcat.inspection.validate import CHECKS, CheckResult, mixture_descriptions, path_problem, validate

THUMB = (260, 260)
SHOWN_QUANTILES = ("p50", "p90", "max")


def build_report(catalog: Catalog, out: Path, *, seed: int = 0, per_source: int = 6, tokenizer=None) -> Path:
    """Write the report to `out` (atomically) and return it; `seed` picks the gallery's samples."""
    if out.is_dir():
        raise ValueError(f"{out} is a folder; give the report a file name, e.g. {out / 'report.html'}")
    sections = [
        _overview(catalog, seed, per_source),
        _validation(catalog),
        _statistics(catalog, tokenizer),
        _mixtures(catalog),
        _gallery(catalog, seed, per_source),
    ]
    template = Template(resources.files("ocrcat.inspection").joinpath("report.html.tmpl").read_text("utf-8"))
    page = template.substitute(title=html.escape(f"ocrcat report: {catalog.dir}"), body="\n".join(sections))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, out)  # readers (and an interrupted run) never see a half-written report
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _table(columns: list[str], rows: list[list], left: int = 1) -> str:
    """An HTML table; the first `left` columns are text (left-aligned), cells already escaped."""
    head = "".join(f'<th class="{"l" if i < left else ""}">{_e(c)}</th>' for i, c in enumerate(columns))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{cell}</td>' for i, cell in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f'<table class="data"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _overview(catalog: Catalog, seed: int, per_source: int) -> str:
    s = catalog_stats(catalog)
    runs = catalog.con.execute(
        "SELECT count(*), count(*) FILTER (WHERE status <> 'completed'), max(finished_at) FROM ingest_runs"
    ).fetchone()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    facts = [
        ("catalog", _e(catalog.dir.absolute())),
        ("vision mode", _e(catalog.vision_mode)),
        ("rows", f"{s['rows']:,}"),
        ("unique images", f"{s['unique_images']:,} ({s['image_bytes'] / 1e6:,.1f} MB)"),
        ("image tokens", f"median {_e(s['image_tokens_median'])}, p95 {_e(s['image_tokens_p95'])}"),
        ("ingest runs", f"{runs[0]} ({runs[1]} not completed), last finished {_e(runs[2])}"),
        ("ingest errors", f"{s['errors']:,}"),
        ("gallery", f"{per_source} random samples per source, seed {seed} "
                    f"(<code>ocrcat report --seed N</code> draws another set)"),
    ]
    groups = _table(
        ["source", "split", "kind", "rows", "unique images", "image MB", "tokens p50", "tokens p95", "errors"],
        [[_e(g["source"]), _e(g["split"]), _e(g["kind"]), f"{g['rows']:,}", f"{g['unique_images']:,}",
          f"{g['image_bytes_referenced'] / 1e6:,.1f}", _e(g["image_tokens_median"]), _e(g["image_tokens_p95"]),
          f"{g['errors']:,}"] for g in s["groups"]],
        left=3,
    )
    rows = "".join(f'<tr><th class="l">{k}</th><td class="l">{v}</td></tr>' for k, v in facts)
    return (f"<h1>ocrcat catalog report</h1><p class=\"muted\">generated {now}</p>"
            f'<h2 id="overview">Overview</h2><table class="data">{rows}</table>{groups}')


def _validation(catalog: Catalog) -> str:
    results = validate(catalog)  # the quick checks; `ocrcat validate --deep` also decodes every image
    failures = [r for r in results if not r.ok]
    checks = [c for c in CHECKS if any(r.check == c for r in results)]
    by_source: dict[str, dict[str, CheckResult]] = {}
    for r in results:
        by_source.setdefault(r.source, {})[r.check] = r
    rows = []
    for source, found in by_source.items():
        cells = [_e(source)]
        for c in checks:
            r = found.get(c)
            cells.append("" if r is None else f'<span class="pass">✓ {r.checked:,}</span>' if r.ok
                         else f'<span class="fail">✗ {r.failed:,}/{r.checked:,}</span>')
        rows.append(cells)
    summary = (f'<p class="pass">all {len(results)} checks pass</p>' if not failures
               else f'<p class="fail">{len(failures)} of {len(results)} checks fail</p>')
    detail = _table(["source", "check", "failed", "example sample ids", "first reason"],
                    [[_e(r.source), _e(r.check), f"{r.failed:,}", _e(" ".join(map(str, r.examples))), _e(r.note)]
                     for r in failures], 2) if failures else ""
    return (f'<h2 id="validation">Validation</h2>{summary}{_table(["source", *checks], rows)}{detail}'
            '<p class="muted">✓ n: n rows checked. Quick checks only: <code>ocrcat validate --deep</code> '
            "also decodes every image and compares its hash and size.</p>")


def _statistics(catalog: Catalog, tokenizer) -> str:
    stats = source_stats(catalog, tokenizer=tokenizer)
    measures = ["image_width", "image_height", "image_tokens", "text_chars", "response_chars"]
    if tokenizer is not None:
        measures += ["text_tokens", "response_tokens"]
    columns = ["source", "split", "rows", *measures]
    rows = []
    for g in stats:
        cells = [_e(g["source"]), _e(g["split"]), f"{g['rows']:,}"]
        cells += [" / ".join(_e(g[m][q]) for q in SHOWN_QUANTILES) if g[m] else "" for m in measures]
        rows.append(cells)
    charts = "".join(
        f'<h3>{_e(source)}</h3><img class="chart" alt="histograms of {_e(source)}" '
        f'src="{_data_uri(source_histograms_png(catalog, source), "image/png")}">'
        for source in sorted({g["source"] for g in stats})
    )
    return (f'<h2 id="statistics">Statistics per source and split</h2>'
            f'<p class="muted">each cell: {" / ".join(SHOWN_QUANTILES)}</p>{_table(columns, rows, 2)}{charts}')


def _mixtures(catalog: Catalog) -> str:
    """Per mixture and component: rows matched, plan rows promised and realised, intended and realised share."""
    parts = ['<h2 id="mixtures">Mixtures</h2>']
    for name, described, error in mixture_descriptions(catalog):
        if error:
            parts.append(f'<h3>{_e(name)}</h3><p class="fail">{_e(error)}</p>')
            continue
        parts.append(f"<h3>{_e(name)}</h3><p class=\"muted\">seed {_e(described['seed'])}, "
                     f"text share {described['text_share']:.0%}, {described['total']:,} plan rows, "
                     f"view <code>{_e(described['view'])}</code></p>")
        parts.append(_table(
            ["component", "predicate", "weight", "matching rows", "promised", "plan rows",
             "intended share", "realised share"],
            [[_e(c["name"]), f"<code>{_e(c['predicate'])}</code>",
              _e("text share" if c["weight"] is None else c["weight"]), f"{c['rows']:,}", f"{c['promised']:,}",
              f"{c['realised']:,}", f"{c['intended_share']:.2%}", f"{c['realised_share']:.2%}"]
             for c in described["components"]],
            left=2,
        ))
    if len(parts) == 1:
        parts.append('<p class="muted">no mixtures defined (<code>ocrcat mix load --preset</code>)</p>')
    return "".join(parts)


def _gallery(catalog: Catalog, seed: int, per_source: int) -> str:
    # An MD5 of (seed, sample_id) orders each source's rows: the same draw for a seed on every
    # machine and DuckDB version (DuckDB's hash() may change between versions).
    rows = catalog.con.execute(
        """
        SELECT sample_id, source, split, source_key, kind, text, response, messages, image_path,
               image_width, image_height, image_tokens, image_format
        FROM (SELECT *, md5(CAST(?::BIGINT AS VARCHAR) || ':' || CAST(sample_id AS VARCHAR)) AS draw FROM samples)
        QUALIFY row_number() OVER (PARTITION BY source ORDER BY draw, sample_id) <= ?
        ORDER BY source, draw, sample_id
        """,
        [seed, per_source],
    ).fetchall()
    parts = ['<h2 id="gallery">Gallery</h2><p><input id="filter" type="search" '
             'placeholder="filter samples by any text"></p>']
    source = None
    for row in rows:
        if row[1] != source:
            if source is not None:
                parts.append("</div>")
            source = row[1]
            parts.append(f'<h3>{_e(source)}</h3><div class="gallery">')
        parts.append(_card(catalog, *row))
    if source is not None:
        parts.append("</div>")
    return "".join(parts)


def _card(catalog: Catalog, sid, source, split, key, kind, text, response, messages, image_path,
          width, height, tokens, fmt) -> str:
    pic = ""
    if kind == "vision":
        thumb, problem = _thumbnail(catalog, image_path)
        pic = (f'<div class="pic"><img alt="{_e(key)}" src="{thumb}"></div>' if thumb
               else f'<div class="pic"><div class="missing">{_e(problem)}</div></div>')
    facts = f"{_e(source)}/{_e(split)} · id {sid} · key {_e(key)}"
    if kind == "vision":
        facts += f" · {_e(fmt)} {width}×{height} · {tokens} image tokens"
    words = [f'<div class="facts">{facts}</div>']
    if messages is not None:  # a text row: its conversation says all that text/response repeat
        words.append(f'<div class="label">conversation</div><pre>{_e(_conversation(messages))}</pre>')
        return f'<div class="card"><div class="words">{"".join(words)}</div></div>'
    words += ['<div class="label">text</div>', f"<pre>{_e(text)}</pre>"]
    if response is not None:
        words.append('<div class="label">response</div>')
        rendered = render_table_html(response) if "<table" in response.lower() else None
        words.append(f'<div class="rendered">{rendered}</div><details><summary class="label">source</summary>'
                     f"<pre>{_e(response)}</pre></details>" if rendered else f"<pre>{_e(response)}</pre>")
    return f'<div class="card">{pic}<div class="words">{"".join(words)}</div></div>'


def _conversation(messages: str) -> str:
    """A conversation as `role: content` turns; anything that is not one stays as its raw JSON."""
    try:
        turns = json.loads(messages)
        return "\n\n".join(f"{t['role']}: {t['content']}" for t in turns)
    except (ValueError, TypeError, KeyError):
        return messages


def _thumbnail(catalog: Catalog, image_path: str | None) -> tuple[str | None, str | None]:
    """(data URI of a small JPEG, None), or (None, why there is no picture)."""
    if not image_path:
        return None, "no image_path"
    problem = path_problem(catalog, image_path)
    if problem:
        return None, problem
    try:
        with Image.open(io.BytesIO(catalog.images.read(image_path))) as img:  # a file, or a shared catalog's object
            img = ImageOps.exif_transpose(img)
            img.thumbnail(THUMB)
            if img.mode != "RGB":
                # Transparent areas on white, as a page would show them.
                rgba = img.convert("RGBA")
                img = Image.new("RGB", rgba.size, "white")
                img.paste(rgba, mask=rgba.getchannel("A"))
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=82)
    except Exception as exc:  # any decoding failure becomes a visible note in the report, not a crash
        return None, f"{image_path}: does not decode ({type(exc).__name__})"
    return _data_uri(buf.getvalue(), "image/jpeg"), None


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


class _TableSanitizer(HTMLParser):
    """Re-emits only table markup (with numeric rowspan/colspan); everything else becomes text."""

    TAGS = {"table", "thead", "tbody", "tfoot", "tr", "th", "td", "caption", "b", "i", "sub", "sup", "br"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in self.TAGS:
            return
        kept = "".join(f' {k}="{int(v)}"' for k, v in attrs
                       if k in ("rowspan", "colspan") and v is not None and v.isdigit() and 0 < int(v) < 1000)
        self.out.append(f"<{tag}{kept}>")
        if tag != "br":
            self.open.append(tag)

    def handle_endtag(self, tag):
        if tag in self.open:
            while self.open:  # close whatever the data left open inside it
                last = self.open.pop()
                self.out.append(f"</{last}>")
                if last == tag:
                    break

    def handle_data(self, data):
        self.out.append(html.escape(data))


def render_table_html(markup: str) -> str:
    """`markup` reduced to well-formed table tags and escaped text: safe to put into the page."""
    parser = _TableSanitizer()
    parser.feed(markup)
    parser.close()
    return "".join(parser.out) + "".join(f"</{tag}>" for tag in reversed(parser.open))
