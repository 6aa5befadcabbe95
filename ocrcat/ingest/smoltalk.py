"""SmolTalk (HuggingFaceTB/smoltalk): one text-only catalog row per conversation.

Hub layout: `data/{config}/{train,test}-*.parquet` with columns messages (list of {content, role})
and source (the sub-dataset it came from). The config is `all` unless `--config` names another:
one of SmolTalk's component configs, or `smol-smoltalk`, the smaller mix nanochat trains on (a
repo of its own on the hub, HuggingFaceTB/smol-smoltalk: put its `data/*.parquet` files under
`<mirror>/smoltalk/data/smol-smoltalk/`).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Iterator

from ocrcat.ingest import synth
from ocrcat.ingest.base import MirrorError, Option, Record, Rejected, Sample, Shard, SourceInfo
from ocrcat.ingest.parquet import (
    STRING, list_of, plan_split, read_rows, row_key, split_file_name, write_hub_parquet,
)

CONFIGS = (
    "all", "smol-smoltalk", "smol-magpie-ultra", "smol-constraints", "smol-rewrite", "smol-summarize",
    "apigen-80k", "everyday-conversations", "explore-instruct-rewriting", "longalign", "metamathqa-50k",
    "numina-cot-100k", "openhermes-100k", "self-oss-instruct", "systemchats-30k",
)
INFO = SourceInfo(
    name="smoltalk",
    hub_repo="HuggingFaceTB/smoltalk",
    files=("data/all/*.parquet",),
    splits=("train", "test"),
    licence="Apache-2.0",
    one_row_is="a conversation (text only)",
    configs=CONFIGS,
    default_config="all",
    kind="text",
)
OPTIONS: dict[str, Option] = {
    "config": Option("all", f"hub config: {', '.join(CONFIGS)}"),
}
FEATURES = {"messages": list_of({"content": STRING, "role": STRING}), "source": STRING}
ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


def plan(root: Path, split: str, options: dict) -> list[Shard]:
    config = options.get("config") or "all"
    if config not in CONFIGS:  # also keeps the name from ever reaching the file system unchecked
        raise ValueError(f"smoltalk has no config {config!r}; its configs are: {', '.join(CONFIGS)}")
    if not (root / "data" / config).is_dir():
        raise MirrorError(f"no data/{config}/ folder in the smoltalk mirror at {root}; fetch that config, "
                          "or for smol-smoltalk copy HuggingFaceTB/smol-smoltalk's data/*.parquet there")
    return plan_split(root, f"data/{config}/{split}-*.parquet", FEATURES)


def check_roles(messages: object) -> str | None:
    """Why a conversation is malformed, or None: an optional system turn, then user and
    assistant alternating from user, ending with assistant; every content a string."""
    if not isinstance(messages, list) or not messages:
        return "messages is empty"
    if not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
        return "a turn has no string content"
    roles = [m.get("role") for m in messages]
    turns = roles[1:] if roles[0] == "system" else roles
    expected = ["user" if i % 2 == 0 else "assistant" for i in range(len(turns))]
    if not turns or turns != expected:
        return f"roles {roles} are not: optional system, then user and assistant alternating from user"
    if turns[-1] != "assistant":
        return "the conversation ends with a user turn: there is no answer to learn"
    if not messages[-1]["content"].strip():
        return "the last assistant turn is empty"
    return None


def render(messages: list[dict]) -> str:
    """Turns as plain text, `Role: content` separated by blank lines, so SQL can search them."""
    return "\n\n".join(f"{ROLE_NAMES[m['role']]}: {m['content'].strip()}" for m in messages)


def read(shard: Shard, options: dict) -> Iterator[Record]:
    for index, row in read_rows(shard, ["messages", "source"]):
        key = row_key(shard, index)
        problem = check_roles(row["messages"])
        if problem:
            yield Rejected(key, "map", problem)
            continue
        messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
        meta = {"config": options.get("config") or "all", "turns": len(messages)}
        if row["source"]:
            meta["origin"] = row["source"]
        yield Sample(key, render(messages[:-1]), messages[-1]["content"].strip(), None, messages, meta)


def write_sample_mirror(root: Path, rows: int, seed: int) -> None:
    """Conversations about charts and formulas, some with a system turn, some multi-turn."""
    rng = random.Random(seed)
    for split, n in synth.split_sizes(rows, INFO.splits).items():
        records = []
        for _ in range(n):
            chart = synth.random_bar_chart(rng)
            messages = []
            if rng.random() < 0.3:
                messages.append({"content": "You are a careful data analyst.", "role": "system"})
            for question, answer in synth.chart_questions(chart, rng, rng.randint(1, 3)):
                table = json.dumps(dict(zip(chart.categories, chart.values)))
                messages.append({"content": f"{chart.title}: {table}\n{question}", "role": "user"})
                messages.append({"content": f"The answer is {answer}.", "role": "assistant"})
            records.append({"messages": messages, "source": rng.choice(["smol-magpie-ultra", "everyday-conversations"])})
        write_hub_parquet(root / "data" / "all" / split_file_name(split), records, FEATURES)
