"""Batches of SPEC 5: per-sample padding (never packing), uint8 pixels, normalised on the device.

Runs as the DataLoader's `collate_fn`, so the work happens in the worker processes and each batch
crosses to the training process as a few large tensors. Pixels stay uint8 until `Batch.to(device)`:
4x fewer bytes through shared memory and over the bus than float32.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch.utils.data import get_worker_info

from ocrcat.mix.tokenizer import Tokenizer

# "all": every next token is a target (pre-training, SPEC 5); "assistant": only the answer's ids
# (assistant content and <|assistant_end|>), as nanochat's SFT.
LOSSES = ("all", "assistant")
_PIXELS = ("pixel_values", "crop_values")  # the batch's large tensors


@dataclass
class Batch:
    inputs: torch.Tensor  # (B, T) long
    targets: torch.Tensor  # (B, T) long, -1 = no loss
    images_seq_mask: torch.Tensor  # (B, T) bool, True where inputs hold the image token
    pixel_values: torch.Tensor  # (N_img, 3, base, base) uint8 (channels-last memory) until to()
    crop_values: torch.Tensor  # (N_crops, 3, tile, tile), likewise
    images_spatial_crop: torch.Tensor  # (N_img, 2) long: (w_tiles, h_tiles)
    sample_ids: torch.Tensor  # (B,) int64 (the UBIGINT's bits)
    positions: torch.Tensor  # (B,) long: plan positions
    lengths: torch.Tensor  # (B,) long: real (unpadded) input tokens per row
    truncated: torch.Tensor  # (B,) bool
    dropped: int = 0  # items of this batch the Dataset dropped as over-long

    def __reduce__(self):
        # How a batch leaves a DataLoader worker. Torch sends every tensor through a shared-memory
        # file of its own (created and filled in the worker, its descriptor passed over a socket,
        # mapped and later unmapped in the training process); the eight small ones (a few KB) go
        # inside the pickle instead, as arrays, and only the pixels use shared memory.
        small = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _PIXELS}
        if any(isinstance(v, torch.Tensor) and v.device.type != "cpu" for v in small.values()):
            return Batch, tuple(getattr(self, f.name) for f in fields(self))
        arrays = {k: v.detach().numpy() if isinstance(v, torch.Tensor) else v for k, v in small.items()}
        return _rebuild, (self.pixel_values, self.crop_values, arrays)

    def __iter__(self):
        # `inputs, targets, pixel_values, images_seq_mask = batch`, as the data plan's loop unpacks it.
        return iter((self.inputs, self.targets, self.pixel_values, self.images_seq_mask))

    @property
    def consumed(self) -> int:
        """Plan positions this batch used up, dropped ones included (what a sampler advances by)."""
        return len(self.positions) + self.dropped

    @property
    def padding_efficiency(self) -> float:
        """Real tokens / (B * T)."""
        return float(self.lengths.sum()) / max(1, self.inputs.numel())

    def pin_memory(self) -> "Batch":
        # Called by DataLoader(pin_memory=True) so the copy in to() can be asynchronous. Pixels
        # are pinned through their channels-last view, which is contiguous: a plain memcpy.
        pinned = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("pixel_values", "crop_values"):
                v = v.permute(0, 2, 3, 1).pin_memory().permute(0, 3, 1, 2)
            elif isinstance(v, torch.Tensor):
                v = v.pin_memory()
            pinned[f.name] = v
        return Batch(**pinned)

    def as_media(self, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.bfloat16) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """`inputs, targets, media` as the nano-DeepSeek-OCR fork's loop unpacks them.

        `media["pixel_values"]` is (N_img, 3, base, base), normalised, one view per image in the
        order of the images in `inputs`, or None for a batch without images (the fork's model then
        skips its vision encoder). Pixels still uint8 are moved to `device` (default: where the batch
        is) and normalised there in `dtype`. The fork's model reads one view per image (Base mode, 273
        tokens an image): a batch with local crops is refused, since their tokens would go unfilled.
        """
        if self.crop_values.shape[0]:
            raise ValueError(f"this batch has {self.crop_values.shape[0]} local crops (a tiled vision mode); "
                             "the nano-DeepSeek-OCR fork's model reads one view per image: build the "
                             "catalog with `ocrcat init --vision-mode base` and export again")
        batch = self
        if device is not None or self.pixel_values.dtype == torch.uint8:
            batch = self.to(self.inputs.device if device is None else device, dtype)
        pixels = batch.pixel_values if batch.pixel_values.shape[0] else None
        return batch.inputs, batch.targets, {"pixel_values": pixels}

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.bfloat16) -> "Batch":
        """Move to `device`; uint8 pixels go as uint8 (non_blocking) and become (x/255 - 0.5)/0.5 in `dtype` there."""
        moved = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v.to(device, non_blocking=True)
                if f.name in ("pixel_values", "crop_values"):  # normalised once: a moved batch may move again
                    v = _normalise(v, dtype) if v.dtype == torch.uint8 else v.to(dtype)
            moved[f.name] = v
        return Batch(**moved)


def _rebuild(pixel_values: torch.Tensor, crop_values: torch.Tensor, small: dict) -> Batch:
    tensors = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in small.items()}
    return Batch(pixel_values=pixel_values, crop_values=crop_values, **tensors)


def _normalise(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # float32 arithmetic, then the model dtype: bf16 cannot hold x/255 exactly, f32 nearly can.
    # The result is NCHW-contiguous (the channels-last transpose happens here, on the device).
    x = x.to(torch.float32).div_(255.0).sub_(0.5).div_(0.5)
    return x.to(dtype, memory_format=torch.contiguous_format)


class VisionCollator:
    """`collate_fn` for MixtureDataset items.

    Targets are -1 on padding and wherever the next token is an image token, under both losses.

    >>> collate = VisionCollator(tokenizer, pad_to_multiple=8)  # loss="all"; or loss="assistant"
    >>> loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=2, pin_memory=True)
    >>> for batch in loader:
    ...     inputs, targets, pixel_values, images_seq_mask = batch.to("cuda")
    """

    def __init__(self, tokenizer: Tokenizer, *, pad_to_multiple: int = 1, loss: str = "all"):
        if pad_to_multiple < 1:
            raise ValueError("pad_to_multiple must be at least 1")
        if loss not in LOSSES:
            raise ValueError(f"loss must be 'all' or 'assistant', not {loss!r}")
        self.loss = loss
        self.image_id = tokenizer.image_token_id
        self.pad_id = tokenizer.bos_id  # any id but the image token; targets there are -1 anyway
        self.pad_to_multiple = pad_to_multiple

    def __call__(self, items: list[dict | None]) -> Batch:
        kept = [it for it in items if it is not None]
        if not kept:
            raise ValueError(f"every sample of this batch ({len(items)}) was dropped as longer than the "
                             "Dataset's max_len (with overflow='drop', or because its image tokens alone "
                             "reach max_len, which truncation cannot cut); raise max_len, or keep such "
                             "rows out of the mixture (e.g. image_tokens < max_len in its predicates)")
        lengths = [len(it["ids"]) - 1 for it in kept]  # inputs are ids[:-1], targets ids[1:]
        T = max(lengths)
        T = -(-T // self.pad_to_multiple) * self.pad_to_multiple
        B = len(kept)
        inputs = torch.full((B, T), self.pad_id, dtype=torch.long)
        targets = torch.full((B, T), -1, dtype=torch.long)
        for b, (it, n) in enumerate(zip(kept, lengths)):
            inputs[b, :n] = it["ids"][:-1]
            targets[b, :n] = it["ids"][1:]
            if self.loss == "assistant":  # only predicting the answer counts (nanochat's SFT mask)
                targets[b, :n][~it["answer"][1:]] = -1
        # Padding never holds the image id, so the mask needs no length check.
        images_seq_mask = inputs == self.image_id
        # No loss on predicting an image token: the model is given those, it does not produce them.
        targets[targets == self.image_id] = -1
        grids = [g for it in kept for g in it["grids"]]
        return Batch(
            inputs=inputs,
            targets=targets,
            images_seq_mask=images_seq_mask,
            pixel_values=_stack_pixels([it["global_views"] for it in kept]),
            crop_values=_stack_pixels([it["crops"] for it in kept]),
            images_spatial_crop=torch.tensor(grids, dtype=torch.long).reshape(-1, 2),
            # UBIGINT ids above 2**63 keep their bits as negative int64.
            sample_ids=torch.tensor([_as_int64(it["sample_id"]) for it in kept], dtype=torch.int64),
            positions=torch.tensor([it["position"] for it in kept], dtype=torch.long),
            lengths=torch.tensor(lengths, dtype=torch.long),
            truncated=torch.tensor([it["truncated"] for it in kept], dtype=torch.bool),
            dropped=len(items) - B,
        )


def _stack_pixels(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate (n, 3, H, W) uint8 views into one (N, 3, H, W) tensor with channels-last memory.

    Each part is copied once, as plain HWC rows, straight into the batch's buffer; in a DataLoader
    worker that buffer is shared memory already (as torch's default_collate does), so handing the
    batch to the training process copies nothing more.
    """
    n = sum(p.shape[0] for p in parts)
    _, c, h, w = parts[0].shape
    if any(p.shape[1:] != (c, h, w) or p.dtype != torch.uint8 for p in parts):
        # Bytes are written as they are below: a stray shape or dtype must not pass silently.
        raise ValueError(f"a batch's pixels must all be uint8 of shape (n, {c}, {h}, {w}), got "
                         f"{[(tuple(p.shape), str(p.dtype)) for p in parts]}; are the items from one Dataset?")
    if get_worker_info() is not None and n:
        storage = torch.UntypedStorage._new_shared(n * h * w * c)
        out = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (n, h, w, c))
        if torch.multiprocessing.get_sharing_strategy() == "file_descriptor":
            # Fill the fresh shared memory through its file, not through the mapping: the kernel
            # copies straight into the file's pages instead of taking a page fault every 4 KB
            # (~12 800 for a batch's ~50 MB); the collator's time in a worker drops from 4.5 to
            # 2.9 ms a sample. This process never maps the pixels; the training process does.
            fd, _ = storage._share_fd_cpu_()
            offset = 0
            for p in parts:
                offset += _pwrite_all(fd, p.permute(0, 2, 3, 1).contiguous().numpy(), offset)
            return out.permute(0, 3, 1, 2)
    else:
        out = torch.empty((n, h, w, c), dtype=torch.uint8)
    k = 0
    for p in parts:
        out[k:k + p.shape[0]].copy_(p.permute(0, 2, 3, 1))
        k += p.shape[0]
    return out.permute(0, 3, 1, 2)


def _pwrite_all(fd: int, data: np.ndarray, offset: int) -> int:
    """Write all of `data` at `offset` (write() may take less than asked); the bytes written."""
    view = memoryview(data.reshape(-1))
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)
    return done


def _as_int64(u: int) -> int:
    return u - (1 << 64) if u >= 1 << 63 else u
