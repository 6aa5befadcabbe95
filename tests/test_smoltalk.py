"""SmolTalk: text rows with the conversation kept, checked against the mirror's messages; the real
SmolTalk row; role validation; --config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import REALDATA
from ocrcat.catalog import Catalog
from ocrcat.ingest import smoltalk
from ocrcat.ingest.parquet import split_file_name, write_hub_parquet
from ocrcat.ingest.runner import ingest

ROLE = {"system": "System", "user": "User", "assistant": "Assistant"}


def catalog_rows(catalog_dir: Path) -> dict[tuple[str, str], dict]:
    with Catalog(catalog_dir, read_only=True) as cat:
        rel = cat.con.execute("SELECT * FROM samples WHERE source = 'smoltalk'")
        cols = [d[0] for d in rel.description]
        return {(r["split"], r["source_key"]): r for r in (dict(zip(cols, row)) for row in rel.fetchall())}


def test_ingest_matches_the_mirror_conversations(sample_mirror_factory, catalog_dir):
    root = sample_mirror_factory("smoltalk")
    with Catalog(catalog_dir) as cat:
        summaries = ingest(cat, "smoltalk", mirror=root)
    rows = catalog_rows(catalog_dir)
    records = {}
    for path in sorted((root / "smoltalk/data/all").glob("*.parquet")):
        for i, record in enumerate(pq.read_table(path).to_pylist()):
            records[(path.name.split("-")[0], f"data/all/{path.name}#{i}")] = record
    assert len(records) == len(rows) == sum(s.rows for s in summaries) == 40
    assert {split for split, _ in rows} == {"train", "test"}
    assert any(r["messages"][0]["role"] == "system" for r in records.values())
    assert any(len(r["messages"]) > 3 for r in records.values())
    for key, record in records.items():
        row = rows[key]
        messages = record["messages"]
        assert json.loads(row["messages"]) == [{"role": m["role"], "content": m["content"]} for m in messages]
        assert row["text"] == "\n\n".join(f"{ROLE[m['role']]}: {m['content']}" for m in messages[:-1])
        assert row["response"] == messages[-1]["content"]
        assert (row["kind"], row["image_path"], row["image_tokens"]) == ("text", None, None)
        assert json.loads(row["meta"])["origin"] == record["source"]


def write_rows(root: Path, messages: list, config: str = "all", split: str = "train") -> str:
    rel = f"data/{config}/{split_file_name(split)}"
    write_hub_parquet(root / "smoltalk" / rel, [{"messages": m, "source": "test"} for m in messages], smoltalk.FEATURES)
    return rel


def test_realdata_smoltalk_row(tmp_path, catalog_dir):
    record = json.loads((REALDATA / "smoltalk/raw_dump_sample.jsonl").read_text().splitlines()[0])
    rel = f"data/all/{split_file_name('train')}"
    write_hub_parquet(tmp_path / "smoltalk" / rel, [record], smoltalk.FEATURES)
    with Catalog(catalog_dir) as cat:
        [summary] = ingest(cat, "smoltalk", mirror=tmp_path)
        found = cat.con.execute("SELECT count(*) FROM samples WHERE text ILIKE '%functional equation%'").fetchone()[0]
    row = catalog_rows(catalog_dir)[("train", f"{rel}#0")]
    user, assistant = record["messages"]
    assert summary.rows == 1 and found == 1
    assert row["text"] == "User: " + user["content"].strip() and row["response"] == assistant["content"].strip()
    assert json.loads(row["messages"]) == [{"role": "user", "content": user["content"]},
                                           {"role": "assistant", "content": assistant["content"]}]
    assert json.loads(row["meta"]) == {"config": "all", "origin": "numina-cot-100k", "turns": 2}


def turn(role: str, content: str | None = "hi") -> dict:
    return {"role": role, "content": content}


def test_malformed_conversations_become_error_rows(tmp_path, catalog_dir):
    conversations = [
        [turn("user"), turn("assistant")],
        [turn("system"), turn("user"), turn("assistant"), turn("user"), turn("assistant")],
        [turn("assistant"), turn("user"), turn("assistant")],  # starts with the assistant
        [turn("user"), turn("user"), turn("assistant")],
        [turn("user"), turn("assistant"), turn("user")],  # no answer to the last question
        [turn("user"), turn("system"), turn("assistant")],
        [turn("user"), turn("assistant", None)],  # content missing
        [turn("user"), turn("assistant", "  ")],
        [turn("user"), turn("bot")],
        [],
    ]
    rel = write_rows(tmp_path, conversations)
    with Catalog(catalog_dir) as cat:
        [summary] = ingest(cat, "smoltalk", mirror=tmp_path)
        errors = dict(cat.con.execute("SELECT source_key, message FROM ingest_errors").fetchall())
    assert {k for _, k in catalog_rows(catalog_dir)} == {f"{rel}#0", f"{rel}#1"}
    assert set(errors) == {f"{rel}#{i}" for i in range(2, 10)}
    assert "alternating from user" in errors[f"{rel}#2"] and "ends with a user turn" in errors[f"{rel}#4"]
    assert "no string content" in errors[f"{rel}#6"] and "empty" in errors[f"{rel}#9"]
    assert (summary.rows, summary.errors) == (2, 8)


def test_config_option_reads_that_configs_folder(tmp_path, catalog_dir):
    write_rows(tmp_path, [[turn("user", "from all"), turn("assistant")]])
    rel = write_rows(tmp_path, [[turn("user", "from smol"), turn("assistant")]] * 3, config="smol-smoltalk")
    cli = [sys.executable, "-m", "ocrcat.cli", "ingest", "smoltalk", "--mirror", str(tmp_path),
           "--catalog", str(catalog_dir)]
    done = subprocess.run(cli + ["--config", "smol-smoltalk"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = catalog_rows(catalog_dir)
    assert {k for _, k in rows} == {f"{rel}#{i}" for i in range(3)}
    assert {r["text"] for r in rows.values()} == {"User: from smol"}
    assert {json.loads(r["meta"])["config"] for r in rows.values()} == {"smol-smoltalk"}
    for config, message in [("nope", "has no config 'nope'"), ("smol-rewrite", "no data/smol-rewrite/ folder")]:
        done = subprocess.run(cli + ["--config", config], capture_output=True, text=True)
        assert done.returncode == 2 and message in " ".join(done.stderr.split())


def test_render_is_plain_role_prefixed_text():
    assert smoltalk.render([turn("system", "Be brief."), turn("user", " 2+2? ")]) == "System: Be brief.\n\nUser: 2+2?"
    assert smoltalk.check_roles([turn("system"), turn("assistant")]) is not None
    assert smoltalk.check_roles([turn("user"), turn("assistant")]) is None


@pytest.mark.parametrize("split", ["train", "test"])
def test_split_files_are_found_per_config(tmp_path, split):
    write_rows(tmp_path, [[turn("user"), turn("assistant")]] * 2, split=split)
    [shard] = smoltalk.plan(tmp_path / "smoltalk", split, {"config": "all"})
    assert shard.size == 2 and shard.payload["file"] == f"data/all/{split_file_name(split)}"
