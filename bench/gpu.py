"""The device step and a small model's forward/backward on real ocrcat batches, against the fork's way.

On a machine with CUDA, in one run of about two minutes:
- a Base-mode catalog (the nano-DeepSeek-OCR fork's model reads Base only) of charts, pages,
  formulas and SmolTalk conversations is built from generated sample mirrors, mixed and exported;
  MixtureDataset(layout="chat") -> DataLoader(2 workers, pin_memory=True) -> VisionCollator gives
  real pinned uint8 batches, which are kept;
- ocrcat's device step: pinned uint8 pixels -> device (non_blocking) -> normalised there in bf16
  (`Batch.to`), against the peer's (the fork's loader): the same pixels normalised to float32 on the
  CPU first (that CPU time is reported too), pinned, then copied to the device (4x the bytes);
- a forward/backward of a small vision-language model with the fork's data contract (`TinyVLM`:
  pixels -> a 16x16 grid + a newline per row + a separator = 273 tokens an image, scattered where
  `inputs` holds the image id) on each batch under bf16 autocast, fed by each path. The pixels are
  the same values either way, so the two losses must agree.

Last line: `gpu device=… batches=… step_ms=… peer_step_ms=… step_ratio=… peer_cpu_normalise_ms=…
train_ms=… peer_train_ms=… max_pixel_diff=… max_loss_diff=…` (per batch; step_ratio = peer / ocrcat,
higher is better; both diffs should be 0 or at rounding level).
Without CUDA it prints one line saying so and exits 0. `--device cpu` runs the very same code on
the CPU (float32, a smaller model, few batches): a dry run that the code works, not a measurement.

Usage: python bench/gpu.py [--device cuda|cpu] [--batches 12] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from ocrcat.catalog import Catalog
from ocrcat.ingest.mirror import write_sample_mirror
from ocrcat.ingest.runner import ingest
from ocrcat.mix import MixtureDataset, PlanBatchSampler, VisionCollator
from ocrcat.mix import mixtures
from ocrcat.mix.export import export_mixture
from ocrcat.vision import DOWNSAMPLE, PATCH_SIZE

SOURCES = ("chartqa", "docbank", "latex_formulas", "mathwriting", "smoltalk")


class TinyVLM(nn.Module):
    """The fork's model's data contract at toy scale: `model(input_ids=, targets=, pixel_values=)`.

    An image (3, S, S) becomes an (S/64)² grid of features (one 64x64 patch each, standing in for
    SAM + CLIP + projector), a learned newline after each row and a separator after the grid, as
    DeepSeek-OCR lays out a global view: 16·17 + 1 = 273 tokens at S = 1024. They replace the
    embeddings where `input_ids` holds the image id, in order; the count must match exactly.
    """

    def __init__(self, vocab_size: int, image_token_id: int, dim: int = 256, layers: int = 2, heads: int = 4):
        super().__init__()
        self.image_token_id = image_token_id
        side = PATCH_SIZE * DOWNSAMPLE
        self.patch = nn.Conv2d(3, dim, kernel_size=side, stride=side)
        self.newline = nn.Parameter(torch.randn(dim) / math.sqrt(dim))
        self.separator = nn.Parameter(torch.randn(dim) / math.sqrt(dim))
        self.embed = nn.Embedding(vocab_size, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, vocab_size)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        grid = self.patch(pixel_values).permute(0, 2, 3, 1)  # (N, h, w, dim)
        n, h, w, d = grid.shape
        rows = torch.cat([grid, self.newline.to(grid.dtype).expand(n, h, 1, d)], dim=2).reshape(n, h * (w + 1), d)
        return torch.cat([rows, self.separator.to(grid.dtype).expand(n, 1, d)], dim=1)

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor, pixel_values: torch.Tensor | None = None):
        x = self.embed(input_ids)
        if pixel_values is not None:
            vision = self.encode_images(pixel_values)
            mask = input_ids == self.image_token_id
            if int(mask.sum()) != vision.shape[0] * vision.shape[1]:
                raise ValueError(f"{int(mask.sum())} image tokens in input_ids but {vision.shape[0]} images "
                                 f"of {vision.shape[1]} tokens")
            x = x.masked_scatter(mask.unsqueeze(-1), vision.reshape(-1, vision.shape[-1]).to(x.dtype))
        T = input_ids.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)  # bool: valid under any autocast dtype
        logits = self.head(self.blocks(x, mask=causal, is_causal=True)).float()
        return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)


def build_export(work: Path, rows: int) -> Path:
    write_sample_mirror(work / "mirror", list(SOURCES), rows=rows, seed=5)
    with Catalog(work / "catalog", vision_mode="base") as cat:
        for source in SOURCES:
            ingest(cat, source, mirror=work / "mirror", workers=2)
        vision = [s for s in SOURCES if s != "smoltalk"]
        mixtures.create_mixture(cat, "gpu", [(s, f"source = '{s}'", 1) for s in vision], text_share=0.1,
                                text_predicate="source = 'smoltalk'", seed=1)
        export_mixture(cat, "gpu", work / "export")
    return work / "export"


def real_batches(export: Path, n_batches: int, batch_size: int, pin: bool) -> tuple[MixtureDataset, list]:
    """Batches as training gets them: chat layout, assistant loss, 2 workers, pinned when on CUDA."""
    ds = MixtureDataset(export, layout="chat")
    n = min(len(ds), n_batches * batch_size)
    loader = DataLoader(ds, batch_sampler=PlanBatchSampler(n, batch_size), num_workers=2, pin_memory=pin,
                        collate_fn=VisionCollator(ds.tokenizer, loss="assistant", pad_to_multiple=8))
    return ds, [b for b in loader if b.pixel_values.shape[0]]  # the device step concerns batches with images


def peer_pixels(batch, pin: bool) -> torch.Tensor:
    """The fork's loader: float32 (x/255 - 0.5)/0.5 on the CPU, NCHW, then pinned by the DataLoader."""
    x = batch.pixel_values.to(torch.float32).div_(255.0).sub_(0.5).div_(0.5).contiguous()
    return x.pin_memory() if pin else x


