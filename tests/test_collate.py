"""VisionCollator batches (SPEC 5 invariants), the device step, length-aware batching."""

from __future__ import annotations

import pickle
from dataclasses import fields

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ocrcat.mix import Batch, MixtureDataset, PlanBatchSampler, VisionCollator
from ocrcat.vision import MODES

from test_dataset import export_dir, small_catalog  # noqa: F401  (session fixtures)


def check_batch(batch: Batch, ds: MixtureDataset, loss: str = "all") -> None:
    """Every invariant SPEC 5 and issue 6 ask of a batch, against the Dataset's own items, for the
    Dataset's layout and the collator's `loss`."""
    tok = ds.tokenizer
    img = tok.image_token_id
    s = tok.specials
    items = [ds[int(p)] for p in batch.positions]
    B, T = batch.inputs.shape
    assert batch.targets.shape == batch.images_seq_mask.shape == (B, T)
    assert batch.inputs.dtype == batch.targets.dtype == torch.long and batch.images_seq_mask.dtype == torch.bool
    counts = [c for it in items for c in it["image_tokens"]]
    assert int(batch.images_seq_mask.sum()) == sum(counts)
    assert (batch.inputs[batch.images_seq_mask] == img).all()
    assert not (batch.inputs[~batch.images_seq_mask] == img).any()
    assert not (batch.targets == img).any()
    for b, it in enumerate(items):
        ids = it["ids"]
        n = len(ids) - 1
        assert int(batch.lengths[b]) == n and int(batch.sample_ids[b]) % 2**64 == it["sample_id"]
        assert torch.equal(batch.inputs[b, :n], ids[:-1])
        answer = it["answer"]
        assert answer.shape == ids.shape and answer.dtype == torch.bool
        expected = ids[1:].clone()
        expected[expected == img] = -1  # no loss where the next token is an image token
        if loss == "assistant":
            expected[~answer[1:]] = -1  # nor outside the answer
        assert torch.equal(batch.targets[b, :n], expected)
        assert (batch.targets[b, n:] == -1).all()  # padding
        # -1 exactly on padding, image-token next positions and (assistant loss) the prompt, nowhere else:
        minus = (batch.targets[b] == -1).nonzero().flatten().tolist()
        assert minus == [t for t in range(T) if t >= n or ids[t + 1] == img
                         or (loss == "assistant" and not answer[t + 1])]
        # Not the fork's off-by-one: the position before an image run (predicting the first image
        # token) is masked, the run's last position (predicting the first token after it) is not
        # unless the loss leaves that token out.
        for start, count in zip(*_runs(ids, img)):
            assert int(batch.targets[b, start - 1]) == -1
            if start + count <= n and (loss == "all" or answer[start + count]):
                assert int(batch.targets[b, start + count - 1]) == int(ids[start + count]) != -1
        if not it["truncated"]:
            assert int(batch.targets[b, n - 1]) == tok.assistant_end_id
            assert bool(answer[-1])
        if ds.layout == "chat" or not it["image_tokens"]:  # nanochat's turn structure
            assert ids[:2].tolist() == [tok.bos_id, s["<|user_start|>"]]
            if not it["truncated"]:
                cut = int(answer.int().argmax())
                assert int(ids[cut - 1]) == s["<|assistant_start|>"] and int(ids[cut - 2]) == s["<|user_end|>"]
        else:  # SPEC 5's plain layout: <|bos|> then the image run
            assert int(ids[0]) == tok.bos_id and int(ids[1]) == img
        if loss == "assistant" and not it["truncated"]:
            assert (batch.targets[b, :n] != -1).any()  # every row trains on its answer
    m = MODES[ds.vision_mode]
    assert batch.pixel_values.dtype == torch.uint8 and batch.crop_values.dtype == torch.uint8
    assert batch.pixel_values.shape == (len(counts), 3, m.base_size, m.base_size)
    assert torch.equal(batch.pixel_values, torch.cat([it["global_views"] for it in items]))
    assert torch.equal(batch.crop_values, torch.cat([it["crops"] for it in items]))
    grids = [g for it in items for g in it["grids"]]
    assert batch.images_spatial_crop.tolist() == [list(g) for g in grids]
    n_crops = sum(w * h for w, h in grids if w * h > 1)
    assert batch.crop_values.shape == (n_crops, 3, m.tile_size, m.tile_size)


def _runs(ids: torch.Tensor, img: int) -> tuple[list[int], list[int]]:
    """Start and length of each run of image ids."""
    is_img = (ids == img).int()
    edges = torch.diff(torch.cat([torch.zeros(1, dtype=torch.int), is_img, torch.zeros(1, dtype=torch.int)]))
    starts, ends = (edges == 1).nonzero().flatten(), (edges == -1).nonzero().flatten()
    return starts.tolist(), (ends - starts).tolist()


