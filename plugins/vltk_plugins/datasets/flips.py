"""Horizontal flips the built-in datasets share: the per-epoch coin and mirrored boxes.

Training splits mirror an item when a coin seeded by ``(seed, index, epoch)`` says so: deterministic (a resumed
or repeated run sees the same flips), fresh every epoch (after ``set_epoch``), and independent of worker count
and order, because no generator state is carried from one item to the next.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor


def flip_coin(seed: int, index: int, epoch: int) -> bool:
    """Whether item ``index`` of a ``seed``-ed split is mirrored in ``epoch`` (probability 1/2)."""
    return bool(np.random.default_rng([seed, index, epoch, 7]).random() < 0.5)


def flip_boxes(boxes: Tensor, width: int) -> Tensor:
    """Mirror xyxy boxes ``[N, 4]`` in an image of ``width`` pixels."""
    flipped = boxes.clone()
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return flipped


__all__ = ["flip_boxes", "flip_coin"]
