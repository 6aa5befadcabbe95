"""DocBank (liminghao1630/DocBank): one catalog row per page, a reading-order markdown transcript.

Hub layout: `DocBank_500K_txt.zip` (a `{name}_{page}.txt` per page: ten TAB fields a token, CRLF)
and `DocBank_500K_ori_img.zip.001` … `.010`, ONE zip cut into 5 GiB byte ranges (members
`{name}_{page}_ori.jpg`). The parts are read as one archive through a seekable file object; they
are never joined on disk. Splits come from DocBank's split lists (`indexed_files/500K_{train,dev,
test}.txt`, from its GitHub repo): a page in the dev list -> val, in the test list -> test, any
other page -> train (DocBank's train split is the rest); 80/10/10 by a hash of the name only
when the mirror has no list at all.

The transcript is a training target: pdfminer's `(cid:N)` placeholders are counted in
`meta.cid` and dropped from it unless `-o keep_cid=true`; running heads are plain lines.

A shard is a run of pages (by name); planning records where each member sits in the archives,
so a worker reads exactly its pages' bytes and holds one page at a time.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
import zipfile
from pathlib import Path
from typing import Iterator

from PIL import Image, ImageDraw

from ocrcat.ingest import synth
from ocrcat.ingest.base import MirrorError, Option, Record, Rejected, Sample, Shard, SourceInfo, vision_prompt
from ocrcat.ingest.docbank_layout import count_cid, parse_tokens, strip_cid, transcript
from ocrcat.ingest.zipparts import MemberLocation, member_locations, open_parts, read_member, zip_parts

INFO = SourceInfo(
    name="docbank",
    hub_repo="liminghao1630/DocBank",
    files=("DocBank_500K_txt.zip", "DocBank_500K_ori_img.zip.*"),
    splits=("train", "val", "test"),
    licence="Apache-2.0 (DocBank asks not to redistribute the data)",
    one_row_is="a page",
)
OPTIONS = {
    "pages_per_shard": Option(256, "pages per shard (a worker holds one page at a time)"),
    "keep_cid": Option(False, "keep pdfminer's (cid:N) placeholders in the transcript (default: dropped, "
                              "counted in meta.cid)"),
}
TXT_ZIP = "DocBank_500K_txt.zip"
IMG_ZIP = "DocBank_500K_ori_img.zip"
SPLIT_LISTS = {"train": "500K_train.txt", "val": "500K_dev.txt", "test": "500K_test.txt"}


def page_name(member: str) -> str:
    """`x/{name}_{page}_ori.jpg`, `{name}_{page}.txt` or a split-list entry -> `{name}_{page}`."""
    base = member.strip().rsplit("/", 1)[-1]
    for suffix in (".txt", ".jpg", ".png", "_ori"):
        base = base.removesuffix(suffix)
    return base


def hash_split(name: str) -> str:
    """80/10/10 by a stable hash of the page name: the same split on every machine."""
    bucket = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big") % 10
    return "train" if bucket < 8 else ("val" if bucket == 8 else "test")


def _signature(root: Path) -> tuple:
    files = sorted(p for p in root.glob("DocBank_500K_*") if p.is_file())
    lists = sorted((root / "indexed_files").glob("500K_*.txt"))
    return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files + lists)


@functools.lru_cache(maxsize=2)
def _pages(root: Path, signature: tuple) -> dict[str, list[tuple]]:
    """Every page of the mirror by split: (name, txt location, image location or None, origin).

    Cached: the runner plans each split in turn, and listing 500 000 members is not free.
    """
    txt_parts = zip_parts(root, TXT_ZIP)
    img_parts = zip_parts(root, IMG_ZIP)
    if not txt_parts:
        raise MirrorError(f"no {TXT_ZIP} in {root}; run `ocrcat fetch docbank` or `ocrcat sample-mirror`")
    if not img_parts:
        raise MirrorError(f"no {IMG_ZIP}.001 … parts in {root}; fetch all image zip parts")
    texts = {page_name(m): loc for m, loc in member_locations(txt_parts).items() if m.endswith(".txt")}
    images = {page_name(m): loc for m, loc in member_locations(img_parts).items() if m.endswith("_ori.jpg")}
    listed: dict[str, str] = {}
    lists = [(split, root / "indexed_files" / file) for split, file in SPLIT_LISTS.items()]
    for split, path in lists:
        if path.is_file():
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        listed[page_name(line.split()[0])] = split
    any_list = any(path.is_file() for _, path in lists)
    by_split: dict[str, list[tuple]] = {s: [] for s in INFO.splits}
    for name in sorted(texts):
        if name in listed:
            split, origin = listed[name], "list"
        elif any_list:
            split, origin = "train", "rest"  # DocBank's train split is every page not in dev or test
        else:
            split, origin = hash_split(name), "hash"
        by_split[split].append((name, texts[name], images.get(name), origin))
    return by_split


def plan(root: Path, split: str, options: dict) -> list[Shard]:
    pages = _pages(root, _signature(root))[split]
    n = max(1, int(options.get("pages_per_shard", 256)))
    shards = []
    for start in range(0, len(pages), n):
        chunk = pages[start:start + n]
        shards.append(Shard(f"{chunk[0][0]}+{len(chunk)}", len(chunk),
                            {"root": str(root), "pages": chunk}))
    return shards


def read(shard: Shard, options: dict) -> Iterator[Record]:
    root = Path(shard.payload["root"])
    keep_cid = bool(options.get("keep_cid", False))
    with open_parts(zip_parts(root, TXT_ZIP)) as txt, open_parts(zip_parts(root, IMG_ZIP)) as img:
        for name, txt_loc, img_loc, origin in shard.payload["pages"]:
            yield _page(name, txt, txt_loc, img, img_loc, origin, keep_cid)


def _page(name: str, txt, txt_loc: MemberLocation, img, img_loc: MemberLocation | None, origin: str,
          keep_cid: bool = False) -> Record:
    try:
        content = read_member(txt, txt_loc).decode("utf-8")
    except (ValueError, UnicodeDecodeError) as exc:
        return Rejected(name, "read", f"{name}.txt: {exc}")
    try:
        tokens = parse_tokens(content)
    except ValueError as exc:
        return Rejected(name, "parse", f"{name}.txt: {exc}")
    paper, _, page = name.rpartition("_")
    cid = count_cid(tokens)
    # DocBank numbers a paper's pages from 0: page 0 is the one whose title is a heading.
    text, columns, running_heads = transcript(tokens if keep_cid else strip_cid(tokens), first_page=page == "0")
    if not text:
        return Rejected(name, "map", "page has no text tokens (only lines and figures)")
    if img_loc is None:
        return Rejected(name, "image", f"page has no image: {name}_ori.jpg is not in {IMG_ZIP}")
    try:
        image = read_member(img, img_loc)
    except ValueError as exc:
        return Rejected(name, "image", f"{name}_ori.jpg: {exc}")
    meta = {"paper": paper, "page": int(page) if page.isdigit() else page, "columns": columns,
            "labels": sorted({t.label for t in tokens}), "split_from": origin, "cid": cid,
            "running_heads": running_heads}
    return Sample(name, vision_prompt(text), None, image, meta=meta)


# --- sample mirror ----------------------------------------------------------------------------

WORDS = ("the of model data we results method training page table layout network text image "
         "learning results section figure analysis structure approach show performance value "
         "proposed based using different large small each which this that between over under "
         "document token label reading column order paper evaluation baseline accuracy dataset").split()
_FONT = {"title": (14, 22), "author": (9, 15), "section": (10, 16), "paragraph": (8, 14),
         "equation": (8, 14), "footer": (8, 14)}  # label -> (char width, height) in page units
_GAP = {"title": 10, "author": 7, "section": 7, "paragraph": 6, "equation": 6, "footer": 6}


def random_blocks(rng: random.Random, first_page: bool, sections: int = 2) -> list[tuple[str, str]]:
    """(label, text) blocks of a page in reading order: a title page or a body page."""
    sentence = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
    blocks = []
    if first_page:
        blocks += [("title", sentence(rng.randint(4, 7)).title()), ("author", "A. Author and B. Writer")]
    for s in range(sections + rng.randint(0, 1)):
        blocks.append(("section", f"{s + 1}. {sentence(rng.randint(1, 3)).title()}"))
        for _ in range(rng.randint(1, 3)):
            blocks.append(("paragraph", sentence(rng.randint(25, 70)).capitalize() + "."))
        if rng.random() < 0.4:
            # Half the equations hold a glyph pdfminer could not map, as `(cid:N)`: real pages
            # with equations mostly do.
            glyph = f"(cid:{rng.randint(10, 120)}) " if rng.random() < 0.5 else ""
            blocks.append(("equation", f"{glyph}y = {rng.randint(2, 9)} x + {rng.randint(1, 9)} ({s + 1})"))
    return blocks


PARINDENT = 15  # page units: the first line of a paragraph that follows a paragraph, as LaTeX sets it


def layout_page(blocks: list[tuple[str, str]], two_columns: bool, page_number: int,
                running_head: str | None = None) -> tuple[list, str]:
    """Place blocks on a 1000x1000 page; returns (tokens (text, x0, y0, x1, y1, label), transcript).

    Title and author run across the page; the rest flows down the left column, then the right.
    Lines are justified like typeset text; a paragraph's last line is kept short, as in print.
    A paragraph that follows a paragraph starts with an indented line and no space above it.
    `running_head`: a small title-labelled line at the top of the page, as DocBank labels running
    heads (plain text in the transcript, not a heading). `(cid:N)` tokens are left out of the
    transcript. What does not fit on the page is left out of both.
    """
    tokens: list[tuple] = []
    expected = []
    cols = [(70, 480), (520, 930)] if two_columns else [(100, 900)]
    bottom, col, top = 930, 0, 60
    y = top
    if running_head:
        words = running_head.split()
        x = 500 - (sum(len(w) * 7 for w in words) + 5 * (len(words) - 1)) / 2
        for w in words:
            tokens.append((w, round(x), 28, round(x + len(w) * 7), 40, "title"))
            x += len(w) * 7 + 5
        expected.append(running_head)
    for n, (label, text) in enumerate(blocks):
        cw, h = _FONT[label]
        full = label in ("title", "author")
        x_left, x_right = (cols[0][0], cols[-1][1]) if full else cols[col]
        indent = PARINDENT if label == "paragraph" and n > 0 and blocks[n - 1][0] == "paragraph" else 0
        lines = _break_lines(text.split(), cw, _GAP[label], x_right - x_left, label == "paragraph", indent)
        placed = []
        for i, words in enumerate(lines):
            if y + h > bottom:
                if full or col + 1 == len(cols):
                    break
                col, y = col + 1, top
                x_left, x_right = cols[col]
            start = x_left + (indent if i == 0 else 0)
            widths = [len(v) * cw for v in words]
            natural = sum(widths) + _GAP[label] * (len(words) - 1)
            gap, x = _GAP[label], start
            if label == "paragraph" and i < len(lines) - 1 and len(words) > 1:
                gap = (x_right - start - sum(widths)) / (len(words) - 1)  # justified
            elif label in ("title", "author", "equation"):
                x = x_left + (x_right - x_left - natural) / 2  # centred
            for v, wdt in zip(words, widths):
                tokens.append((v, round(x), y, round(x + wdt), y + h, label))
                x += wdt + gap
            placed += words
            y += h + 4
        placed = [w for w in placed if not w.startswith("(cid:")]
        if placed:
            expected.append({"title": "# ", "section": "## "}.get(label, "") + " ".join(placed))
        if not (label == "paragraph" and n + 1 < len(blocks) and blocks[n + 1][0] == "paragraph"):
            y += 14
        if full:
            top = y
    number = str(page_number)
    tokens.append((number, 500 - 4 * len(number), 960, 500 + 4 * len(number), 974, "footer"))
    expected.append(number)
    return tokens, "\n\n".join(expected)


def _break_lines(words: list[str], cw: int, gap: int, width: int, paragraph: bool, indent: int = 0) -> list[list[str]]:
    lines, line = [], []
    for w in words:
        if line and sum(len(v) * cw for v in line + [w]) + gap * len(line) > width - (indent if not lines else 0):
            lines.append(line)
            line = []
        line.append(w)
    # A paragraph's last line ends short of the margin (the reader tells paragraphs apart so).
    if paragraph and len(line) > 1 and sum(len(v) * cw for v in line) + gap * (len(line) - 1) > 0.85 * width:
        lines.append(line[:-1])
        line = line[-1:]
    lines.append(line)
    return lines


@functools.lru_cache(maxsize=16)
def _font(size: int):
    return synth.font(size)


def draw_page(tokens: list[tuple], width: int = 500, height: int = 647, greek: bool = False) -> Image.Image:
    """The page image; `greek` draws each word as a grey bar (fast, for benchmarks at scale)."""
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    for text, x0, y0, x1, y1, label in tokens:
        if greek:
            d.rectangle([x0 * width / 1000, (y0 + 3) * height / 1000, x1 * width / 1000, (y1 - 3) * height / 1000],
                        fill=(90, 90, 90))
            continue
        size = max(6, int((y1 - y0) * height / 1000))
        d.text((x0 * width / 1000, y0 * height / 1000), text, fill="black", font=_font(size))
    return img


def token_lines(tokens: list[tuple]) -> str:
    """The page's `.txt`: tokens in pdfplumber order (straight across both columns), CRLF."""
    font = {"title": "NimbusRomNo9L-Medi", "section": "NimbusRomNo9L-Medi"}
    ordered = sorted(tokens, key=lambda t: (t[2], t[1]))
    lines = [f"{t}\t{x0}\t{y0}\t{x1}\t{y1}\t0\t0\t0\t{font.get(lab, 'NimbusRomNo9L-Regu')}\t{lab}"
             for t, x0, y0, x1, y1, lab in ordered]
    lines.insert(len(lines) // 2, "##LTLine##\t60\t500\t940\t501\t0\t0\t0\tNone\tparagraph")
    return "".join(line + "\r\n" for line in lines)


def write_mirror(root: Path, pages: dict[str, tuple[str, bytes | None]], parts: int = 3,
                 split_lists: dict[str, list[str]] | None = None) -> None:
    """Write a DocBank mirror: the txt zip, the image zip cut into `parts` byte ranges, split lists.

    `pages` maps page name -> (txt content, JPEG bytes or None for a page without image).
    """
    root.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(root / TXT_ZIP, "w", zipfile.ZIP_DEFLATED) as z:
        for name, (content, _) in pages.items():
            z.writestr(f"{name}.txt", content.encode("utf-8"))
    whole = root / f"{IMG_ZIP}.whole"
    with zipfile.ZipFile(whole, "w", zipfile.ZIP_STORED) as z:
        for name, (_, image) in pages.items():
            if image is not None:
                z.writestr(f"{name}_ori.jpg", image)
    size = whole.stat().st_size
    part_size = math.ceil(size / parts)
    with open(whole, "rb") as f:
        for i in range(parts):
            with open(root / f"{IMG_ZIP}.{i + 1:03d}", "wb") as out:
                left = part_size
                while left > 0 and (chunk := f.read(min(left, 1 << 20))):
                    out.write(chunk)
                    left -= len(chunk)
    whole.unlink()
    for split, names in (split_lists or {}).items():
        path = root / "indexed_files" / SPLIT_LISTS[split]
        path.parent.mkdir(exist_ok=True)
        path.write_text("".join(f"{n}_ori.jpg\n" for n in names), encoding="utf-8")


def sample_pages(rows: int, seed: int, image_size: tuple[int, int] = (500, 647),
                 greek: bool = False) -> dict[str, tuple[str, bytes, str]]:
    """Generated pages: name -> (txt content, JPEG, expected transcript); half are two-column."""
    rng = random.Random(seed)
    pages = {}
    for i in range(rows):
        paper = f"{i // 4}.tar_{1800 + i // 4}.{rng.randint(10000, 99999)}.gz_paper{i // 4}"
        name = f"{paper}_{i % 4}"
        # Two-column pages get enough text to fill well into the right column, as full pages
        # do (a right column of a line or two is not told apart from a ragged margin).
        two = rng.random() < 0.5
        # Pages after a paper's first carry its running head, page number glued on.
        head = f"{paper.split('_')[-1].title()} Results {i % 4 + 1}" if i % 4 else None
        tokens, expected = layout_page(random_blocks(rng, i % 4 == 0, 4 if two else 2), two, i % 4 + 1, head)
        while two and sum(1 for t in tokens if t[1] >= 520) < 40:
            tokens, expected = layout_page(random_blocks(rng, i % 4 == 0, 5), two, i % 4 + 1, head)
        image = synth.encode(draw_page(tokens, *image_size, greek=greek), "JPEG", 80)
        pages[name] = (token_lines(tokens), image, expected)
    return pages


def write_sample_mirror(root: Path, rows: int, seed: int) -> None:
    """Generated one- and two-column pages, the image zip in 3 parts, split lists included."""
    pages = sample_pages(rows, seed)
    names = list(pages)
    sizes = synth.split_sizes(rows, INFO.splits)
    lists = {"train": names[:sizes["train"]], "val": names[sizes["train"]:sizes["train"] + sizes["val"]],
             "test": names[sizes["train"] + sizes["val"]:]}
    write_mirror(root, {n: (t, img) for n, (t, img, _) in pages.items()}, parts=3, split_lists=lists)
