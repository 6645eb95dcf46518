"""The ``synthetic`` data source: rendered scenes as torch datasets, one split per (train/val, domain).

Train scenes are layout indices ``0..num_train-1`` of the seed, flipped by a per-epoch coin; val scenes start at
``VAL_INDEX_OFFSET`` so they never repeat a training layout, and every domain evaluates the same val layouts.
Images and labels are rendered when an item is read (:func:`~.render.render_scene`), nothing is cached or stored.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from vltk.api import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    IGNORE_INDEX,
    BuildContext,
    DenseDataSource,
    DenseSample,
)
from vltk.api import colorize as colorize_with
from vltk_plugins.datasets.flips import flip_coin
from vltk_plugins.datasets.synthetic.domains import check_domain
from vltk_plugins.datasets.synthetic.options import VAL_INDEX_OFFSET, SyntheticOptions
from vltk_plugins.datasets.synthetic.render import render_scene


def colorize(label: np.ndarray, palette: tuple[tuple[int, int, int], ...] = CITYSCAPES_PALETTE) -> np.ndarray:
    """Label map -> uint8 RGB with the Cityscapes colours (ignored pixels black), for looking at layouts."""
    return colorize_with(label, palette)


class SyntheticSplit(Dataset):
    """One split of one domain: ``length`` scenes starting at layout index ``offset``.

    With ``flip=True`` (the train split), an item is mirrored left-right when a coin seeded by
    ``(seed, index, epoch)`` says so; call :meth:`set_epoch` before each epoch's iterator is created (workers copy
    the dataset) so each epoch sees a fresh set of flips. Without it every epoch uses the flips of epoch 0.
    """

    def __init__(
        self,
        *,
        seed: int,
        offset: int,
        length: int,
        size: tuple[int, int],
        domain: str,
        flip: bool = False,
    ) -> None:
        check_domain(domain)
        self.seed, self.offset, self.length = seed, offset, length
        self.size, self.domain, self.flip = size, domain, flip
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def layout_index(self, i: int) -> int:
        """The generator index behind item ``i`` (what ``render_scene`` takes)."""
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for a split of {self.length} scenes")
        return self.offset + i

    def __getitem__(self, i: int) -> DenseSample:
        index = self.layout_index(int(i))
        image, label = render_scene(self.seed, index, self.size, self.domain)
        if self.flip and flip_coin(self.seed, index, self.epoch):
            image, label = image[:, ::-1], label[:, ::-1]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "label": torch.from_numpy(label.astype(np.int64)),
            "domain": self.domain,
            "index": index,
        }


class SyntheticScenes(DenseDataSource):
    """The ``synthetic`` data source: Cityscapes' 19 classes, six appearance domains, procedural layouts."""

    classes = CITYSCAPES_CLASSES
    palette = CITYSCAPES_PALETTE
    ignore_index = IGNORE_INDEX

    def __init__(self, options: SyntheticOptions | None = None) -> None:
        self.options = options or SyntheticOptions()
        self.domains = tuple(self.options.domains)
        self.train_domains = tuple(self.options.train_domains)
        self.size = self.options.image_size

    def split(self, split: str, domain: str) -> SyntheticSplit:
        """Train scenes are indices ``0..num_train-1``; val scenes start at ``VAL_INDEX_OFFSET`` (disjoint)."""
        self.check_split(split, domain)
        if split == "train":
            return SyntheticSplit(seed=self.options.seed, offset=0, length=self.options.num_train, size=self.size,
                                  domain=domain, flip=True)  # fmt: skip
        return SyntheticSplit(seed=self.options.seed, offset=VAL_INDEX_OFFSET, length=self.options.num_val,
                              size=self.size, domain=domain)  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"SyntheticScenes(size={self.size}, domains={self.domains}, train_domains={self.train_domains}, "
            f"num_train={self.options.num_train}, num_val={self.options.num_val}, seed={self.options.seed})"
        )


def build_synthetic(options: SyntheticOptions, context: BuildContext | None = None) -> SyntheticScenes:
    """Factory registered as dataset ``synthetic``; a data source needs nothing from the build context."""
    return SyntheticScenes(options)


__all__ = ["SyntheticScenes", "SyntheticSplit", "build_synthetic", "colorize"]
