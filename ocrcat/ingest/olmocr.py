"""olmOCR-mix (allenai/olmOCR-mix-1025): one catalog row per PDF page, image rendered with PyMuPDF.

Hub layout (1025): `{config}_{split}.parquet` (splits train and eval; eval -> val) with columns
id, url, page_number, pdf_relpath, primary_language, is_rotation_valid, rotation_correction,
is_table, is_diagram, natural_text, extras; and `pdf_tarballs/{config}_{split}_NNNNN.tar.gz`
holding one-page PDFs, `pdf_relpath` = `tarball:member` (split on the first `:`). The older 0225
release (`{split}-{s2pdf,iabooks}.parquet`) keeps the same facts in a JSON string column `response`
and has no `pdf_relpath`: its PDFs are tarball members named `{id}.pdf` (ids may contain `/`).
A row's PDF is found by `pdf_relpath` when it has one, else by `{id}.pdf` in the tarballs of its
config and split (the tarballs named `{config}_{split}_…`, or, where none is named so, every
tarball not named for another config and split); planning lists those tarballs once.

A shard is the rows of one Parquet file whose PDFs sit in one tarball: its worker streams that
tarball once (tar.gz cannot seek) and renders page 0 of each PDF it needs.
Where `is_rotation_valid` is false the rendered page is turned COUNTER-clockwise by
`rotation_correction`, as olmOCR's own pipeline does (PIL `transpose(ROTATE_90/180/270)` on the
rendered page), so the stored image is upright and matches the text. Empty `natural_text`:
skipped. A member that does not start with `%PDF-` (a saved HTML error page) is an error row.
"""

from __future__ import annotations

import functools
import io
import json
import random
import re
import tarfile
import zlib
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pymupdf

from ocrcat.ingest import synth
from ocrcat.ingest.limits import CapExceeded, loads_json
from ocrcat.ingest.tars import read_member as read_tar_member
from ocrcat.ingest.base import MirrorError, Option, Record, Rejected, Sample, Shard, Skipped, SourceInfo, vision_prompt

CONFIGS = ("00_documents", "01_books", "02_loc_transcripts", "03_national_archives")
INFO = SourceInfo(
    name="olmocr",
    hub_repo="allenai/olmOCR-mix-1025",
    files=("*.parquet", "pdf_tarballs/*.tar.gz"),
    splits=("train", "val"),
    licence="ODC-BY",
    one_row_is="a PDF page",
    configs=CONFIGS,
)
OPTIONS = {
    "config": Option("all", f"which configs: all, or comma-separated from {', '.join(CONFIGS)}"),
    "dpi": Option(144, "render resolution (DeepSeek-OCR renders PDFs at 144 dpi)"),
    "max_side": Option(2048, "cap on the rendered image's longest side, in pixels"),
}
HUB_SPLIT = {"train": "train", "val": "eval"}
OLD_NAMES = {"00_documents": "s2pdf", "01_books": "iabooks"}  # 0225 file names per config
FACTS = ("primary_language", "is_rotation_valid", "rotation_correction", "is_table", "is_diagram")

pymupdf.TOOLS.mupdf_display_errors(False)  # broken PDFs are reported as rows, not console noise


def _files(root: Path, split: str, configs: list[str]) -> list[tuple[str, Path]]:
    """(config, parquet file) of one split, in both the 1025 and the 0225 naming."""
    hub = HUB_SPLIT[split]
    found = []
    for path in sorted(root.rglob("*.parquet")):
        for config in configs:
            if path.name == f"{config}_{hub}.parquet" or (
                    config in OLD_NAMES and path.name == f"{hub}-{OLD_NAMES[config]}.parquet"):
                found.append((config, path))
    return found


