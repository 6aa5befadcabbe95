"""PubTables-1M (bsmock/pubtables-1m), Structure subset: one catalog row per table crop, as HTML.

Hub layout: `PubTables-1M-Structure_Annotations_{Train,Val,Test}.tar.gz` (VOC XML per table),
`PubTables-1M-Structure_Images_{Train,Val,Test}.tar.gz` (`PMC…_table_N.jpg`) and one
`PubTables-1M-Structure_Table_Words.tar.gz` (`PMC…_table_N_words.json`, all splits).

The three kinds must be joined by table name, but a tar.gz can only be read front to back and the
words tarball alone is 4 GB. So planning stages them once (a partitioned hash join): each
tarball is streamed a single time and every member is appended to the pack file of its bucket
(a stable hash of the table name). A shard is then one bucket of one split: its worker reads
three small pack files and holds only that bucket in memory, however large the tarballs are.
The staging folder (default `<catalog>/staging/pubtables`) is reused while the tarballs are
unchanged (a manifest records them); it is locked while in use and replaced only whole.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import math
import os
import random
import shutil
import struct
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterator

from PIL import Image, ImageDraw

from ocrcat.ingest import limits, synth, tars
from ocrcat.ingest.limits import CapExceeded, loads_json
from ocrcat.ingest.base import MirrorError, Option, Record, Rejected, Sample, Shard, SourceInfo, vision_prompt
from ocrcat.ingest.pubtables_html import table_html

INFO = SourceInfo(
    name="pubtables",
    hub_repo="bsmock/pubtables-1m",
    files=("PubTables-1M-Structure_Annotations_*.tar.gz", "PubTables-1M-Structure_Images_*.tar.gz",
           "PubTables-1M-Structure_Table_Words.tar.gz"),
    splits=("train", "val", "test"),
    licence="CDLA-Permissive-2.0",
    one_row_is="a table crop",
)
OPTIONS = {
    "tables_per_shard": Option(256, "tables per shard (a staging bucket); a worker holds one bucket"),
    "staging": Option("", "folder for the staged join [default: <catalog>/staging/pubtables]"),
}
PROMPT = "Convert this table to HTML."
HUB_SPLITS = {"Train": "train", "Val": "val", "Test": "test"}
PREFIX = "PubTables-1M-Structure"
WORDS_TARBALL = f"{PREFIX}_Table_Words.tar.gz"
_LEN = struct.Struct(">IQ")


def _tarballs(root: Path) -> dict[str, list[tuple[str, Path]]]:
    found = {"annotations": [], "images": []}
    for hub, split in HUB_SPLITS.items():
        for kind, word in (("annotations", "Annotations"), ("images", "Images")):
            path = root / f"{PREFIX}_{word}_{hub}.tar.gz"
            if path.is_file():
                found[kind].append((split, path))
    if not found["annotations"]:
        raise MirrorError(f"no {PREFIX}_Annotations_{{Train,Val,Test}}.tar.gz in {root}; "
                          "run `ocrcat fetch pubtables` or `ocrcat sample-mirror`")
    return found


def _table_name(member: str, suffix: str) -> str | None:
    base = member.rsplit("/", 1)[-1]
    return base[: -len(suffix)] if base.endswith(suffix) and len(base) > len(suffix) else None


def _shown(name: str) -> str:
    """A member name as text: tarfile decodes bytes that are not UTF-8 as surrogate escapes, which
    no file, Parquet or SQL string can hold; here they are written \\xNN instead."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _bucket(name: str, buckets: int) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big") % buckets


def _members(path: Path) -> Iterator[tuple[tarfile.TarInfo, bytes | CapExceeded]]:
    """(member, bytes) of each file of a tar.gz, streamed; CapExceeded for one over the member cap."""
    try:
        yield from tars.iter_files(path)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise MirrorError(f"{path.name} is not a readable tar.gz ({exc}); fetch it again") from None


def _append(path: Path, name: str, data: bytes) -> None:
    raw = name.encode()
    with open(path, "ab") as f:
        f.write(_LEN.pack(len(raw), len(data)) + raw + data)


def read_pack(path: Path) -> Iterator[tuple[str, bytes]]:
    if not path.exists():
        return
    with open(path, "rb") as f:
        while header := f.read(_LEN.size):
            n, size = _LEN.unpack(header)
            yield f.read(n).decode(), f.read(size)


