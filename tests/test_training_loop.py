"""The training loop a nanochat script runs: export -> Dataset -> DataLoader(workers) -> collator ->
device step -> model; and kill-and-resume of the sampler in a new process, on one rank and two."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from ocrcat.catalog import Catalog
from ocrcat.ingest import registry
from ocrcat.ingest.runner import ingest
from ocrcat.mix import MixtureDataset, PlanBatchSampler, VisionCollator
from ocrcat.mix.export import export_mixture
from ocrcat.mix.mixtures import load_toml

from test_collate import check_batch
from test_dataset import export_dir, small_catalog  # noqa: F401  (session fixtures)


class TinyModel(nn.Module):
    """An embedding and a linear head: enough to see the loss fall on real batches."""

    def __init__(self, vocab_size: int, dim: int = 32):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, dim)
        self.head = nn.Linear(dim, vocab_size)

    def forward(self, inputs, targets):
        logits = self.head(self.emb(inputs))
        return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)


@pytest.fixture(scope="module")
def stage2_export(sample_mirror_factory, tmp_path_factory):
    """catalog (all ten sources' sample mirrors) -> the stage2 preset -> export_mixture."""
    path = tmp_path_factory.mktemp("stage2") / "catalog"
    out = tmp_path_factory.mktemp("stage2-export")
    with Catalog(path) as cat:
        for source in registry.available():
            ingest(cat, source, mirror=sample_mirror_factory(source, rows=8))
        load_toml(cat, None, ["stage2"])
        export_mixture(cat, "stage2", out, split="train")
    return out


def test_tiny_model_loss_falls_on_a_stage2_export(stage2_export):
    ds = MixtureDataset(stage2_export, split="train")
    assert len(ds) > 24
    n = 24  # the plan's first 24 positions, three times over: enough to see learning, quick on a CPU
    kinds = [ds.row(i)["kind"] for i in range(n)]
    assert "vision" in kinds and "text" in kinds  # stage2's 10 % SmolTalk share shows up early
    sampler = PlanBatchSampler(n, 4)
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=2, collate_fn=VisionCollator(ds.tokenizer))
    torch.manual_seed(0)
    model = TinyModel(ds.tokenizer.vocab_size)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    losses = []
    for epoch in range(3):
        for step, batch in enumerate(loader):
            if epoch == 0 and step < 2:
                check_batch(batch, ds)
            inputs, targets, pixel_values, images_seq_mask = batch.to("cpu", torch.float32)
            assert pixel_values.dtype == torch.float32 and -1 <= pixel_values.min() <= pixel_values.max() <= 1
            loss = model(inputs, targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    per_epoch = len(losses) // 3
    first, last = sum(losses[:per_epoch]) / per_epoch, sum(losses[-per_epoch:]) / per_epoch
    print(f"tiny model: {len(losses)} steps, mean loss epoch 1 {first:.3f}, epoch 3 {last:.3f}")
    assert all(math.isfinite(x) for x in losses)
    assert last < 0.8 * first


# A fingerprint of a batch: the samples it holds and a hash of every tensor, bit for bit.
FINGERPRINT = textwrap.dedent("""
    import hashlib
    import torch

    def fingerprint(batch) -> dict:
        tensors = {n: hashlib.sha256(v.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
                   for n, v in vars(batch).items() if isinstance(v, torch.Tensor)}
        return {"ids": batch.sample_ids.tolist(), "pos": batch.positions.tolist(), **tensors}
""")
exec(FINGERPRINT)

# A training script cut down to its data path: records the fingerprint of every batch it trains
# on. Mode "train" saves the sampler state after k steps and is SIGKILLed (workers and all);
# "resume" starts a new process from that state and runs to the end.
SCRIPT = FINGERPRINT + textwrap.dedent("""
    import json, os, signal, sys
    from torch.utils.data import DataLoader
    from ocrcat.mix import MixtureDataset, PlanBatchSampler, VisionCollator

    export, n, rank, world, k, state_path, out_path, mode = sys.argv[1:]
    ds = MixtureDataset(export)
    sampler = PlanBatchSampler(int(n), 2, rank=int(rank), world_size=int(world))
    if mode == "resume":
        sampler.load_state_dict(json.load(open(state_path)))
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=2, collate_fn=VisionCollator(ds.tokenizer))
    prints = []
    for step, batch in enumerate(loader):
        prints.append(fingerprint(batch))
        sampler.step(batch)
        if mode == "train" and step + 1 == int(k):
            with open(state_path + ".tmp", "w") as f:
                json.dump(sampler.state_dict(), f)
            os.replace(state_path + ".tmp", state_path)
            os.kill(os.getpid(), signal.SIGKILL)
    json.dump(prints, open(out_path, "w"))
""")


def test_kill_and_resume_gives_identical_batches_on_one_and_two_ranks(export_dir, tmp_path):  # noqa: F811
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    k, n = 2, 20  # the first 20 positions of the plan, batches of 2

    def launch(rank, world, mode):
        tag = f"{world}-{rank}"
        args = [sys.executable, str(script), str(export_dir), str(n), str(rank), str(world), str(k),
                str(tmp_path / f"state-{tag}.json"), str(tmp_path / f"{mode}-{tag}.json"), mode]
        return subprocess.Popen(args, stderr=subprocess.PIPE, text=True)

    runs = [(0, 1), (0, 2), (1, 2)]
    for (r, w), train in {(r, w): launch(r, w, "train") for r, w in runs}.items():
        assert train.wait(timeout=120) == -9, train.stderr.read()  # killed mid-run, workers alive
    resumed = {(r, w): launch(r, w, "resume") for r, w in runs}
    # Meanwhile the uninterrupted runs, here and without workers: the order must not depend on them.
    ds = MixtureDataset(export_dir)
    full = {(r, w): [fingerprint(b) for b in DataLoader(ds, batch_sampler=PlanBatchSampler(n, 2, rank=r, world_size=w),
                                                        collate_fn=VisionCollator(ds.tokenizer))]
            for r, w in runs}
    for (r, w), proc in resumed.items():
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
        after = json.loads((tmp_path / f"resume-{w}-{r}.json").read_text())
        assert len(full[r, w]) > k + 1 and after == full[r, w][k:]  # same samples, same tensors
        positions = [p for b in full[r, w] for p in b["pos"]]
        assert positions == list(range(r, n, w))  # rank r of w: r, r + w, …
    assert json.loads((tmp_path / "state-2-1.json").read_text())["consumed"] == k * 2


def test_sampler_ranks_split_the_plan_and_resume_with_length_aware_batches():
    lengths = [(7 * i) % 23 + 1 for i in range(103)]
    ranks = [PlanBatchSampler(103, 4, rank=r, world_size=3, lengths=lengths, window=12) for r in range(3)]
    served = [sorted(i for b in s for i in b) for s in ranks]
    assert served == [list(range(r, 3 * (103 // 3), 3)) for r in range(3)]  # equal shares, r + k·W
    for s in ranks:
        whole = list(s)
        again = PlanBatchSampler(103, 4, rank=s.rank, world_size=3, lengths=lengths, window=12)
        for b in whole[:3]:
            again.step(len(b))
        fresh = PlanBatchSampler(103, 4, rank=s.rank, world_size=3, lengths=lengths, window=12)
        fresh.load_state_dict(again.state_dict())
        assert list(fresh) == whole[3:] and len(fresh) == len(whole) - 3
    with pytest.raises(ValueError, match="world_size=3"):
        PlanBatchSampler(103, 4, world_size=2).load_state_dict(ranks[0].state_dict())
    with pytest.raises(ValueError, match="rank must be"):
        PlanBatchSampler(10, 2, rank=2, world_size=2)