def _configs(options: dict) -> list[str]:
    value = str(options.get("config") or "all")
    if value == "all":
        return list(CONFIGS)
    names = [c.strip() for c in value.split(",") if c.strip()]
    for name in names:
        if name not in CONFIGS:
            raise ValueError(f"olmocr has no config {name!r}; its configs are: {', '.join(CONFIGS)} (or all)")
    return names


def _tarball(root: Path, name: str) -> Path | None:
    """The tarball a `pdf_relpath` names (with or without folder and .tar.gz); never outside root."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    for candidate in (base, f"{base}.tar.gz"):
        for folder in (root / "pdf_tarballs", root):
            path = folder / candidate
            if path.is_file() and candidate not in ("", ".", ".."):
                return path
    return None


_NAMED = re.compile(rf"^(?:{'|'.join(CONFIGS)})_(?:train|eval)_")


def _candidates(root: Path, config: str, hub_split: str) -> list[Path]:
    """The tarballs that may hold a config and split's `{id}.pdf` members.

    1025 names its tarballs `{config}_{split}_NNNNN.tar.gz`; where none is named for this config
    and split (the 0225 release), every tarball not named for another config and split.
    """
    tarballs = sorted(p for folder in (root / "pdf_tarballs", root) for p in folder.glob("*.tar.gz") if p.is_file())
    own = [p for p in tarballs if p.name.startswith(f"{config}_{hub_split}_")]
    return own or [p for p in tarballs if not _NAMED.match(p.name)]


@functools.lru_cache(maxsize=4096)  # every tarball of a release: splits share them
def _members(path: str, size: int, mtime_ns: int) -> frozenset[str]:
    """Names of the files in a tarball (streamed once; cached while the file is unchanged)."""
    try:
        with tarfile.open(path, "r|gz") as tar:
            return frozenset(m.name.removeprefix("./") for m in tar if m.isfile())
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise MirrorError(f"cannot list {path} to find PDFs by id: {exc}; fetch it again") from None


def _member_index(root: Path, config: str, hub_split: str) -> dict[str, str]:
    """member name -> tarball, over a config and split's candidate tarballs (the first holding it wins)."""
    index: dict[str, str] = {}
    for path in reversed(_candidates(root, config, hub_split)):
        stat = path.stat()
        index.update(dict.fromkeys(_members(str(path), stat.st_size, stat.st_mtime_ns), str(path)))
    return index


def _member(row: dict) -> str | None:
    """The tarball member holding a row's PDF: from `pdf_relpath`, else `{id}.pdf` (0225)."""
    relpath, doc_id = row.get("pdf_relpath"), row.get("id")
    if relpath:
        return relpath.split(":", 1)[1].removeprefix("./") if ":" in relpath else None
    return f"{doc_id}.pdf" if doc_id else None


def plan(root: Path, split: str, options: dict) -> list[Shard]:
    files = _files(root, split, _configs(options))
    if not files and not any(root.rglob("*.parquet")):
        raise MirrorError(f"no olmOCR parquet files in {root}; run `ocrcat fetch olmocr` or `ocrcat sample-mirror`")
    shards = []
    for config, path in files:
        rel = path.relative_to(root).as_posix()
        pf = pq.ParquetFile(path)
        columns = [c for c in ("id", "pdf_relpath") if c in pf.schema_arrow.names]
        rows = pf.read(columns=columns).to_pylist() if columns else [{}] * pf.metadata.num_rows
        index = None  # built only when some row has no pdf_relpath
        groups: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            tarball = None
            if row.get("pdf_relpath"):
                if ":" in row["pdf_relpath"]:
                    found = _tarball(root, row["pdf_relpath"].split(":", 1)[0])
                    tarball = str(found) if found else None
            elif row.get("id"):
                index = _member_index(root, config, HUB_SPLIT[split]) if index is None else index
                tarball = index.get(_member(row))
            groups.setdefault(tarball or "", []).append(i)
        for tarball, indices in sorted(groups.items()):
            label = Path(tarball).name if tarball else "no-tarball"
            shards.append(Shard(f"{rel}:{label}", len(indices),
                                {"path": str(path), "file": rel, "config": config, "split": HUB_SPLIT[split],
                                 "tarball": tarball or None, "rows": indices}))
    return shards