def stage(root: Path, staging: Path, per_shard: int) -> dict:
    """The manifest of a complete staging of the mirror's tarballs, built when missing or stale.

    The staging folder is locked while in use (`<staging>.lock`, flock): building takes it
    exclusively, using takes it shared, and this process keeps its shared hold until it exits, so
    no other ingest rebuilds the folder under its workers. A build is written under a temporary
    name and renamed into place with its manifest (listing every pack file's size) already in it,
    so an incomplete or damaged staging is never reused.
    """
    tarballs = _tarballs(root)
    words = root / WORDS_TARBALL
    files = [p for _, p in tarballs["annotations"] + tarballs["images"]] + ([words] if words.is_file() else [])
    signature = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files] + [
        per_shard, limits.current().max_member_bytes]
    if staging.exists() and any(staging.iterdir()) and not (staging / "manifest.json").exists():
        raise MirrorError(f"staging folder {staging} exists and is not an ocrcat staging folder; "
                          "give an empty or new one with -o staging=DIR")
    lock = _StagingLock(staging)
    if not lock.try_exclusive():
        # Someone else holds it: another ingest using it (shared) or building it (exclusive).
        if not lock.try_shared():
            print(f"pubtables: waiting for process {lock.holder()} to finish staging {staging} ...",
                  file=sys.stderr, flush=True)
            lock.shared()
        manifest = _complete_manifest(staging, signature)
        if manifest is not None:
            return manifest
        lock.unlock()  # missing (its builder died) or made from other tarballs: build it, if nobody uses it
        if not lock.try_exclusive():
            raise MirrorError(f"staging folder {staging} is in use by another ingest (process {lock.holder()}) "
                              "and holds other tarballs than this mirror's; wait for that ingest to end, "
                              "or give this one its own folder with -o staging=DIR")
    manifest = _complete_manifest(staging, signature) or _build(tarballs, words, staging, signature, per_shard)
    lock.shared()  # a downgrade: others may use it now, nobody may rebuild it while this process lives
    return manifest


class _StagingLock:
    """flock on `<staging>.lock`; the file names the process that last took it exclusively."""

    held: dict[str, "_StagingLock"] = {}  # kept until the process exits: the workers read the packs

    def __init__(self, staging: Path):
        self.path = staging.with_name(staging.name + ".lock")
        previous = self.held.pop(str(self.path), None)
        if previous is not None:
            previous.release()  # this process staged it before: start over from no lock
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise MirrorError(f"cannot create the staging lock {self.path} ({exc}); pass "
                              "-o staging=DIR on a writable disk with room for the unpacked tarballs") from None
        self.held[str(self.path)] = self

    def _flock(self, how: int) -> bool:
        try:
            fcntl.flock(self.fd, how)
            return True
        except BlockingIOError:
            return False

    def try_exclusive(self) -> bool:
        if not self._flock(fcntl.LOCK_EX | fcntl.LOCK_NB):
            return False
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        return True

    def try_shared(self) -> bool:
        return self._flock(fcntl.LOCK_SH | fcntl.LOCK_NB)

    def shared(self) -> None:
        self._flock(fcntl.LOCK_SH)

    def unlock(self) -> None:
        self._flock(fcntl.LOCK_UN)

    def holder(self) -> str:
        return os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "unknown"

    def release(self) -> None:
        os.close(self.fd)
        self.held.pop(str(self.path), None)


