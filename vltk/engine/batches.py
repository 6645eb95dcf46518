"""Training batches in an order that a resumed run replays exactly, from a saved position.

Resuming bit-exactly needs the same batches in the same order after the interruption as without it, and
skipping the batches already trained on must not load them (for real datasets that is minutes of image decoding)
nor consume any global RNG that the model's dropout or augmentation then sees differently.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset


def ignore_stop_signals(worker_id: int = 0) -> None:
    """``worker_init_fn`` of training loaders: Ctrl-C and SIGTERM reach the whole process group, and a worker that
    died of them would turn the main process's orderly stop at the next step into "worker exited unexpectedly".
    The main process decides when to stop (:mod:`vltk.engine.interrupts`) and shuts its workers down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class EpochBatches:
    """Endless shuffled batches in a replayable order, with the position of the next batch to save and restore.

    Epoch ``e`` is a permutation drawn from a generator seeded with ``(seed, e)`` (the order a shuffling
    ``DataLoader`` with that generator gives), cut into ``len(dataset) // batch_size`` full batches. Starting at
    ``(epoch, batch)`` skips the earlier batches of that epoch by index, without loading them, so a resumed run
    sees exactly the batches the uninterrupted run would have seen. The global RNGs are never touched.

    Data-parallel runs (:mod:`vltk.engine.distributed`): ``batch_size`` stays the global batch, every rank draws
    the same order and yields its contiguous ``batch_size // world_size`` slice of each global batch. So the
    ranks together see exactly the single-process batches, and the position (epoch, global batch) is the same on
    every rank and does not depend on the number of ranks: a run resumes exactly with as many or other ranks.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int,
        num_workers: int,
        collate_fn: Callable[[list[dict[str, Any]]], dict[str, Any]],
        *,
        epoch: int = 0,
        batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} does not split over {world_size} ranks")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.collate_fn = collate_fn
        self.rank = rank
        self.world_size = world_size
        self.steps_per_epoch = max(1, len(dataset) // batch_size)
        self.epoch, self.batch = epoch + batch // self.steps_per_epoch, batch % self.steps_per_epoch
        self._iterator: Iterator[dict[str, Any]] | None = None

    def position(self) -> dict[str, int]:
        """Where the next batch comes from, plus what the order depends on (saved in checkpoints)."""
        return {"epoch": self.epoch, "batch": self.batch, "size": len(self.dataset), "batch_size": self.batch_size}

    def _loader(self) -> DataLoader:
        parts = self.dataset.datasets if isinstance(self.dataset, ConcatDataset) else [self.dataset]
        for part in parts:  # per-epoch augmentation (e.g. the synthetic set's flips) follows the epoch
            if hasattr(part, "set_epoch"):
                part.set_epoch(self.epoch)
        seed = self.seed * 100_003 + self.epoch
        generator = torch.Generator().manual_seed(seed)
        torch.empty((), dtype=torch.int64).random_(generator=generator)  # what DataLoader draws before shuffling
        order = torch.randperm(len(self.dataset), generator=generator).tolist()
        size, local = self.batch_size, self.batch_size // self.world_size
        start = self.rank * local  # this rank's slice of every global batch
        batches = [order[i * size + start : i * size + start + local] for i in range(self.batch, self.steps_per_epoch)]
        return DataLoader(
            self.dataset,
            batch_sampler=batches,
            collate_fn=self.collate_fn,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(seed),  # worker seeds, as before; not the global RNG
            worker_init_fn=ignore_stop_signals if self.num_workers else None,
        )

    def __iter__(self) -> EpochBatches:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._iterator is None:
            self._iterator = iter(self._loader())
        item = next(self._iterator)
        self.batch += 1
        if self.batch == self.steps_per_epoch:
            self.epoch, self.batch, self._iterator = self.epoch + 1, 0, None
        return item


__all__ = ["EpochBatches", "ignore_stop_signals"]