def _load_rows(path: str, indices: list[int]) -> dict[int, dict]:
    """The rows at `indices`, reading only the row groups that hold them."""
    pf = pq.ParquetFile(path)
    starts, total = [], 0
    for g in range(pf.metadata.num_row_groups):
        starts.append(total)
        total += pf.metadata.row_group(g).num_rows
    wanted: dict[int, list[int]] = {}
    for i in indices:
        g = max(k for k, s in enumerate(starts) if s <= i)
        wanted.setdefault(g, []).append(i)
    columns = [c for c in pf.schema_arrow.names if c != "extras"]
    rows = {}
    for g, idx in wanted.items():
        table = pf.read_row_group(g, columns=columns).take(pa.array([i - starts[g] for i in idx]))
        rows.update(zip(idx, table.to_pylist()))
    return rows


def _facts(row: dict) -> dict:
    """natural_text and the page facts, from the 1025 columns or the 0225 `response` JSON."""
    if "natural_text" in row or "response" not in row:
        return row
    try:
        response = loads_json(row["response"] or "")
    except ValueError as exc:
        raise ValueError(f"response is not JSON: {exc}") from None
    if not isinstance(response, dict):
        raise ValueError("response JSON is not an object")
    return {**row, **{k: response.get(k) for k in FACTS + ("natural_text",)}}


def read(shard: Shard, options: dict) -> Iterator[Record]:
    p = shard.payload
    rows = _load_rows(p["path"], p["rows"])
    pending: dict[str, list[tuple[str, dict]]] = {}
    for index in p["rows"]:
        key = f"{p['file']}#{index}"
        try:
            row = _facts(rows[index])
        except ValueError as exc:
            yield Rejected(key, "parse", str(exc))
            continue
        text = row.get("natural_text")
        relpath = row.get("pdf_relpath")
        rotation = row.get("rotation_correction") or 0
        member = _member(row)
        if text is None or not str(text).strip():
            yield Skipped(key, "natural_text is empty")
        elif rotation not in (0, 90, 180, 270):
            yield Rejected(key, "map", f"rotation_correction is {rotation!r}, expected 0, 90, 180 or 270")
        elif relpath and member is None:
            yield Rejected(key, "read", f"pdf_relpath {relpath!r} is not tarball:member; cannot find the PDF")
        elif member is None:
            yield Rejected(key, "read", "row has neither pdf_relpath nor id; cannot find its PDF")
        elif p["tarball"] is None and relpath:
            yield Rejected(key, "read", f"tarball of pdf_relpath {relpath!r} is not in the mirror's pdf_tarballs/")
        elif p["tarball"] is None:
            yield Rejected(key, "read", f"{member} (the row's id + .pdf; it has no pdf_relpath) is in none of the "
                                        f"tarballs for {p['config']} {p['split']} in the mirror's pdf_tarballs/")
        else:
            pending.setdefault(member, []).append((key, row))
    if pending:
        yield from _stream(Path(p["tarball"]), pending, p["config"], options)


def _stream(tarball: Path, pending: dict[str, list[tuple[str, dict]]], config: str, options: dict) -> Iterator[Record]:
    """Stream the tarball once; render each PDF a pending row needs; reject rows never found."""
    try:
        with tarfile.open(tarball, "r|gz") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if not member.isfile() or name not in pending:
                    continue
                try:
                    data = read_tar_member(tar, member)  # if this fails, the rows stay pending
                except CapExceeded as exc:
                    for key, _ in pending.pop(name):
                        yield Rejected(key, "read", str(exc))
                    continue
                for key, row in pending.pop(name):
                    yield _sample(key, row, data, config, options)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        for rows in pending.values():
            for key, _ in rows:
                yield Rejected(key, "read", f"{tarball.name} is damaged before this PDF: {exc}")
        return
    for member, rows in pending.items():
        for key, _ in rows:
            yield Rejected(key, "read", f"{member} is not in {tarball.name}")