@pytest.mark.parametrize("layout", ["plain", "chat"])
@pytest.mark.parametrize("loss", ["all", "assistant"])
def test_every_layout_and_loss_through_a_two_worker_loader(export_dir, layout, loss):  # noqa: F811
    ds = MixtureDataset(export_dir, layout=layout)
    sampler = PlanBatchSampler(len(ds), 4, drop_last=False)
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=2, collate_fn=VisionCollator(ds.tokenizer, loss=loss))
    seen = []
    for batch in loader:
        check_batch(batch, ds, loss)
        seen += batch.positions.tolist()
    assert seen == list(range(len(ds)))
    if layout == "chat":  # length-aware batching's estimate follows the layout (exact for vision rows, byte tokenizer)
        lengths = ds.lengths()
        for i in range(len(ds)):
            if ds.row(i)["kind"] == "vision":
                assert lengths[i] == len(ds[i]["ids"])


def test_a_second_epoch_serves_the_whole_plan_again_and_resumes_mid_epoch(export_dir):  # noqa: F811
    ds = MixtureDataset(export_dir)
    sampler = PlanBatchSampler(len(ds), 4, drop_last=False)
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=2, collate_fn=VisionCollator(ds.tokenizer))
    epochs = []
    for _ in range(2):  # the README's loop, twice: step() after every batch
        assert len(loader) == len(sampler.batches())
        seen = []
        for batch in loader:
            seen += batch.positions.tolist()
            sampler.step(batch)
        epochs.append(seen)
    assert epochs[0] == epochs[1] == list(range(len(ds)))
    assert sampler.epoch == 1 and sampler.consumed == len(ds)
    # A checkpoint three batches into the third epoch resumes there, in a fresh sampler.
    for batch, _ in zip(loader, range(3)):
        sampler.step(batch)
    state = sampler.state_dict()
    assert (state["epoch"], state["consumed"]) == (2, 12)
    resumed = PlanBatchSampler(len(ds), 4, drop_last=False)
    resumed.load_state_dict(state)
    assert [b for b in resumed] == [b.tolist() for b in sampler.batches()[3:]] and resumed.epoch == 2


def test_unknown_layout_and_loss_are_refused(export_dir):  # noqa: F811
    with pytest.raises(ValueError, match="layout"):
        MixtureDataset(export_dir, layout="sft")
    with pytest.raises(ValueError, match="loss"):
        VisionCollator(MixtureDataset(export_dir).tokenizer, loss="prompt")


@pytest.mark.parametrize("pad_to_multiple", [1, 8])
def test_every_batch_through_a_two_worker_loader(export_dir, pad_to_multiple):  # noqa: F811
    ds = MixtureDataset(export_dir)
    sampler = PlanBatchSampler(len(ds), 4, drop_last=False)
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=2,
                        collate_fn=VisionCollator(ds.tokenizer, pad_to_multiple=pad_to_multiple))
    seen = []
    for batch in loader:
        check_batch(batch, ds)
        assert batch.inputs.shape[1] % pad_to_multiple == 0
        assert batch.inputs.shape[1] - pad_to_multiple < int(batch.lengths.max()) <= batch.inputs.shape[1]
        seen += batch.positions.tolist()
    assert seen == list(range(len(ds)))  # plan order, whatever the workers did


def test_only_the_pixels_cross_from_a_worker_through_shared_memory(export_dir):  # noqa: F811
    # Each tensor torch sends through shared memory costs a file, a descriptor passed over a socket
    # and a mapping; the small ones travel inside the pickle. Values are the same either way.
    ds = MixtureDataset(export_dir)
    collate = VisionCollator(ds.tokenizer)
    loader = DataLoader(ds, batch_sampler=PlanBatchSampler(len(ds), 4, drop_last=False), num_workers=1,
                        collate_fn=collate)
    for batch in loader:
        here = collate([ds[int(p)] for p in batch.positions])
        for f in fields(Batch):
            a, b = getattr(batch, f.name), getattr(here, f.name)
            if isinstance(a, torch.Tensor):
                assert a.dtype == b.dtype and torch.equal(a, b), f.name
                pixels = f.name in ("pixel_values", "crop_values") and a.numel() > 0
                assert a.is_shared() == pixels, f.name
            else:
                assert a == b, f.name
    # Off the CPU (a batch already moved), a batch pickles field by field as before.
    meta = here.to(torch.device("meta"))
    again = pickle.loads(pickle.dumps(meta))
    assert again.pixel_values.device.type == "meta" and again.pixel_values.shape == meta.pixel_values.shape


def test_unpacks_like_the_data_plan_loop(export_dir):  # noqa: F811
    ds = MixtureDataset(export_dir)
    batch = VisionCollator(ds.tokenizer)([ds[0], ds[1]])
    inputs, targets, pixel_values, images_seq_mask = batch
    assert inputs is batch.inputs and targets is batch.targets
    assert pixel_values is batch.pixel_values and images_seq_mask is batch.images_seq_mask


