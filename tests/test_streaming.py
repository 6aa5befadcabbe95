"""Streaming reads for multi-node training: an `--embed-images` export on the S3 server (moto, started
by scripts/services.sh) read back by `datasets` and by MixtureDataset on 2 ranks, each rank fetching
only its own row groups, equals the same export read from a local folder; block dealing resumes
exactly."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest
import torch

from ocrcat.catalog import Catalog
from ocrcat.catalog.objects import filesystem
from ocrcat.ingest.runner import ingest
from ocrcat.mix.collate import VisionCollator
from ocrcat.mix.dataset import MixtureDataset
from ocrcat.mix.embed import export_embedded
from ocrcat.mix.mixtures import create_mixture
from ocrcat.mix.sampler import PlanBatchSampler

S3 = os.environ.get("OCRCAT_TEST_S3_ENDPOINT")
needs_s3 = pytest.mark.skipif(not S3, reason="no S3 server: eval \"$(scripts/services.sh start)\"")
BUCKET = "ocrcat-streaming"
ROW_GROUP = 8


@pytest.fixture(scope="module")
def exports(sample_mirror_factory, tmp_path_factory):
    """One mixture exported with its images twice: to a local folder and to s3://…; (local, url)."""
    saved = dict(os.environ)
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=S3 or "")
    pafs.S3FileSystem(endpoint_override=S3.split("://", 1)[-1], scheme="http",
                      allow_bucket_creation=True).create_dir(BUCKET)
    catalog_dir = tmp_path_factory.mktemp("streaming") / "catalog"
    with Catalog(catalog_dir) as cat:
        for source in ("chartqa", "figureqa"):
            ingest(cat, source, mirror=sample_mirror_factory(source, rows=60))
        create_mixture(cat, "charts", [("charts", "split = 'train'", 1.5)], seed=4)
        local = catalog_dir.parent / "export"
        url = f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}/charts"
        export_embedded(cat, "charts", local, row_group=ROW_GROUP)
        export_embedded(cat, "charts", url, row_group=ROW_GROUP)
    yield local, url
    os.environ.clear()
    os.environ.update(saved)


@needs_s3
def test_the_s3_export_is_what_datasets_decodes_as_images(exports, tmp_path):
    import datasets

    local, url = exports
    fs, base = filesystem(url)
    shards = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(base)) if i.path.endswith(".parquet"))
    assert shards
    copies = []
    for key in shards:  # datasets reads s3:// only through s3fs (not installed): fetch the objects as they are
        with fs.open_input_stream(key) as f:
            data = f.read()
        assert data == (local / Path(key).name).read_bytes()  # the same bytes as the local export
        copies.append(tmp_path / Path(key).name)
        copies[-1].write_bytes(data)
    ds = datasets.load_dataset("parquet", data_files=[str(p) for p in copies], split="train")
    assert isinstance(ds.features["image"], datasets.Image)
    for row in ds.select(range(0, len(ds), 7)):
        assert row["image"].size == (row["image_width"], row["image_height"])  # decoded as an image


def batches(ds: MixtureDataset, rank: int, *, start: dict | None = None, limit: int | None = None) -> list:
    sampler = PlanBatchSampler(len(ds), 4, rank=rank, world_size=2, block=ds.row_group_size)
    if start:
        sampler.load_state_dict(start)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=2,
                                         collate_fn=VisionCollator(ds.tokenizer))
    out = []
    for batch in loader:
        out.append(batch)
        sampler.step(batch)
        if limit is not None and len(out) == limit:
            return out, sampler.state_dict()
    return out, sampler.state_dict()


def same(a, b) -> bool:
    fields = [k for k in vars(a) if isinstance(getattr(a, k), torch.Tensor)]
    return bool(fields) and all(torch.equal(getattr(a, k), getattr(b, k)) for k in fields) and a.dropped == b.dropped


@needs_s3
def test_two_ranks_read_the_s3_export_as_the_local_one_each_only_its_row_groups(exports):
    local, url = exports
    remote_ds, local_ds = MixtureDataset(url, tokenizer="byte"), MixtureDataset(local, tokenizer="byte")
    assert remote_ds.embedded and remote_ds.row_group_size == ROW_GROUP and len(remote_ds) == len(local_ds) > 40
    read: dict[int, set] = {}
    for rank in (0, 1):
        remote, _ = batches(remote_ds, rank)
        here, _ = batches(local_ds, rank)
        assert len(remote) == len(here) > 2 and all(same(a, b) for a, b in zip(remote, here))

        # Which row groups does this rank fetch? Count them on the Dataset itself (no workers).
        fetched = set()
        real = remote_ds._group
        remote_ds._group = lambda g, real=real: fetched.add(g) or real(g)
        try:
            for batch in PlanBatchSampler(len(remote_ds), 4, rank=rank, world_size=2, block=remote_ds.row_group_size):
                for i in batch:
                    remote_ds[i]
        finally:
            del remote_ds._group
        read[rank] = fetched
    def groups_of(sampler: PlanBatchSampler) -> set[int]:
        return {int(np.searchsorted(remote_ds.starts, i, side="right") - 1) for i in sampler.order()}

    for rank in (0, 1):  # exactly the row groups holding its positions, which are every other one
        mine = groups_of(PlanBatchSampler(len(remote_ds), 4, rank=rank, world_size=2, block=ROW_GROUP))
        assert read[rank] == mine and all(g % 2 == rank for g in mine)
    assert not read[0] & read[1]
    # Without blocks, rank 0 takes every other row, so it would fetch every row group.
    assert groups_of(PlanBatchSampler(len(remote_ds), 4, rank=0, world_size=2)) >= read[0] | read[1]


@needs_s3
def test_resume_from_the_s3_export_is_exact(exports):
    _, url = exports
    ds = MixtureDataset(url, tokenizer="byte")
    whole, _ = batches(ds, 1)
    first, state = batches(ds, 1, limit=2)
    rest, _ = batches(ds, 1, start=state)
    assert state["block"] == ROW_GROUP and len(first) == 2
    assert len(first) + len(rest) == len(whole) and all(same(a, b) for a, b in zip(first + rest, whole))


def test_block_dealing_gives_every_position_once_whole_blocks_per_rank_and_resumes():
    n, block, world = 1003, 8, 3
    orders = [PlanBatchSampler(n, 4, rank=r, world_size=world, block=block, drop_last=False).order() for r in range(world)]
    assert sorted(np.concatenate(orders).tolist()) == list(range(n))
    for r, order in enumerate(orders):
        assert {int(i) // block % world for i in order} == {r}  # only blocks r, r+W, …
    equal = [PlanBatchSampler(n, 4, rank=r, world_size=world, block=block).order() for r in range(world)]
    assert len({len(o) for o in equal}) == 1  # drop_last: every rank as many samples
    s = PlanBatchSampler(n, 4, rank=2, world_size=world, block=block)
    all_batches = [list(b) for b in s]
    s.step(4 * 5)
    resumed = PlanBatchSampler(n, 4, rank=2, world_size=world, block=block)
    resumed.load_state_dict(s.state_dict())
    assert [list(b) for b in resumed] == all_batches[5:]
    with pytest.raises(ValueError, match="block=8"):
        PlanBatchSampler(n, 4, rank=2, world_size=world, block=1).load_state_dict(s.state_dict())
