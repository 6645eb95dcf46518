"""The ``ade20k`` dataset: ADEChallengeData2016 read from a local folder, as DenseCLIP trains and evaluates it.

One domain (``ade20k``: train = ``training``, val = ``validation``), 150 classes. Labels follow mmseg's
``reduce_zero_label``: 0 ("other") is ignored and 1..150 become 0..149. Training items get mmseg's ADE20K pipeline
(resize to (2048, 512) x a ratio in [0.5, 2] keeping the aspect ratio, 512 crop with ``cat_max_ratio`` 0.75,
flip, photometric distortion) from the urban module's augmentation functions; val items are resized to (2048, 512)
keeping the ratio, labels with nearest neighbour (mmseg scores at the original label size, see
docs/deviations.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from vltk.api import IGNORE_INDEX, BuildContext, DenseDataSource, DenseSample, UserError, coerce_options
from vltk_plugins.datasets.ade20k.classes import ADE20K_CLASSES, ADE20K_PALETTE
from vltk_plugins.datasets.ade20k.options import ADE20KOptions
from vltk_plugins.datasets.urban.dataset import (
    UrbanSplit,
    fit_size,
    photometric_distortion,
    random_crop,
    read_pair,
    resize_pair,
)
from vltk_plugins.datasets.urban.discovery import Pair

#: split -> the ADEChallengeData2016 folder name.
FOLDERS = {"train": "training", "val": "validation"}


def ade20k_pairs(root: Path, split: str) -> list[Pair]:
    """Image/label pairs of one split; a missing folder or an image without its label is one clear error."""
    folder = FOLDERS[split]
    images_dir, labels_dir = root / "images" / folder, root / "annotations" / folder
    for path in (images_dir, labels_dir):
        if not path.is_dir():
            raise UserError(
                f"ADE20K folder '{path}' does not exist: expected images/{folder}/*.jpg and "
                f"annotations/{folder}/*.png under the ADEChallengeData2016 root; check dataset.root (now '{root}')"
            )
    pairs = []
    for image in sorted(images_dir.glob("*.jpg")):
        label = labels_dir / f"{image.stem}.png"
        if not label.is_file():
            raise UserError(f"ADE20K image '{image}' has no label '{label}'; the annotations folder is incomplete")
        pairs.append(Pair(image, label, "ade20k"))
    if not pairs:
        raise UserError(f"no ADE20K images (*.jpg) in '{images_dir}'; check dataset.root (now '{root}')")
    return pairs


class ADE20KSplit(UrbanSplit):
    """One split with mmseg's ADE20K training augmentation or the evaluation resize (pairs, epoch seeding and
    length as the urban splits; only the per-item pipeline differs)."""

    options: ADE20KOptions

    def __getitem__(self, index: int) -> DenseSample:
        image, label = read_pair(self.pairs[index])
        long_edge, short_edge = self.options.scale
        if self.train:
            rng = np.random.default_rng([self.epoch, index, 13])
            ratio = rng.uniform(*self.options.ratio_range)  # mmseg Resize(img_scale, ratio_range), keep_ratio
            size = fit_size(*label.shape, int(long_edge * ratio), int(short_edge * ratio))
            image, label = resize_pair(image, label, size)
            image, label = random_crop(image, label, self.options.crop, self.options.cat_max_ratio, rng)
            if self.options.flip and rng.random() < 0.5:
                image, label = image[:, ::-1], label[:, ::-1]
            if self.options.photometric:
                image = photometric_distortion(np.ascontiguousarray(image), rng)
        else:
            image, label = resize_pair(image, label, fit_size(*label.shape, long_edge, short_edge))
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "label": torch.from_numpy(label.astype(np.int64)),
            "domain": self.domain,
            "index": index,
        }


class ADE20K(DenseDataSource):
    """ADE20K as one domain that is trained on and evaluated (no target domains: the score is plain mIoU)."""

    classes = ADE20K_CLASSES
    palette = ADE20K_PALETTE
    ignore_index = IGNORE_INDEX

    def __init__(self, options: ADE20KOptions) -> None:
        self.options = options
        self.domains = (options.name,)
        self.train_domains = (options.name,)
        self._pairs: dict[str, list[Pair]] = {}

    def pairs(self, split: str, domain: str) -> list[Pair]:
        self.check_split(split, domain)
        if split not in self._pairs:
            pairs = ade20k_pairs(Path(self.options.root), split)
            if split == "val" and self.options.max_val_images is not None:
                pairs = pairs[: self.options.max_val_images]
            self._pairs[split] = pairs
        return self._pairs[split]

    def split(self, split: str, domain: str) -> ADE20KSplit:
        return ADE20KSplit(self.pairs(split, domain), domain, self.options, train=split == "train")

    def __repr__(self) -> str:
        return f"ADE20K(root={self.options.root!r})"


def build_ade20k(options: ADE20KOptions | dict[str, Any] | None, context: BuildContext | None = None) -> ADE20K:
    """Factory registered as dataset ``ade20k``; Python callers may pass the options as a plain mapping."""
    if options is None:
        raise UserError("the ade20k dataset needs its folder: dataset.root=PATH/ADEChallengeData2016")
    return ADE20K(coerce_options(options, ADE20KOptions, "ade20k"))


__all__ = ["ADE20K", "FOLDERS", "ADE20KSplit", "ade20k_pairs", "build_ade20k"]
