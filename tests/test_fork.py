"""The nano-DeepSeek-OCR fork's loop on ocrcat batches: `inputs, targets, media = batch.as_media(device)`
in Base mode, with the keys, shapes and dtypes its model reads; and bench/gpu.py's code, run on the CPU."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from ocrcat.catalog import Catalog
from ocrcat.ingest.runner import ingest
from ocrcat.mix import MixtureDataset, PlanBatchSampler, VisionCollator
from ocrcat.mix.export import export_mixture
from ocrcat.mix.mixtures import create_mixture
from ocrcat.vision import count_image_tokens

from test_collate import check_batch
from test_dataset import export_dir, small_catalog  # noqa: F401  (session fixtures)

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def base_export(sample_mirror_factory, tmp_path_factory) -> Path:
    """A Base-mode catalog (`ocrcat init --vision-mode base`): pages, charts, formulas and chat."""
    path = tmp_path_factory.mktemp("base") / "catalog"
    out = tmp_path_factory.mktemp("base-export")
    sources = ("docbank", "chartqa", "latex_formulas", "smoltalk")
    with Catalog(path, vision_mode="base") as cat:
        for source in sources:
            ingest(cat, source, mirror=sample_mirror_factory(source, rows=8))
        create_mixture(cat, "fork", [(s, f"source = '{s}'", 1) for s in sources[:-1]], text_share=0.25,
                       text_predicate="source = 'smoltalk'", seed=3)
        export_mixture(cat, "fork", out)
    return out


@pytest.mark.parametrize("layout", ["chat", "plain"])
@pytest.mark.parametrize("loss", ["all", "assistant"])
def test_media_batches_have_what_the_forks_model_reads(base_export, layout, loss):
    """Every layout x loss over pages (transcription rows), charts, formulas and chat rows."""
    ds = MixtureDataset(base_export, layout=layout)
    assert ds.vision_mode == "base"
    tok = ds.tokenizer
    per_image = count_image_tokens(640, 480, "base")
    assert per_image == 273
    n = min(len(ds), 16)
    sources = pq.read_table(ds.files[0], columns=["source"]).column("source").to_pylist()[:n]
    assert set(sources) == {"docbank", "chartqa", "latex_formulas", "smoltalk"}
    loader = DataLoader(ds, batch_sampler=PlanBatchSampler(n, 4, drop_last=False), num_workers=2,
                        collate_fn=VisionCollator(tok, loss=loss))
    bench = _load_bench()
    torch.manual_seed(0)
    model = bench.TinyVLM(tok.vocab_size, tok.image_token_id, dim=32, layers=1, heads=2)
    mixed = 0
    for batch in loader:
        check_batch(batch, ds, loss)
        inputs, targets, media = batch.as_media("cpu", torch.float32)
        assert list(media) == ["pixel_values"]
        B, T = batch.inputs.shape
        assert inputs.shape == targets.shape == (B, T) and inputs.dtype == targets.dtype == torch.long
        assert torch.equal(inputs, batch.inputs) and torch.equal(targets, batch.targets)
        n_img = sum(1 for p in batch.positions if ds.row(int(p))["kind"] == "vision")
        pixels = media["pixel_values"]
        assert pixels.shape == (n_img, 3, 1024, 1024) and pixels.dtype == torch.float32
        assert pixels.is_contiguous() and -1 <= float(pixels.min()) <= float(pixels.max()) <= 1
        assert torch.equal(pixels, (batch.pixel_values.float() / 255 - 0.5) / 0.5)
        # The fork's model finds its images by the image id: 273 of them per image, in image order.
        assert int((inputs == tok.image_token_id).sum()) == n_img * per_image
        assert batch.images_spatial_crop.tolist() == [[1, 1]] * n_img and batch.crop_values.shape[0] == 0
        mixed += 0 < n_img < B
        loss_value = model(input_ids=inputs, targets=targets, pixel_values=pixels)
        loss_value.backward()
        assert torch.isfinite(loss_value) and model.patch.weight.grad is not None
        model.zero_grad()
    assert mixed  # text rows and image rows in one batch, as the fork's masked_scatter allows
    if loss == "all":  # length-aware batching's estimate is exact for vision rows, transcriptions too
        lengths = ds.lengths()
        for i in range(n):
            if ds.row(i)["kind"] == "vision":
                assert lengths[i] == len(ds[i]["ids"]), (layout, i)
    # bf16 on the device, the dtype the fork trains in
    _, _, media = VisionCollator(tok)([ds[i] for i in range(4)]).as_media("cpu")
    assert media["pixel_values"].dtype == torch.bfloat16


def test_bf16_autocast_path_of_the_gpu_bench_runs_on_the_cpu(base_export):
    """What bench/gpu.py does on CUDA (bf16 pixels from the device step vs float32 from the CPU,
    bf16 autocast), with CPU autocast: the dtypes fit and both give the same loss."""
    ds = MixtureDataset(base_export, layout="chat")
    vision = [i for i in range(len(ds)) if ds.row(i)["kind"] == "vision"][:2]
    text = [i for i in range(len(ds)) if ds.row(i)["kind"] == "text"][:1]
    batch = VisionCollator(ds.tokenizer)([ds[i] for i in vision + text])
    bench = _load_bench()
    torch.manual_seed(0)
    model = bench.TinyVLM(ds.tokenizer.vocab_size, ds.tokenizer.image_token_id, dim=32, layers=1, heads=2)
    inputs, targets, media = batch.as_media("cpu", torch.bfloat16)
    peer = bench.peer_pixels(batch, pin=False)
    assert media["pixel_values"].dtype == torch.bfloat16 and peer.dtype == torch.float32
    losses = []
    for pixels in (media["pixel_values"], peer):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=inputs, targets=targets, pixel_values=pixels)
        loss.backward()
        losses.append(float(loss.detach()))
    assert all(map(math.isfinite, losses)) and losses[0] == pytest.approx(losses[1], abs=1e-3)


def test_a_batch_without_images_gives_none(base_export):
    ds = MixtureDataset(base_export, layout="chat")
    text = [i for i in range(len(ds)) if ds.row(i)["kind"] == "text"][:3]
    batch = VisionCollator(ds.tokenizer)([ds[i] for i in text])
    assert batch.pixel_values.shape == (0, 3, 1024, 1024)
    inputs, targets, media = batch.as_media()
    assert media == {"pixel_values": None} and inputs.shape == batch.inputs.shape
    assert not (inputs == ds.tokenizer.image_token_id).any()


def test_a_tiled_batch_is_refused_with_what_to_do(export_dir):  # noqa: F811
    ds = MixtureDataset(export_dir)  # Gundam: local crops
    tiled = [i for i in range(len(ds)) if ds.row(i)["kind"] == "vision" and ds[i]["crops"].shape[0]][:1]
    assert tiled
    with pytest.raises(ValueError, match="ocrcat init --vision-mode base"):
        VisionCollator(ds.tokenizer)([ds[tiled[0]]]).as_media()


def test_moving_twice_normalises_once(base_export):
    ds = MixtureDataset(base_export)
    vision = [i for i in range(len(ds)) if ds.row(i)["kind"] == "vision"][:2]
    batch = VisionCollator(ds.tokenizer)([ds[i] for i in vision])
    once = batch.to("cpu", torch.float32)
    twice = once.to("cpu", torch.float32)
    assert torch.equal(once.pixel_values, twice.pixel_values)
    assert torch.equal(once.as_media()[2]["pixel_values"], once.pixel_values)


def test_gpu_bench_measures_on_the_cpu_dry_run(base_export):
    """bench/gpu.py's measuring code, on the CPU: the same batches, both paths, the same losses."""
    r = _load_bench().measure(base_export, "cpu", n_batches=2, batch_size=4, model_dim=32, model_layers=1)
    assert r["batches"] >= 1 and r["images"] >= 1
    assert r["pixel_diff"] == 0 and r["loss_diff"] == 0  # float32 on the CPU: identical either way
    assert all(r[k] > 0 for k in ("step", "peer_step", "train", "peer_train", "peer_cpu"))


def test_gpu_bench_without_a_gpu_says_so_and_exits_0():
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the bench would measure")
    proc = subprocess.run([sys.executable, str(BENCH)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1 and proc.stdout.startswith("gpu skipped: no CUDA device")
