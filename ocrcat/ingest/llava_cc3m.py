"""LLaVA-CC3M-Pretrain-595K (liuhaotian/LLaVA-CC3M-Pretrain-595K): one catalog row per caption entry.

Hub layout: `chat.json`, one JSON array of {id, image, conversations: [{from: human, value}, {from: gpt,
value}]}, and `images.zip` whose members (no folder) are named by the `image` field.

chat.json is ~200 MB: `plan` streams it once and records the byte offset of every
ENTRIES_PER_SHARD-th entry, so each shard is a byte range that `read` seeks to; neither ever holds
more than one buffered chunk of it. Images are read from the zip, never extracted: `plan` also
reads the zip's central directory once (595 000 members) and hands each shard the locations of
just its entries' images (30 bytes each), so a worker reads members straight from their offsets
and never builds a zip index of its own.
"""

from __future__ import annotations

import codecs
import json
import random
import re
import zipfile
from pathlib import Path
from typing import BinaryIO, Iterator

from ocrcat.ingest import limits, synth, zipparts
from ocrcat.ingest.base import MirrorError, Option, Record, Rejected, Sample, Shard, SourceInfo, vision_prompt

INFO = SourceInfo(
    name="llava_cc3m",
    hub_repo="liuhaotian/LLaVA-CC3M-Pretrain-595K",
    files=("chat.json", "images.zip"),
    splits=("train",),
    licence="other: CC3M terms of use (images belong to their owners); LLaVA data for research use",
    one_row_is="an image with its caption",
)
OPTIONS: dict[str, Option] = {}
ENTRIES_PER_SHARD = 512
CHUNK = 1 << 20  # bytes of chat.json read at a time
MAX_ENTRY_CHARS = 16 << 20  # an entry is ~0.5 KB; this much text without a complete value is corruption
TAG = "<image>"
# The instructions LLaVA's pretraining data pairs with captions (a sample of them).
PROMPTS = [
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Offer a succinct explanation of the picture presented.",
    "Summarize the visual content of the image.",
    "Share a concise interpretation of the image provided.",
    "Render a clear and concise summary of the photo.",
]


class JSONSyntaxError(ValueError):
    def __init__(self, offset: int, message: str):
        super().__init__(f"chat.json is not valid JSON at byte {offset}: {message}")
        self.offset = offset


_WS = re.compile(r"[ \t\n\r]*")


def iter_array(f: BinaryIO, offset: int = 0) -> Iterator[tuple[int, object]]:
    """(byte offset, value) of each element of a JSON array, decoded chunk by chunk.

    `offset` 0 is the start of the file (the array's `[` follows); any other offset must be the
    start of an element, as an earlier pass reported it. Raises JSONSyntaxError where the text
    stops being a JSON array; everything yielded before it is sound.
    """
    decoder, text = json.JSONDecoder(), codecs.getincrementaldecoder("utf-8")()
    f.seek(offset)
    buf, pos, at, eof = "", 0, offset, False  # `at` is the byte offset of buf[pos]
    bad: JSONSyntaxError | None = None  # invalid UTF-8 met: the text ends before it

    def more() -> None:
        nonlocal buf, pos, eof, bad
        if bad is not None:  # the entries before the bad byte were all parsed: now report it
            raise bad
        start, pending = f.tell(), len(text.getstate()[0])
        data = f.read(CHUNK)
        try:
            decoded = text.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            # Keep the text before the bad byte (whole characters), so its entries are not lost.
            decoded = exc.object[:exc.start].decode("utf-8")
            where = start - pending + exc.start
            bad = JSONSyntaxError(where, f"not UTF-8 ({exc.reason}: byte 0x{exc.object[exc.start]:02x})")
        buf, pos, eof = buf[pos:] + decoded, 0, not data

    def advance(to: int) -> None:
        nonlocal pos, at
        at += len(buf[pos:to].encode("utf-8"))
        pos = to

    def skip_ws() -> str:
        while True:
            advance(_WS.match(buf, pos).end())
            if pos < len(buf) or eof:
                return buf[pos] if pos < len(buf) else ""
            more()

    expect = "start" if offset == 0 else "value"
    while True:
        c = skip_ws()
        if expect == "start":
            if c == "\ufeff":  # a byte-order mark some editors write
                advance(pos + 1)
                c = skip_ws()
            if c != "[":
                raise JSONSyntaxError(at, "expected '[' (chat.json holds one array)")
            advance(pos + 1)
            if skip_ws() == "]":
                return
            expect = "value"
        elif expect == "comma":
            if c == "]":
                return
            if c != ",":
                raise JSONSyntaxError(at, "expected ',' or ']' after an entry" if c else "file ends inside the array")
            advance(pos + 1)
            expect = "value"
        else:
            try:
                value, end = decoder.raw_decode(buf, pos)
                if end == len(buf) and not eof and bad is None:  # it may go on in the next chunk
                    raise json.JSONDecodeError("cut at chunk end", buf, end)
            except RecursionError:
                raise JSONSyntaxError(at, f"an entry nests deeper than Python can parse (JSON nesting cap "
                                          f"{limits.current().max_json_depth})") from None
            except json.JSONDecodeError as exc:
                if eof or len(buf) - pos > MAX_ENTRY_CHARS:
                    raise JSONSyntaxError(at + len(buf[pos:exc.pos].encode("utf-8")), exc.msg) from None
                more()
                continue
            yield at, value
            advance(end)
            expect = "comma"