def render_page(data: bytes, dpi: int, max_side: int, rotation: int = 0) -> tuple[bytes, dict]:
    """PNG of page 0 turned COUNTER-clockwise by `rotation`, and facts for meta; ValueError if unusable."""
    if not data:
        raise ValueError("PDF is empty (0 bytes)")
    if not data.startswith(b"%PDF-"):
        raise ValueError(f"not a PDF: it starts with {data[:24]!r}, expected %PDF- (an HTML error page saved as .pdf?)")
    try:
        doc = pymupdf.open(stream=data, filetype="pdf")
    except Exception as exc:  # MuPDF raises several types for a file it cannot parse
        raise ValueError(f"cannot open PDF (damaged or truncated, not repairable): {exc}") from None
    with doc:
        if doc.needs_pass:
            raise ValueError("PDF is encrypted (needs a password)")
        if doc.page_count == 0:
            raise ValueError("PDF has no pages")
        facts = {}
        if doc.page_count > 1:
            facts["pdf_pages"] = doc.page_count  # rendered page 0 only
        if doc.is_repaired:
            facts["pdf_repaired"] = True  # damaged (e.g. truncated) but MuPDF could rebuild it
        try:
            page = _whole_sheet(doc, doc[0])
            if rotation:
                # olmOCR turns the rendered page with PIL's ROTATE_{90,180,270}: counter-clockwise.
                # A page's /Rotate turns clockwise, so adding 360 - rotation renders the same pixels.
                page.set_rotation((page.rotation + 360 - rotation) % 360)
            zoom = dpi / 72
            longest = max(page.rect.width, page.rect.height)
            if longest * zoom > max_side:
                zoom = max_side / longest
            pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), alpha=False)
            return pix.tobytes("png"), facts
        except Exception as exc:
            raise ValueError(f"cannot render page 0: {exc}") from None


def _whole_sheet(doc: pymupdf.Document, page: pymupdf.Page) -> pymupdf.Page:
    """`page` with its CropBox set to its MediaBox, so the whole sheet is rendered.

    olmOCR's text was written from renders of the whole sheet (its renderpdf.py runs poppler's
    pdftoppm, which renders the MediaBox), and MuPDF renders only the CropBox: on a page whose
    CropBox is smaller (printers' trims, cropped scans) the image would lose text the row holds.
    The key is written as PDF numbers (page.mediabox is in the PDF's own coordinates, inherited
    boxes resolved); set_cropbox would want another coordinate system.
    """
    box = page.mediabox
    doc.xref_set_key(page.xref, "CropBox", f"[{box.x0!r} {box.y0!r} {box.x1!r} {box.y1!r}]")
    return doc.reload_page(page)


