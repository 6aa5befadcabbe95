"""olmOCR-mix (allenai/olmOCR-mix-1025): one catalog row per PDF page, image rendered with PyMuPDF.

Hub layout (1025): `{config}_{split}.parquet` (splits train and eval; eval -> val) with columns
id, url, page_number, pdf_relpath, primary_language, is_rotation_valid, rotation_correction,
is_table, is_diagram, natural_text, extras; and `pdf_tarballs/*.tar.gz` holding one-page PDFs,
`pdf_relpath` = `tarball:member` (split on the first `:`). The older 0225 release
(`{split}-{s2pdf,iabooks}.parquet`) keeps the same facts in a JSON string column `response`.

A shard is the rows of one Parquet file whose PDFs sit in one tarball: its worker streams that
tarball once (tar.gz cannot seek) and renders page 0 of each PDF it needs.
Where `is_rotation_valid` is false the page is turned clockwise by `rotation_correction` before
rendering, so the stored image is upright and matches the text. Empty `natural_text`: skipped.
"""

from __future__ import annotations

import io
import json
import random
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


def plan(root: Path, split: str, options: dict) -> list[Shard]:
    files = _files(root, split, _configs(options))
    if not files and not any(root.rglob("*.parquet")):
        raise MirrorError(f"no olmOCR parquet files in {root}; run `ocrcat fetch olmocr` or `ocrcat sample-mirror`")
    shards = []
    for config, path in files:
        rel = path.relative_to(root).as_posix()
        pf = pq.ParquetFile(path)
        if "pdf_relpath" in pf.schema_arrow.names:
            relpaths = pf.read(columns=["pdf_relpath"]).column(0).to_pylist()
        else:
            relpaths = [None] * pf.metadata.num_rows
        groups: dict[str, list[int]] = {}
        for index, relpath in enumerate(relpaths):
            tarball = None
            if relpath and ":" in relpath:
                found = _tarball(root, relpath.split(":", 1)[0])
                tarball = str(found) if found else None
            groups.setdefault(tarball or "", []).append(index)
        for tarball, rows in sorted(groups.items()):
            label = Path(tarball).name if tarball else "no-tarball"
            shards.append(Shard(f"{rel}:{label}", len(rows),
                                {"path": str(path), "file": rel, "config": config, "tarball": tarball or None,
                                 "rows": rows}))
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
        if text is None or not str(text).strip():
            yield Skipped(key, "natural_text is empty")
        elif rotation not in (0, 90, 180, 270):
            yield Rejected(key, "map", f"rotation_correction is {rotation!r}, expected 0, 90, 180 or 270")
        elif not relpath or ":" not in relpath:
            yield Rejected(key, "read", f"pdf_relpath {relpath!r} is not tarball:member; cannot find the PDF")
        elif p["tarball"] is None:
            yield Rejected(key, "read", f"tarball of pdf_relpath {relpath!r} is not in the mirror's pdf_tarballs/")
        else:
            pending.setdefault(relpath.split(":", 1)[1].removeprefix("./"), []).append((key, row))
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
    """PNG of page 0 turned clockwise by `rotation`, and facts for meta; ValueError if unusable."""
    if not data:
        raise ValueError("PDF is empty (0 bytes)")
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
            page = doc[0]
            if rotation:
                page.set_rotation((page.rotation + rotation) % 360)
            zoom = dpi / 72
            longest = max(page.rect.width, page.rect.height)
            if longest * zoom > max_side:
                zoom = max_side / longest
            pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), alpha=False)
            return pix.tobytes("png"), facts
        except Exception as exc:
            raise ValueError(f"cannot render page 0: {exc}") from None