def test_pixels_of_another_shape_or_dtype_are_refused(export_dir):  # noqa: F811
    # The worker path writes pixel bytes as they are: a stray part must raise, not shift the batch.
    ds = MixtureDataset(export_dir)
    vision = [i for i in range(len(ds)) if ds.row(i)["kind"] == "vision"][:2]
    good, other = ds[vision[0]], ds[vision[1]]
    base = good["global_views"].shape[-1]
    for bad in (torch.zeros((1, 3, base // 2, base // 2), dtype=torch.uint8),
                other["global_views"].float()):
        with pytest.raises(ValueError, match="uint8 of shape"):
            VisionCollator(ds.tokenizer)([good, {**other, "global_views": bad}])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_device_step_normalises_on_the_device(export_dir, dtype):  # noqa: F811
    ds = MixtureDataset(export_dir)
    vision = [i for i in range(len(ds)) if ds.row(i)["kind"] == "vision"][:2]
    batch = VisionCollator(ds.tokenizer)([ds[i] for i in vision])
    assert batch.crop_values.shape[0] > 0
    moved = batch.to("cpu", dtype)
    for name in ("pixel_values", "crop_values"):
        x = getattr(batch, name)
        expected = ((x.float() / 255 - 0.5) / 0.5).to(dtype)
        assert getattr(moved, name).dtype == dtype and getattr(moved, name).is_contiguous()
        assert torch.equal(getattr(moved, name), expected)
    assert moved.pixel_values.min() >= -1 and moved.pixel_values.max() <= 1
    assert torch.equal(moved.inputs, batch.inputs) and moved.inputs.dtype == torch.long
    assert batch.pixel_values.dtype == torch.uint8  # the source batch is untouched
    # The grey pad colour 127 lands next to 0, as DeepSeek-OCR's mean-0.5 normalisation puts it.
    assert abs(float(((torch.tensor(127.0) / 255 - 0.5) / 0.5))) < 0.004


def test_device_step_on_the_meta_device_keeps_shapes(export_dir):  # noqa: F811
    ds = MixtureDataset(export_dir)
    batch = VisionCollator(ds.tokenizer)([ds[0], ds[1], ds[2]])
    meta = batch.to(torch.device("meta"), torch.bfloat16)
    assert meta.pixel_values.device.type == "meta" and meta.pixel_values.dtype == torch.bfloat16
    assert meta.pixel_values.shape == batch.pixel_values.shape
    assert meta.crop_values.shape == batch.crop_values.shape
    assert meta.inputs.dtype == torch.long and meta.images_seq_mask.dtype == torch.bool


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs a GPU (none here)")
def test_pinned_batch_moves_to_cuda(export_dir):  # noqa: F811
    ds = MixtureDataset(export_dir)
    batch = VisionCollator(ds.tokenizer)([ds[0], ds[1]]).pin_memory()
    assert batch.pixel_values.is_pinned()
    moved = batch.to("cuda", torch.bfloat16)
    torch.cuda.synchronize()
    assert torch.equal(moved.pixel_values.cpu(), batch.to("cpu", torch.bfloat16).pixel_values)


def test_dropped_items_are_counted(export_dir):  # noqa: F811
    ds = MixtureDataset(export_dir, max_len=100, overflow="drop")
    items = [ds[i] for i in range(len(ds))]
    kept = [it for it in items if it is not None]
    # text rows fit in 100 ids, vision rows (at least 273 image ids) do not
    assert len(kept) == sum(ds.row(i)["kind"] == "text" for i in range(len(ds))) > 0
    batch = VisionCollator(ds.tokenizer)(items)
    assert batch.dropped == len(ds) - len(kept) and batch.consumed == len(ds)
    assert batch.positions.tolist() == [it["position"] for it in kept]
    with pytest.raises(ValueError, match="dropped"):
        VisionCollator(ds.tokenizer)([None, None])


def test_length_aware_batching_pads_less_and_serves_every_sample(export_dir):  # noqa: F811
    ds = MixtureDataset(export_dir)
    lengths = ds.lengths()
    plain = PlanBatchSampler(len(ds), 4)
    grouped = PlanBatchSampler(len(ds), 4, lengths=lengths, window=16)
    assert sorted(i for b in grouped for i in b) == sorted(i for b in plain for i in b)
    e_plain, e_grouped = plain.padding_efficiency(lengths), grouped.padding_efficiency(lengths)
    print(f"padding efficiency: plan order {e_plain:.3f}, length-aware {e_grouped:.3f}")
    assert e_grouped > e_plain
    # The figure from lengths equals what the collator really pads (byte tokenizer: exact lengths
    # for vision rows; text rows are estimated from their JSON, so compare on vision rows only).
    vision = np.array([ds.row(i)["kind"] == "vision" for i in range(len(ds))])
    collate = VisionCollator(ds.tokenizer)
    for b in grouped:
        if vision[b].all():
            batch = collate([ds[i] for i in b])
            est = lengths[b] - 1  # ids -> inputs
            assert batch.padding_efficiency == pytest.approx(est.sum() / (est.max() * len(b)))