def _page_number(value) -> int | None:
    """`page_number` as an integer: the hub stores 1 or 1.0 depending on the column type."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"page_number {value!r} is not a number") from None
    if not number.is_integer():
        raise ValueError(f"page_number {value!r} is not a whole number")
    return int(number)


def _sample(key: str, row: dict, data: bytes, config: str, options: dict) -> Record:
    rotate = 0 if row.get("is_rotation_valid", True) is not False else int(row.get("rotation_correction") or 0)
    try:
        page_number = _page_number(row.get("page_number"))
    except ValueError as exc:
        return Rejected(key, "map", str(exc))
    try:
        png, facts = render_page(data, int(options.get("dpi", 144)), int(options.get("max_side", 2048)), rotate)
    except ValueError as exc:
        return Rejected(key, "image", str(exc))
    meta = {"config": config, "id": row.get("id"), "url": row.get("url"), "page_number": page_number,
            **{k: row.get(k) for k in FACTS}, "rotated": rotate, **facts}
    return Sample(key, vision_prompt(str(row["natural_text"]).strip()), None, png, meta=meta)


# --- sample mirror ----------------------------------------------------------------------------

def make_pdf(text: str, *, pages: int = 1, turned: int = 0, size: tuple[float, float] = (300, 420),
             password: str | None = None) -> bytes:
    """A real PDF made with PyMuPDF: a dark marker at the page's (upright) top left, then the text.

    `turned` (90, 180, 270): page 0's content is laid out turned that many degrees CLOCKWISE (on a
    landscape page for 90 and 270), as a scan fed in sideways or upside down, with no /Rotate
    entry; olmOCR labels such a page rotation_correction = `turned`, which it applies
    counter-clockwise to make the page upright.
    """
    doc = pymupdf.open()
    w, h = size
    for n in range(pages):
        page = doc.new_page(width=w, height=h)
        page.draw_rect(pymupdf.Rect(10, 10, 40, 40), fill=(0, 0, 0))
        page.insert_textbox(pymupdf.Rect(10, 50, w - 10, h - 10), text if n == 0 else f"page {n + 1}", fontsize=11)
    if turned:
        # show_pdf_page's `rotate` turns counter-clockwise: 360 - turned lays it out clockwise.
        out = pymupdf.open()
        for n in range(pages):
            sideways = n == 0 and turned in (90, 270)
            page = out.new_page(width=h if sideways else w, height=w if sideways else h)
            page.show_pdf_page(page.rect, doc, n, rotate=(360 - turned) % 360 if n == 0 else 0)
        doc.close()
        doc = out
    options = {}
    if password:
        options = {"encryption": pymupdf.PDF_ENCRYPT_AES_256, "user_pw": password, "owner_pw": password + "!"}
    data = doc.tobytes(**options)
    doc.close()
    return data


SCHEMA = pa.schema([("id", pa.string()), ("url", pa.string()), ("page_number", pa.int32()),
                    ("pdf_relpath", pa.string()), ("primary_language", pa.string()),
                    ("is_rotation_valid", pa.bool_()), ("rotation_correction", pa.int32()),
                    ("is_table", pa.bool_()), ("is_diagram", pa.bool_()), ("natural_text", pa.string()),
                    ("extras", pa.string())])
# The 0225 release: the facts in a JSON string `response`; page_number a double (1.0) here, as a
# column read through pandas with gaps comes out.
SCHEMA_0225 = pa.schema([("id", pa.string()), ("url", pa.string()), ("page_number", pa.float64()),
                         ("response", pa.string())])


def _add(tar: tarfile.TarFile, member: str, data: bytes) -> None:
    info = tarfile.TarInfo(member)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _facts_of(doc: dict) -> dict:
    return {"primary_language": doc.get("primary_language", "en"),
            "is_rotation_valid": doc.get("is_rotation_valid", True),
            "rotation_correction": doc.get("rotation_correction", 0),
            "is_table": doc.get("is_table", False), "is_diagram": doc.get("is_diagram", False)}


def write_mirror(root: Path, config: str, split: str, docs: list[dict], per_tarball: int = 20) -> None:
    """Write `{config}_{hub split}.parquet` and its PDFs into `pdf_tarballs/` (1025 layout).

    Each doc: {"id", "pdf": bytes, "natural_text", optional facts}; rows keep the docs' order.
    """
    (root / "pdf_tarballs").mkdir(parents=True, exist_ok=True)
    hub = HUB_SPLIT[split]
    rows = []
    for start in range(0, len(docs), per_tarball):
        name = f"{config}_{hub}_{start // per_tarball:05d}.tar.gz"
        with tarfile.open(root / "pdf_tarballs" / name, "w:gz") as tar:
            for doc in docs[start:start + per_tarball]:
                member = f"{doc['id']}.pdf"
                _add(tar, member, doc["pdf"])
                rows.append({"id": doc["id"], "url": doc.get("url", f"https://example.org/{doc['id']}.pdf"),
                             "page_number": 1, "pdf_relpath": f"pdf_tarballs/{name}:{member}", **_facts_of(doc),
                             "natural_text": doc["natural_text"], "extras": None})
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), root / f"{config}_{hub}.parquet", row_group_size=50)


def write_mirror_0225(root: Path, config: str, split: str, docs: list[dict], per_tarball: int = 20,
                      tarball_prefix: str | None = None) -> None:
    """Write `{hub split}-{s2pdf|iabooks}.parquet` (0225 layout) and tarballs of `{id}.pdf` members.

    No `pdf_relpath`: the ingester finds each PDF by its id. Tarballs are named
    `{tarball_prefix}_NNNNN.tar.gz` (default `{old name}_{hub split}`), not for a 1025 config.
    """
    (root / "pdf_tarballs").mkdir(parents=True, exist_ok=True)
    hub = HUB_SPLIT[split]
    prefix = tarball_prefix or f"{OLD_NAMES[config]}_{hub}"
    rows = []
    for start in range(0, len(docs), per_tarball):
        with tarfile.open(root / "pdf_tarballs" / f"{prefix}_{start // per_tarball:05d}.tar.gz", "w:gz") as tar:
            for doc in docs[start:start + per_tarball]:
                _add(tar, f"{doc['id']}.pdf", doc["pdf"])
                response = {**_facts_of(doc), "natural_text": doc["natural_text"] or None}
                rows.append({"id": doc["id"], "url": doc.get("url", f"https://example.org/{doc['id']}.pdf"),
                             "page_number": 1.0, "response": json.dumps(response)})
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA_0225), root / f"{hub}-{OLD_NAMES[config]}.parquet",
                   row_group_size=50)


WORDS = ("the committee report annual budget river county school letter section survey results "
         "records census minutes council public water land district notes").split()
HTML_PAGE = b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>Not Found</body></html>\n"


def sample_docs(n: int, rng: random.Random, prefix: str) -> list[dict]:
    """Pages with text; among them pages stored turned 90, 270 and 180 degrees (labelled as olmOCR
    labels them), a broken PDF, an HTML page saved as .pdf, a blank row and a 2-page PDF."""
    docs = []
    for i in range(n):
        title = " ".join(rng.choice(WORDS) for _ in range(3)).title()
        body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))).capitalize() + "."
        text = f"{title}\n\n{body}"
        doc = {"id": f"{prefix}{i:04d}", "natural_text": text, "pdf": make_pdf(text)}
        special = i % 10
        if special in (3, 9):
            turned = (90, 270, 180)[(2 * (i // 10) + (special == 9)) % 3]
            doc.update(pdf=make_pdf(text, turned=turned), is_rotation_valid=False, rotation_correction=turned)
        elif special == 5:
            doc.update(pdf=doc["pdf"][:300] if i % 20 == 5 else HTML_PAGE)  # broken PDF / not a PDF at all
        elif special == 7:
            doc.update(natural_text="")  # no text: skipped, counted
        elif special == 8:
            doc.update(pdf=make_pdf(text, pages=2))
        docs.append(doc)
    return docs


def write_sample_mirror(root: Path, rows: int, seed: int) -> None:
    """Two configs, train and eval, real PDFs made with PyMuPDF: 00_documents in the 1025 layout,
    01_books in the 0225 layout (`response` JSON, PDFs found by id; ids with a `/`)."""
    rng = random.Random(seed)
    for split, n in synth.split_sizes(rows, INFO.splits).items():
        half = max(1, n // 2)
        if n - half:
            write_mirror(root, "00_documents", split, sample_docs(n - half, rng, f"00{split}"))
        write_mirror_0225(root, "01_books", split, sample_docs(half, rng, f"books/{split}/"))