def plan(root: Path, split: str, options: dict) -> list[Shard]:
    if split != "train":
        return []
    chat, images = root / "chat.json", root / "images.zip"
    for path in (chat, images):
        if not path.is_file():
            raise MirrorError(f"no {path.name} in {root}; run `ocrcat fetch llava_cc3m` or `ocrcat sample-mirror`")
    members = member_index(images)
    shards: list[Shard] = []
    start, count, index = 0, 0, 0
    payload = {"chat": str(chat), "zip": str(images)}
    located: list[bytes | None] = []  # the packed location of each entry's image; None if not in the zip

    def close_shard() -> None:
        if count:
            shards.append(Shard(f"chat.json#{index - count}+{count}", count,
                                {**payload, "offset": start, "first": index - count, "images": located[:]}))
        located.clear()

    with open(chat, "rb") as f:
        try:
            for offset, value in iter_array(f):
                if count == ENTRIES_PER_SHARD:
                    close_shard()
                    count = 0
                if count == 0:
                    start = offset
                name = value.get("image") if isinstance(value, dict) else None
                located.append(members.get(name) if isinstance(name, str) else None)
                count += 1
                index += 1
        except JSONSyntaxError as exc:
            # The entries after a syntax error cannot be found again: one error row says so.
            close_shard()
            count = 0
            shards.append(Shard(f"chat.json@{exc.offset}", 1, {**payload, "broken": str(exc), "offset": exc.offset}))
            return shards
    close_shard()
    return shards


def member_index(images: Path) -> dict[str, bytes]:
    """Member name -> packed MemberLocation, from one streaming pass over the central directory.

    ~180 bytes a member while planning (name, dict slot, 30-byte location: 100 MiB at 595 000);
    zipfile's ZipInfo objects took ~550 (330 MiB) in every worker.
    """
    try:
        with open(images, "rb") as f:
            return {name: loc.packed() for name, loc in zipparts.iter_members(f)}
    except ValueError as exc:
        raise MirrorError(f"{images} is not a zip archive ({exc}; a cut download?); fetch it again") from None


def read(shard: Shard, options: dict) -> Iterator[Record]:
    p = shard.payload
    if "broken" in p:
        yield Rejected(f"chat.json@{p['offset']}", "parse", p["broken"] + "; the entries after it were not read")
        return
    with open(p["chat"], "rb") as f, open(p["zip"], "rb") as archive:
        entries = iter_array(f, p["offset"])
        for index, packed in zip(range(p["first"], p["first"] + shard.size), p["images"]):
            found = next(entries, None)
            if found is None:  # the file changed after planning: say so for each entry not read
                yield Rejected(f"chat.json#{index}", "read", "chat.json ended early; it changed since planning, rerun")
            else:
                loc = zipparts.MemberLocation.unpack(packed) if packed is not None else None
                yield to_record(found[1], index, archive, loc)


def to_record(entry: object, index: int, archive: BinaryIO, loc: zipparts.MemberLocation | None) -> Record:
    """One chat.json entry as a Sample, or the reason it cannot be one.

    `loc` is where planning found the entry's image in `archive` (None: not there).
    """
    if not isinstance(entry, dict):
        return Rejected(f"chat.json#{index}", "parse", f"entry is a JSON {type(entry).__name__}, not an object")
    try:
        limits.check_json_depth(entry)
    except limits.CapExceeded as exc:
        return Rejected(f"chat.json#{index}", "parse", str(exc))
    key = entry.get("id")
    if not isinstance(key, str) or not key.strip():
        return Rejected(f"chat.json#{index}", "parse", "entry has no string id")
    turns = entry.get("conversations")
    if not isinstance(turns, list):
        return Rejected(key, "parse", "entry has no conversations list")
    speakers = [t.get("from") if isinstance(t, dict) else None for t in turns]
    if speakers != ["human", "gpt"] or not all(isinstance(t.get("value"), str) for t in turns):
        return Rejected(key, "map", f"expected one human then one gpt turn with text, got speakers {speakers}")
    human, caption = turns[0]["value"], turns[1]["value"].strip()
    if human.count(TAG) != 1:
        return Rejected(key, "map", f"human turn has {human.count(TAG)} {TAG} tags, expected one")
    prompt = human.replace(TAG, "").strip()
    if not prompt or not caption:
        return Rejected(key, "map", "empty prompt or caption")
    name = entry.get("image")
    if not isinstance(name, str) or not name:
        return Rejected(key, "parse", "entry has no image name")
    if loc is None:  # planning looked the name up in the zip's directory: it never becomes a path
        return Rejected(key, "image", f"image {name!r} is not in images.zip")
    try:
        data = zipparts.read_member(archive, loc, name)
    except limits.CapExceeded as exc:  # a zip bomb, not a CC3M photo
        return Rejected(key, "image", str(exc))
    except (OSError, ValueError) as exc:  # bad CRC, cut archive, bad compression, archive replaced
        return Rejected(key, "image", f"cannot read {name!r} from images.zip: {exc}")
    return Sample(key, vision_prompt(prompt), caption, data, meta={"image": name})


def write_sample_mirror(root: Path, rows: int, seed: int) -> None:
    """Photo-like scenes with CC3M-style captions; the <image> tag at the start or the end."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    entries, keys = [], rng.sample(range(3_300_000), rows)
    with zipfile.ZipFile(root / "images.zip", "w", zipfile.ZIP_STORED) as archive:
        for n in keys:
            key = f"GCC_train_{n:09d}"
            img, caption = synth.draw_scene(rng)
            archive.writestr(f"{key}.jpg", synth.encode(img, "JPEG", quality=85))
            prompt = rng.choice(PROMPTS)
            human = f"{TAG}\n{prompt}" if rng.random() < 0.5 else f"{prompt}\n{TAG}"
            entries.append({"id": key, "image": f"{key}.jpg",
                            "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": caption}]})
    (root / "chat.json").write_text(json.dumps(entries, indent=1))

