"""LLaVA-CC3M: ingest checked against chat.json and images.zip read back independently; the streaming
JSON reader; bad entries; a broken chat.json; member names that look like paths."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from ocrcat.catalog import Catalog
from ocrcat.ingest import llava_cc3m, zipparts
from ocrcat.ingest.base import Rejected
from ocrcat.ingest.limits import Limits
from ocrcat.ingest.runner import ingest

from test_catalog import png_bytes


def catalog_rows(catalog_dir: Path) -> dict[str, dict]:
    with Catalog(catalog_dir, read_only=True) as cat:
        rel = cat.con.execute("SELECT * FROM samples WHERE source = 'llava_cc3m'")
        cols = [d[0] for d in rel.description]
        return {r["source_key"]: r for r in (dict(zip(cols, row)) for row in rel.fetchall())}


def entry(key: str, human: str = "<image>\nDescribe the image concisely.", caption: str = "a dog on a beach .",
          image: str | None = None) -> dict:
    return {"id": key, "image": image or f"{key}.jpg",
            "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": caption}]}


def write_mirror(root: Path, entries: list, members: dict[str, bytes], chat_text: str | None = None) -> Path:
    source = root / "llava_cc3m"
    source.mkdir(parents=True)
    with zipfile.ZipFile(source / "images.zip", "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    (source / "chat.json").write_text(chat_text if chat_text is not None else json.dumps(entries))
    return root


def test_ingest_matches_chat_json_and_zip(sample_mirror_factory, catalog_dir):
    root = sample_mirror_factory("llava_cc3m")
    entries = json.loads((root / "llava_cc3m/chat.json").read_text())
    with Catalog(catalog_dir) as cat:
        [summary] = ingest(cat, "llava_cc3m", mirror=root)
    rows = catalog_rows(catalog_dir)
    assert summary.rows == len(entries) == len(rows) == 40 and summary.errors == 0
    humans = [e["conversations"][0]["value"] for e in entries]
    assert any(h.startswith("<image>") for h in humans) and any(h.endswith("<image>") for h in humans)
    with zipfile.ZipFile(root / "llava_cc3m/images.zip") as archive:
        for e in entries:
            row = rows[e["id"]]
            prompt = e["conversations"][0]["value"].replace("<image>", "").strip()
            assert row["text"] == "<image>\n" + prompt and row["text"].count("<image>") == 1
            assert row["response"] == e["conversations"][1]["value"]
            data = archive.read(e["image"])
            assert (catalog_dir / row["image_path"]).read_bytes() == data
            assert row["image_sha256"] == hashlib.sha256(data).hexdigest()
            assert (row["image_width"], row["image_height"]) == Image.open(io.BytesIO(data)).size
            assert (row["kind"], row["split"], json.loads(row["meta"])["image"]) == ("vision", "train", e["image"])


def test_streaming_reader_offsets_survive_tiny_chunks(tmp_path, monkeypatch):
    """Offsets are byte offsets even with multi-byte UTF-8 cut across chunk edges."""
    values = [entry(f"k{i}", caption="café ☕ naïve — " * i) for i in range(30)] + [{"x": [1, 2.5, None, True]}]
    path = tmp_path / "chat.json"
    path.write_text("\ufeff [\n " + ",\n\t".join(json.dumps(v, ensure_ascii=False) for v in values) + " ]\n",
                    encoding="utf-8")
    monkeypatch.setattr(llava_cc3m, "CHUNK", 7)
    with open(path, "rb") as f:
        found = list(llava_cc3m.iter_array(f))
    assert [v for _, v in found] == values
    with open(path, "rb") as f:
        for offset, value in found[::7]:
            assert next(llava_cc3m.iter_array(f, offset))[1] == value


@pytest.mark.parametrize("text, where", [("[{\"a\": 1}, {\"b\": ]", 17), ("[{\"a\": 1} {\"b\": 2}]", 10),
                                         ("{\"a\": 1}", 0), ("[{\"a\": 1},", 10)])
def test_streaming_reader_reports_where_json_breaks(tmp_path, text, where):
    path = tmp_path / "chat.json"
    path.write_text(text)
    with open(path, "rb") as f, pytest.raises(llava_cc3m.JSONSyntaxError) as exc:
        list(llava_cc3m.iter_array(f))
    assert exc.value.offset == where


def test_plan_shards_are_byte_ranges_of_exact_size(tmp_path, monkeypatch, catalog_dir):
    entries = [entry(f"GCC_{i}") for i in range(10)]
    root = write_mirror(tmp_path, entries, {f"GCC_{i}.jpg": png_bytes((20 + i, 20)) for i in range(10)})
    monkeypatch.setattr(llava_cc3m, "ENTRIES_PER_SHARD", 3)
    shards = llava_cc3m.plan(root / "llava_cc3m", "train", {})
    assert [s.size for s in shards] == [3, 3, 3, 1]
    assert [[r.source_key for r in llava_cc3m.read(s, {})] for s in shards] == [
        [f"GCC_{i}" for i in range(j, min(10, j + 3))] for j in range(0, 10, 3)]
    with Catalog(catalog_dir) as cat:
        [summary] = ingest(cat, "llava_cc3m", mirror=root, limit=5)
        keys = [k for (k,) in cat.con.execute("SELECT source_key FROM samples ORDER BY source_key").fetchall()]
    assert summary.rows == 5 and keys == [f"GCC_{i}" for i in range(5)]


def test_bad_entries_become_error_rows(tmp_path, catalog_dir):
    good = png_bytes((40, 30))
    entries = [
        entry("ok_start"),
        entry("ok_end", human="Summarize the visual content of the image.\n<image>"),
        entry("missing_image"),
        {"id": "no_conversations", "image": "ok_start.jpg"},
        entry("three_turns") | {"conversations": entry("x")["conversations"] + [{"from": "human", "value": "more?"}]},
        entry("gpt_first") | {"conversations": entry("x")["conversations"][::-1]},
        entry("no_tag", human="Describe the image concisely."),
        entry("broken_image"),
        "not an object",
        entry("ok_start", caption="a second entry with the same id ."),
    ]
    members = {"ok_start.jpg": good, "ok_end.jpg": png_bytes((50, 30)), "no_tag.jpg": good,
               "three_turns.jpg": good, "gpt_first.jpg": good, "broken_image.jpg": good[: len(good) // 2]}
    root = write_mirror(tmp_path, entries, members)
    with Catalog(catalog_dir) as cat:
        [summary] = ingest(cat, "llava_cc3m", mirror=root)
        errors = {k: (stage, msg) for k, stage, msg in
                  cat.con.execute("SELECT source_key, stage, message FROM ingest_errors").fetchall()}
    rows = catalog_rows(catalog_dir)
    assert set(rows) == {"ok_start", "ok_end"}
    assert rows["ok_end"]["text"] == "<image>\nSummarize the visual content of the image."
    assert rows["ok_start"]["response"] == "a dog on a beach ."  # the first of two entries with one id
    assert {k: stage for k, (stage, _) in errors.items()} == {
        "missing_image": "image", "no_conversations": "parse", "three_turns": "map", "gpt_first": "map",
        "no_tag": "map", "broken_image": "image", "chat.json#8": "parse", "ok_start": "insert"}
    assert "not in images.zip" in errors["missing_image"][1]
    assert "no conversations" in errors["no_conversations"][1]
    assert (summary.rows, summary.errors) == (2, 8)


def test_broken_chat_json_keeps_what_came_before(tmp_path, catalog_dir):
    text = json.dumps([entry(f"GCC_{i}") for i in range(4)])
    cut = text[: text.index('"GCC_3"') + 20]  # chat.json cut in the middle of the last entry
    root = write_mirror(tmp_path, [], {f"GCC_{i}.jpg": png_bytes((30 + i, 20)) for i in range(4)}, cut)
    with Catalog(catalog_dir) as cat:
        [summary] = ingest(cat, "llava_cc3m", mirror=root)
        [(key, stage, message)] = cat.con.execute("SELECT source_key, stage, message FROM ingest_errors").fetchall()
    assert set(catalog_rows(catalog_dir)) == {"GCC_0", "GCC_1", "GCC_2"}
    assert stage == "parse" and key.startswith("chat.json@") and "not valid JSON at byte" in message
    assert summary.status == "completed"


def test_member_names_never_become_paths(tmp_path, catalog_dir):
    names = ["../../escape.jpg", "/abs/olute.jpg", "sub/dir/x.jpg"]
    entries = [entry(f"e{i}", image=name) for i, name in enumerate(names)]
    root = write_mirror(tmp_path / "m", entries, {n: png_bytes((10 + i, 10)) for i, n in enumerate(names)})
    with Catalog(catalog_dir) as cat:
        [summary] = ingest(cat, "llava_cc3m", mirror=root)
    assert summary.rows == 3
    stored = sorted(p.relative_to(catalog_dir).as_posix() for p in (catalog_dir / "images").rglob("*.png"))
    assert stored == sorted(r["image_path"] for r in catalog_rows(catalog_dir).values())
    assert all(p.startswith("images/llava_cc3m/") for p in stored)
    assert not list(tmp_path.rglob("escape.jpg")) and not Path("/abs/olute.jpg").exists()


def test_missing_zip_is_a_clear_mirror_error(tmp_path, catalog_dir):
    (tmp_path / "llava_cc3m").mkdir()
    (tmp_path / "llava_cc3m/chat.json").write_text("[]")
    with Catalog(catalog_dir) as cat, pytest.raises(ValueError, match="no images.zip"):
        ingest(cat, "llava_cc3m", mirror=tmp_path)


def test_images_zip_that_is_not_a_zip_is_a_clear_mirror_error(tmp_path, catalog_dir):
    write_mirror(tmp_path, [entry("a")], {"a.jpg": png_bytes()})
    data = (tmp_path / "llava_cc3m/images.zip").read_bytes()
    (tmp_path / "llava_cc3m/images.zip").write_bytes(data[: len(data) // 2])
    with Catalog(catalog_dir) as cat, pytest.raises(ValueError, match="not a zip archive"):
        ingest(cat, "llava_cc3m", mirror=tmp_path)


def test_interrupted_ingest_resumes_at_the_unfinished_byte_range(tmp_path, monkeypatch, catalog_dir):
    root = write_mirror(tmp_path, [entry(f"GCC_{i}") for i in range(10)],
                       {f"GCC_{i}.jpg": png_bytes((20 + i, 20)) for i in range(10)})
    monkeypatch.setattr(llava_cc3m, "ENTRIES_PER_SHARD", 3)
    real = llava_cc3m.to_record

    def interrupted(found, index, *rest):
        if index == 7:
            raise KeyboardInterrupt
        return real(found, index, *rest)

    monkeypatch.setattr(llava_cc3m, "to_record", interrupted)
    with Catalog(catalog_dir) as cat, pytest.raises(KeyboardInterrupt):
        ingest(cat, "llava_cc3m", mirror=root)
    monkeypatch.setattr(llava_cc3m, "to_record", real)
    with Catalog(catalog_dir) as cat:
        [summary] = ingest(cat, "llava_cc3m", mirror=root)
    assert (summary.shards_resumed, summary.shards_total, summary.rows) == (2, 4, 10)
    assert sorted(catalog_rows(catalog_dir)) == sorted(f"GCC_{i}" for i in range(10))


def test_shards_carry_only_their_entries_image_locations(tmp_path, monkeypatch):
    entries = [entry(f"GCC_{i}") for i in range(7)] + ["not an object", entry("gone")]
    root = write_mirror(tmp_path, entries, {f"GCC_{i}.jpg": png_bytes((20 + i, 20)) for i in range(7)})
    monkeypatch.setattr(llava_cc3m, "ENTRIES_PER_SHARD", 4)
    shards = llava_cc3m.plan(root / "llava_cc3m", "train", {})
    located = [[p and zipparts.MemberLocation.unpack(p) for p in s.payload["images"]] for s in shards]
    assert [len(x) for x in located] == [s.size for s in shards] == [4, 4, 1]
    with zipfile.ZipFile(root / "llava_cc3m/images.zip") as z:
        offsets = [z.getinfo(f"GCC_{i}.jpg").header_offset for i in range(7)]
    assert [loc.offset for loc in located[0] + located[1][:3]] == offsets
    assert located[1][3] is None and located[2] == [None]  # not an object; image not in the zip


def test_damaged_or_oversized_members_are_image_errors(tmp_path, monkeypatch, catalog_dir):
    good, big, bad = png_bytes((30, 20)), png_bytes((60, 60)), png_bytes((31, 20))
    root = write_mirror(tmp_path, [entry("good"), entry("big"), entry("bad")],
                        {"good.jpg": good, "big.jpg": big, "bad.jpg": bad})
    path = root / "llava_cc3m/images.zip"
    data = path.read_bytes()
    at = data.index(bad) + len(bad) // 2
    path.write_bytes(data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:])  # one flipped byte in bad.jpg
    cap = Limits(max_member_bytes=(len(good) + len(big)) // 2)
    with Catalog(catalog_dir) as cat:
        [summary] = ingest(cat, "llava_cc3m", mirror=root, limits=cap)
        errors = dict(cat.con.execute("SELECT source_key, message FROM ingest_errors").fetchall())
    assert (summary.rows, set(catalog_rows(catalog_dir))) == (1, {"good"})
    assert "'big.jpg'" in errors["big"] and "member cap" in errors["big"] and "--max-member-mb" in errors["big"]
    assert "cannot read 'bad.jpg' from images.zip" in errors["bad"] and "CRC" in errors["bad"]


def test_zip_changed_after_planning_is_not_read_silently(tmp_path):
    entries = [entry(f"GCC_{i}") for i in range(4)]
    images = {f"GCC_{i}.jpg": png_bytes((20, 20)) for i in range(4)}
    root = write_mirror(tmp_path, entries, images)
    path = root / "llava_cc3m/images.zip"
    [shard] = llava_cc3m.plan(root / "llava_cc3m", "train", {})
    original = path.read_bytes()
    with zipfile.ZipFile(path, "w") as z:  # the same members at the same offsets, in another order
        for name in reversed(images):
            z.writestr(name, images[name])
    records = list(llava_cc3m.read(shard, {}))
    assert all(isinstance(r, Rejected) and "changed since planning, rerun" in r.message for r in records)
    with zipfile.ZipFile(io.BytesIO(original)) as z:
        cut = z.getinfo("GCC_2.jpg").header_offset + 40
    path.write_bytes(original[:cut])  # cut short after planning: inside GCC_2's data
    records = list(llava_cc3m.read(shard, {}))
    assert [type(r).__name__ for r in records] == ["Sample", "Sample", "Rejected", "Rejected"]
    assert "cut short" in records[2].message and "no zip local header" in records[3].message