def _complete_manifest(staging: Path, signature: list) -> dict | None:
    """The manifest of `staging` when it is complete, intact and made from these tarballs."""
    try:
        manifest = json.loads((staging / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("signature") != signature or not isinstance(manifest.get("packs"), dict):
        return None
    for name, size in manifest["packs"].items():
        try:
            if (staging / name).stat().st_size != size:
                return None
        except OSError:
            return None
    return manifest


def _build(tarballs: dict, words: Path, staging: Path, signature: list, per_shard: int) -> dict:
    """Stream every tarball once into per-bucket pack files, under a temporary name; then rename."""
    for old in staging.parent.glob(f"{staging.name}.tmp-*"):  # left by a killed build (we hold the lock)
        shutil.rmtree(old, ignore_errors=True)
    tmp = staging.with_name(f"{staging.name}.tmp-{os.getpid()}")
    try:
        tmp.mkdir(parents=True)
    except OSError as exc:
        raise MirrorError(f"cannot create the staging folder {tmp} ({exc}); for a read-only mirror "
                          "pass -o staging=DIR on a disk with room for the unpacked tarballs") from None
    # Pass 1 (annotations only, the smallest tarballs): how many tables, so how many buckets.
    total = sum(1 for _, p in tarballs["annotations"] for m, _ in _members(p) if _table_name(m.name, ".xml"))
    buckets = max(1, math.ceil(total / per_shard))
    counts: dict[str, dict[str, int]] = {}
    refused: dict[str, str] = {}  # table -> why one of its members was not staged (over the member cap)

    def add(pack: Path, name: str, data: bytes | CapExceeded) -> None:
        if isinstance(data, CapExceeded):
            refused[name] = str(data)
        else:
            _append(pack, name, data)

    for split, path in tarballs["annotations"]:
        counts[split] = {}
        for member, data in _members(path):
            name = _table_name(member.name, ".xml")
            if not name:
                continue
            why = str(data) if isinstance(data, CapExceeded) else None
            if _shown(name) != name:
                name, why = _shown(name), (f"the member name {_shown(member.name)} is not UTF-8 (PubTables "
                                           "tables are named PMC<id>_table_<n>.xml); this table was skipped")
            if why:
                refused[name] = why
            b = _bucket(name, buckets)
            # A refused table is still a record (its error row): an empty entry.
            _append(tmp / f"{split}-{b:05d}.xml.pack", name, b"" if why else data)
            counts[split][str(b)] = counts[split].get(str(b), 0) + 1
    # Images and words are found by their table's name; one that is not UTF-8 matches no table.
    for split, path in tarballs["images"]:
        for member, data in _members(path):
            name = _table_name(member.name, ".jpg")
            if name and _shown(name) == name:
                add(tmp / f"{split}-{_bucket(name, buckets):05d}.jpg.pack", name, data)
    if words.is_file():
        for member, data in _members(words):
            name = _table_name(member.name, "_words.json")
            if name and _shown(name) == name:
                add(tmp / f"{_bucket(name, buckets):05d}.words.pack", name, data)
    packs = {p.name: p.stat().st_size for p in tmp.iterdir()}
    manifest = {"signature": signature, "buckets": buckets, "counts": counts, "words": words.is_file(),
                "packs": packs, "refused": refused}
    (tmp / "manifest.json").write_text(json.dumps(manifest))  # written last: its presence means complete
    shutil.rmtree(staging, ignore_errors=True)
    os.replace(tmp, staging)
    return manifest


def _staging_dir(root: Path, options: dict) -> Path:
    """-o staging=DIR, else `<catalog>/staging/pubtables` (mirrors may be read-only or shared)."""
    if options.get("staging"):
        return Path(options["staging"])
    if options.get("_catalog"):
        return Path(options["_catalog"]) / "staging" / "pubtables"
    return root / ".ocrcat-staging"  # called outside an ingest (no catalog)


def plan(root: Path, split: str, options: dict) -> list[Shard]:
    staging = _staging_dir(root, options)
    manifest = stage(root, staging, max(1, int(options.get("tables_per_shard", 256))))
    counts = manifest["counts"].get(split, {})
    refused = manifest.get("refused", {})
    return [Shard(f"bucket-{int(b):05d}-of-{manifest['buckets']}", n,
                  {"staging": str(staging), "split": split, "bucket": int(b), "words": manifest["words"],
                   "refused": {t: m for t, m in refused.items() if _bucket(t, manifest["buckets"]) == int(b)}})
            for b, n in sorted(counts.items(), key=lambda kv: int(kv[0]))]


def read(shard: Shard, options: dict) -> Iterator[Record]:
    p = shard.payload
    staging, tag = Path(p["staging"]), f"{p['bucket']:05d}"
    annotations = list(read_pack(staging / f"{p['split']}-{tag}.xml.pack"))
    wanted = {name for name, _ in annotations}
    words = {n: d for n, d in read_pack(staging / f"{tag}.words.pack") if n in wanted}
    images = {n: d for n, d in read_pack(staging / f"{p['split']}-{tag}.jpg.pack") if n in wanted}
    for name, xml_data in annotations:
        if name in p.get("refused", {}):
            yield Rejected(name, "read", p["refused"][name])
            continue
        yield _table(name, xml_data, words.pop(name, None), images.pop(name, None), p["words"])


def _table(name: str, xml_data: bytes, words_data: bytes | None, image: bytes | None, have_words: bool) -> Record:
    if image is None:
        return Rejected(name, "image", f"no {name}.jpg in the Images tarball of this split")
    if words_data is None:
        where = WORDS_TARBALL if have_words else f"the mirror ({WORDS_TARBALL} is missing)"
        return Rejected(name, "read", f"no {name}_words.json in {where}")
    try:
        words = loads_json(words_data)
        if not isinstance(words, list):
            raise ValueError("words JSON is not a list")
    except ValueError as exc:
        return Rejected(name, "parse", f"{name}_words.json: {exc}")
    try:
        html, meta = table_html(xml_data, words)
    except (KeyError, TypeError) as exc:
        return Rejected(name, "parse", f"{name}_words.json: a word lacks a usable bbox or text ({exc!r})")
    except ValueError as exc:
        return Rejected(name, "parse", f"{name}.xml: {exc}")
    return Sample(name, vision_prompt(PROMPT), html, image, meta={"table": name, **meta})


# --- sample mirror ----------------------------------------------------------------------------

HEADS = ["Group", "Age", "Dose (mg)", "Outcome", "Mean", "SD", "n", "p value", "Score", "Rate"]


def random_table(rng: random.Random) -> dict:
    """A table with the structures PubTables annotates, and its HTML written out directly.

    Rows of cells: (text, rowspan, colspan, header); None marks a slot covered by a span.
    """
    n_cols = rng.randint(3, 5)
    heads = rng.sample(HEADS, n_cols)
    rows: list[list] = []
    two_level = rng.random() < 0.5
    if two_level:  # a header cell over two columns, the first header cell spanning both header rows
        rows.append([(heads[0], 2, 1, True), ("Measured values", 1, 2, True), None]
                    + [(h, 2, 1, True) for h in heads[3:]])
        rows.append([None, (heads[1], 1, 1, True), (heads[2], 1, 1, True)] + [None] * (n_cols - 3))
    else:
        rows.append([(h, 1, 1, True) for h in heads])
    n_body = rng.randint(3, 6)
    merged = rng.random() < 0.5
    projected = rng.randint(0, n_body - 1) if rng.random() < 0.5 else None
    for r in range(n_body):
        if r == projected:
            rows.append([(f"Cohort {chr(65 + r)}", 1, n_cols, False)] + [None] * (n_cols - 1))
            continue
        row = [(f"{rng.choice(['Case', 'Control', 'Arm'])} {r + 1}", 1, 1, False)]
        row += [(f"{rng.uniform(0, 99):.1f}", 1, 1, False) for _ in range(n_cols - 1)]
        rows.append(row)
    # A body cell spanning two rows, where the next row is plain.
    if merged:
        for r in range(len(rows) - 2, 0, -1):
            if rows[r][0] is not None and not rows[r][0][3] and rows[r][0][2] == 1 and rows[r + 1][0] is not None and rows[r + 1][0][2] == 1 \
                    and rows[r][1] is not None and rows[r + 1][1] is not None:
                rows[r][1] = ("shared", 2, 1, False)
                rows[r + 1][1] = None
                break
    return {"rows": rows, "n_cols": n_cols, "header_rows": 2 if two_level else 1}


def expected_html(table: dict) -> str:
    out = ["<table>"]
    for r, row in enumerate(table["rows"]):
        if r == 0:
            out.append("<thead>")
        if r == table["header_rows"]:
            out.append("<tbody>")
        out.append("<tr>")
        for cell in row:
            if cell is None:
                continue
            text, rs, cs, header = cell
            tag = "th" if header else "td"
            attrs = (f' rowspan="{rs}"' if rs > 1 else "") + (f' colspan="{cs}"' if cs > 1 else "")
            out.append(f"<{tag}{attrs}>{text}</{tag}>")
        out.append("</tr>")
        if r == table["header_rows"] - 1:
            out.append("</thead>")
    out.append("</tbody></table>")
    return "".join(out)


def draw_table(table: dict, font_size: int = 12) -> tuple[bytes, bytes, list[dict]]:
    """(JPEG, VOC XML, words) of a table: cell boxes from text widths, words where they are drawn."""
    f = synth.font(font_size)
    rows, n_cols = table["rows"], table["n_cols"]
    pad, row_h, margin = 6, font_size + 10, 8
    col_w = [40] * n_cols
    for row in rows:
        for c, cell in enumerate(row):
            if cell and cell[2] == 1:
                col_w[c] = max(col_w[c], int(f.getlength(cell[0])) + 2 * pad)
    for row in rows:  # a spanning cell's text must fit in the columns it spans
        for c, cell in enumerate(row):
            if cell and cell[2] > 1:
                short = int(f.getlength(cell[0])) + 2 * pad - sum(col_w[c:c + cell[2]])
                col_w[c + cell[2] - 1] += max(0, short)
    xs = [margin]
    for w in col_w:
        xs.append(xs[-1] + w)
    ys = [margin + r * row_h for r in range(len(rows) + 1)]
    width, height = xs[-1] + margin, ys[-1] + margin
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    words, objects = [], [("table", (xs[0], ys[0], xs[-1], ys[-1]))]
    objects += [("table row", (xs[0], ys[r], xs[-1], ys[r + 1])) for r in range(len(rows))]
    objects += [("table column", (xs[c], ys[0], xs[c + 1], ys[-1])) for c in range(n_cols)]
    objects.append(("table column header", (xs[0], ys[0], xs[-1], ys[table["header_rows"]])))
    block = 0
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            if cell is None:
                continue
            text, rs, cs, header = cell
            box = (xs[c], ys[r], xs[c + cs], ys[r + rs])
            if cs == n_cols and not header:
                objects.append(("table projected row header", box))
            elif rs > 1 or cs > 1:
                objects.append(("table spanning cell", box))
            x, y = box[0] + pad, (box[1] + box[3]) / 2 - font_size / 2
            for i, word in enumerate(text.split()):
                w = f.getlength(word)
                d.text((x, y), word, fill="black", font=f)
                words.append({"bbox": [round(x, 2), round(y, 2), round(x + w, 2), round(y + font_size, 2)],
                              "text": word, "flags": 0, "span_num": i, "line_num": 0, "block_num": block})
                x += w + f.getlength(" ")
            block += 1
    for x in xs:
        d.line([(x, ys[0]), (x, ys[-1])], fill=(120, 120, 120))
    for y in ys:
        d.line([(xs[0], y), (xs[-1], y)], fill=(120, 120, 120))
    return synth.encode(img, "JPEG", 85), voc_xml(objects, width, height), words


def voc_xml(objects: list[tuple[str, tuple]], width: int, height: int, filename: str = "") -> bytes:
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    for k, v in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, k).text = str(v)
    for name, box in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        bb = ET.SubElement(obj, "bndbox")
        for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ET.SubElement(bb, k).text = f"{v:.4f}"
    return ET.tostring(root)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_mirror(root: Path, tables: dict[str, dict[str, tuple[bytes | None, bytes | None, list | None]]]) -> None:
    """Write the three tarball kinds. `tables[split][name] = (xml, jpeg, words)`; None leaves one out."""
    root.mkdir(parents=True, exist_ok=True)
    hub = {v: k for k, v in HUB_SPLITS.items()}
    with tarfile.open(root / WORDS_TARBALL, "w:gz") as words_tar:
        for split, items in tables.items():
            ann_dir, img_dir = f"{PREFIX}_Annotations_{hub[split]}", f"{PREFIX}_Images_{hub[split]}"
            with tarfile.open(root / f"{ann_dir}.tar.gz", "w:gz") as ann, \
                    tarfile.open(root / f"{img_dir}.tar.gz", "w:gz") as imgs:
                for name, (xml_data, jpeg, words) in items.items():
                    if xml_data is not None:
                        _add(ann, f"{ann_dir}/{name}.xml", xml_data)
                    if jpeg is not None:
                        _add(imgs, f"{img_dir}/{name}.jpg", jpeg)
                    if words is not None:
                        _add(words_tar, f"{PREFIX}_Table_Words/{name}_words.json", json.dumps(words).encode())


def sample_tables(rows: int, seed: int) -> dict[str, dict[str, tuple[bytes, bytes, list, str]]]:
    """Generated tables by split: name -> (xml, jpeg, words, expected HTML)."""
    rng = random.Random(seed)
    out: dict[str, dict] = {}
    i = 0
    for split, n in synth.split_sizes(rows, INFO.splits).items():
        out[split] = {}
        for _ in range(n):
            table = random_table(rng)
            jpeg, xml_data, words = draw_table(table)
            out[split][f"PMC{100000 + i}_table_{rng.randint(0, 4)}"] = (xml_data, jpeg, words, expected_html(table))
            i += 1
    return out


def write_sample_mirror(root: Path, rows: int, seed: int) -> None:
    """Generated tables (header rows, spanning cells, projected row headers) in the hub's tarballs."""
    tables = sample_tables(rows, seed)
    write_mirror(root, {s: {n: v[:3] for n, v in items.items()} for s, items in tables.items()})