def _sample(key: str, row: dict, data: bytes, config: str, options: dict) -> Record:
    rotate = 0 if row.get("is_rotation_valid", True) is not False else int(row.get("rotation_correction") or 0)
    try:
        png, facts = render_page(data, int(options.get("dpi", 144)), int(options.get("max_side", 2048)), rotate)
    except ValueError as exc:
        return Rejected(key, "image", str(exc))
    meta = {"config": config, "id": row.get("id"), "url": row.get("url"), "page_number": row.get("page_number"),
            **{k: row.get(k) for k in FACTS}, "rotated": rotate, **facts}
    return Sample(key, vision_prompt(str(row["natural_text"]).strip()), None, png, meta=meta)


# --- sample mirror ----------------------------------------------------------------------------

def make_pdf(text: str, *, pages: int = 1, rotated: bool = False, size: tuple[float, float] = (300, 420),
             password: str | None = None) -> bytes:
    """A real PDF made with PyMuPDF: a dark marker at the page's (upright) top left, then the text.

    `rotated`: the content is laid out turned 90 degrees anticlockwise on a landscape page, as a
    scan fed in sideways; turning the page 90 degrees clockwise makes it upright.
    """
    doc = pymupdf.open()
    w, h = size
    for n in range(pages):
        if rotated:
            page = doc.new_page(width=h, height=w)
            page.draw_rect(pymupdf.Rect(10, w - 40, 40, w - 10), fill=(0, 0, 0))  # lands top left
            page.insert_textbox(pymupdf.Rect(50, 10, h - 10, w - 50), text, fontsize=11, rotate=90)
        else:
            page = doc.new_page(width=w, height=h)
            page.draw_rect(pymupdf.Rect(10, 10, 40, 40), fill=(0, 0, 0))
            page.insert_textbox(pymupdf.Rect(10, 50, w - 10, h - 10), text if n == 0 else f"page {n + 1}", fontsize=11)
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
                info = tarfile.TarInfo(member)
                info.size = len(doc["pdf"])
                tar.addfile(info, io.BytesIO(doc["pdf"]))
                rows.append({"id": doc["id"], "url": doc.get("url", f"https://example.org/{doc['id']}.pdf"),
                             "page_number": 1, "pdf_relpath": f"{name}:{member}",
                             "primary_language": doc.get("primary_language", "en"),
                             "is_rotation_valid": doc.get("is_rotation_valid", True),
                             "rotation_correction": doc.get("rotation_correction", 0),
                             "is_table": doc.get("is_table", False), "is_diagram": doc.get("is_diagram", False),
                             "natural_text": doc["natural_text"], "extras": None})
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), root / f"{config}_{hub}.parquet", row_group_size=50)


WORDS = ("the committee report annual budget river county school letter section survey results "
         "records census minutes council public water land district notes").split()


def sample_docs(n: int, rng: random.Random, prefix: str) -> list[dict]:
    """Pages with text; among them a sideways page, a broken PDF, a blank row and a 2-page PDF."""
    docs = []
    for i in range(n):
        title = " ".join(rng.choice(WORDS) for _ in range(3)).title()
        body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))).capitalize() + "."
        text = f"{title}\n\n{body}"
        doc = {"id": f"{prefix}{i:04d}", "natural_text": text, "pdf": make_pdf(text)}
        special = i % 10
        if special == 3:
            doc.update(pdf=make_pdf(text, rotated=True), is_rotation_valid=False, rotation_correction=90)
        elif special == 5:
            doc.update(pdf=doc["pdf"][:300])  # truncated: a broken PDF
        elif special == 7:
            doc.update(natural_text="")  # no text: skipped, counted
        elif special == 8:
            doc.update(pdf=make_pdf(text, pages=2))
        docs.append(doc)
    return docs


def write_sample_mirror(root: Path, rows: int, seed: int) -> None:
    """Two configs, train and eval, real PDFs made with PyMuPDF, in the 1025 layout."""
    rng = random.Random(seed)
    for split, n in synth.split_sizes(rows, INFO.splits).items():
        half = max(1, n // 2)
        for config, count in (("00_documents", n - half), ("01_books", half)):
            if count:
                write_mirror(root, config, split, sample_docs(count, rng, f"{config[:2]}{split}"))
