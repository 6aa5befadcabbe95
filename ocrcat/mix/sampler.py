"""A resumable batch sampler over the plan: rank r of W takes positions r, r+W, r+2W, …

The plan is already shuffled (seeded) by the mixture, so the sampler keeps its order. The batches
are a pure function of (n, batch size, rank, world size, lengths, window): the DataLoader's worker
count cannot change them. Because the DataLoader prefetches, the sampler cannot know what training
has used; the loop tells it with `step(batch)`, and `state_dict()` records exactly that.
A pass over the plan is an epoch: once training has used all of it, the next pass starts over.
"""

from __future__ import annotations

import numpy as np
import torch


class PlanBatchSampler(torch.utils.data.Sampler):
    """Batches of dataset indices for one DDP rank; pass as `DataLoader(batch_sampler=...)`.

    >>> sampler = PlanBatchSampler(len(ds), 8, rank=rank, world_size=world)
    >>> for batch in loader:
    ...     train_step(batch); sampler.step(batch)
    ...     if want_checkpoint: save({"model": ..., "data": sampler.state_dict()})

    `lengths` (e.g. `ds.lengths()`) turns on length-aware batching: within each window of
    `window` consecutive samples of this rank, samples are sorted by length before being cut into
    batches, so rows of a batch have similar lengths and less padding. The order stays deterministic.
    `drop_last` (default) gives every rank the same number of samples, so no rank waits.
    `block` deals positions to ranks in blocks of that many consecutive ones (rank r takes blocks
    r, r+W, …); with block = the export's row-group size (`ds.row_group_size`) each rank reads only
    its own row groups, which is what streaming from object storage wants. block=1: r, r+W, ….
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        lengths: np.ndarray | None = None,
        window: int | None = None,
        drop_last: bool = True,
        block: int = 1,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if block < 1:
            raise ValueError("block must be at least 1")
        self.block = block
        self.n, self.batch_size, self.rank, self.world_size = n, batch_size, rank, world_size
        self.lengths = None if lengths is None else np.asarray(lengths)
        if self.lengths is not None and len(self.lengths) != n:
            raise ValueError(f"lengths has {len(self.lengths)} entries for {n} samples")
        self.window = window or 64 * batch_size
        self.drop_last = drop_last
        self.consumed = 0  # samples of this rank that training has used in this epoch
        self.epoch = 0  # passes over the plan that training has finished

    def order(self) -> np.ndarray:
        """This rank's indices in the order they are served."""
        idx = self._positions(self.rank)
        if self.drop_last:  # every rank as many as the one with fewest
            idx = idx[:min(self._count(r) for r in range(self.world_size))]
        if self.lengths is None:
            return idx
        out = []
        for s in range(0, len(idx), self.window):
            w = idx[s:s + self.window]
            out.append(w[np.argsort(self.lengths[w], kind="stable")])
        return np.concatenate(out) if out else idx

    def _positions(self, rank: int) -> np.ndarray:
        """Every position of `rank`: its blocks, in order."""
        starts = np.arange(rank * self.block, self.n, self.world_size * self.block, dtype=np.int64)
        idx = (starts[:, None] + np.arange(self.block, dtype=np.int64)[None, :]).ravel()
        return idx[idx < self.n]

    def _count(self, rank: int) -> int:
        """len(self._positions(rank)), without building it."""
        blocks = -(-self.n // self.block)
        count = max(0, -(-(blocks - rank) // self.world_size)) * self.block
        if self.n % self.block and (blocks - 1) % self.world_size == rank:
            count -= self.block - self.n % self.block  # the last block is short
        return count

    def batches(self) -> list[np.ndarray]:
        """All batches of this rank from the start; a window's batches never straddle windows."""
        order = self.order()
        step = self.window if self.lengths is not None else len(order) or 1
        out = []
        for s in range(0, len(order), step):
            chunk = order[s:s + step]
            out.extend(chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
        if self.lengths is not None:
            # Long-row batches and short-row batches alternate per window otherwise; a seeded shuffle
            # of batches inside each window spreads them (seed = window index, still deterministic).
            per = -(-self.window // self.batch_size)
            for w0 in range(0, len(out), per):
                rng = np.random.default_rng(w0)
                part = out[w0:w0 + per]
                out[w0:w0 + per] = [part[i] for i in rng.permutation(len(part))]
        return out

    def __iter__(self):
        batches = self.batches()
        if self.consumed and self.consumed >= sum(len(b) for b in batches):
            self.consumed, self.epoch = 0, self.epoch + 1  # the last epoch was used up: a new one
        seen = 0
        for b in batches:
            if seen >= self.consumed:
                yield b.tolist()
            seen += len(b)

    def __len__(self) -> int:
        """Batches the next pass yields: those of this epoch not used yet, or a whole new epoch."""
        batches = self.batches()
        consumed = self.consumed if self.consumed < sum(len(b) for b in batches) else 0
        seen, count = 0, 0
        for b in batches:
            count += seen >= consumed
            seen += len(b)
        return count

    def step(self, batch) -> None:
        """Record that training used `batch` (a Batch, or a number of samples)."""
        self.consumed += batch if isinstance(batch, int) else batch.consumed

    def state_dict(self) -> dict:
        return {"consumed": self.consumed, "epoch": self.epoch, "rank": self.rank, "world_size": self.world_size,
                "n": self.n, "batch_size": self.batch_size, "block": self.block}

    def load_state_dict(self, state: dict) -> None:
        for key in ("world_size", "n", "batch_size", "block"):
            if state.get(key, 1 if key == "block" else None) != getattr(self, key):
                raise ValueError(f"cannot resume: the saved state has {key}={state.get(key, 1)}, this sampler "
                                 f"{getattr(self, key)}; resume with the same data, batch size and world size")
        self.consumed, self.epoch = state["consumed"], state.get("epoch", 0)

    def padding_efficiency(self, lengths: np.ndarray, pad_to_multiple: int = 1) -> float:
        """Real tokens / padded tokens over this rank's batches, computed from `lengths` alone."""
        lengths = np.asarray(lengths)
        real = padded = 0
        for b in self.batches():
            ls = lengths[b]
            t = -(-int(ls.max()) // pad_to_multiple) * pad_to_multiple
            real += int(ls.sum())
            padded += t * len(ls)
        return real / max(1, padded)