def measure(export: Path, device: str, n_batches: int, batch_size: int, model_dim: int, model_layers: int) -> dict:
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    dtype = torch.bfloat16 if cuda else torch.float32  # the CPU dry run keeps float32: exact, and fast there
    ds, batches = real_batches(export, n_batches, batch_size, pin=cuda)
    if not batches:
        raise SystemExit("no batch with images came out of the export; raise --batches")

    # The peer's CPU work, per batch (in the fork it runs in the workers, per sample).
    t = time.perf_counter()
    peer = [peer_pixels(b, cuda) for b in batches]
    peer_cpu = (time.perf_counter() - t) / len(batches)

    def ocrcat_step(b):
        return b.as_media(dev, dtype)

    def peer_step(b, pixels):
        return (b.inputs.to(dev, non_blocking=True), b.targets.to(dev, non_blocking=True),
                {"pixel_values": pixels.to(dev, non_blocking=True)})

    def timed(fn) -> tuple[list, float]:
        fn(0)  # warm-up: allocator, kernels
        sync()
        started = time.perf_counter()
        out = [fn(i) for i in range(len(batches))]
        sync()
        return out, (time.perf_counter() - started) / len(batches)

    moved, step = timed(lambda i: ocrcat_step(batches[i]))
    moved_peer, peer_step_s = timed(lambda i: peer_step(batches[i], peer[i]))
    # The same values either way, once in the model's dtype: the device step changes where, not what.
    pixel_diff = max(float((ours["pixel_values"].float() - theirs["pixel_values"].to(dtype).float()).abs().max())
                     for (_, _, ours), (_, _, theirs) in zip(moved, moved_peer))
    del moved, moved_peer

    torch.manual_seed(0)
    model = TinyVLM(ds.tokenizer.vocab_size, ds.tokenizer.image_token_id, model_dim, model_layers).to(dev)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda)

    def train(i, media_fn):
        inputs, targets, media = media_fn(i)
        with autocast:
            loss = model(input_ids=inputs, targets=targets, pixel_values=media["pixel_values"])
        loss.backward()
        model.zero_grad(set_to_none=True)
        return loss.detach()

    ours, train_s = timed(lambda i: train(i, lambda j: ocrcat_step(batches[j])))
    theirs, peer_train_s = timed(lambda i: train(i, lambda j: peer_step(batches[j], peer[j])))
    diff = max(abs(float(a) - float(b)) for a, b in zip(ours, theirs))
    return {"device": torch.cuda.get_device_name(dev) if cuda else "cpu (dry run)", "batches": len(batches),
            "images": sum(b.pixel_values.shape[0] for b in batches), "step": step, "peer_step": peer_step_s,
            "peer_cpu": peer_cpu, "train": train_s, "peer_train": peer_train_s, "loss_diff": diff,
            "pixel_diff": pixel_diff,
            "first_loss": float(ours[0])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (the measurement) or cpu (a dry run of the code)")
    parser.add_argument("--batches", type=int, default=None, help="batches to time (default 12 on CUDA, 3 on the CPU)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rows", type=int, default=None, help="sample rows per source (default 24 on CUDA, 8 on the CPU)")
    args = parser.parse_args(argv)
    cpu = args.device == "cpu"
    if not cpu and not torch.cuda.is_available():
        print("gpu skipped: no CUDA device here (torch.cuda.is_available() is False); "
              "run on a GPU machine, or `--device cpu` for a dry run of the code")
        return
    work = Path(tempfile.mkdtemp(prefix="ocrcat-bench-gpu-"))
    try:
        t = time.perf_counter()
        export = build_export(work, rows=args.rows or (8 if cpu else 24))
        print(f"export built in {time.perf_counter() - t:.0f} s")
        r = measure(export, args.device, args.batches or (3 if cpu else 12), args.batch_size,
                    model_dim=64 if cpu else 512, model_layers=1 if cpu else 4)
        ms = {k: 1000 * r[k] for k in ("step", "peer_step", "peer_cpu", "train", "peer_train")}
        print(f"device: {r['device']}; {r['batches']} batches, {r['images']} images (Base, 1024²), first loss {r['first_loss']:.3f}")
        print(f"device step: ocrcat {ms['step']:.2f} ms a batch (uint8 -> device -> normalise), peer "
              f"{ms['peer_step']:.2f} ms (float32 -> device) after {ms['peer_cpu']:.1f} ms of CPU normalising")
        print(f"step + forward/backward: ocrcat {ms['train']:.2f} ms, peer {ms['peer_train']:.2f} ms; "
              f"largest loss difference {r['loss_diff']:.2e}")
        print(f"gpu device={'cpu-dry-run' if cpu else 'cuda'} batches={r['batches']} step_ms={ms['step']:.2f} "
              f"peer_step_ms={ms['peer_step']:.2f} step_ratio={ms['peer_step'] / ms['step']:.2f} "
              f"peer_cpu_normalise_ms={ms['peer_cpu']:.1f} train_ms={ms['train']:.2f} "
              f"peer_train_ms={ms['peer_train']:.2f} max_pixel_diff={r['pixel_diff']:.1e} max_loss_diff={r['loss_diff']:.2e}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
