"""``synthetic-det``: instance boxes of the procedural street scenes, in the same six appearance domains.

Where the boxes come from: the synthetic renderer paints every object as an *instance* (the layout keeps an
instance id per pixel, with a class per instance), so a box is the extent of the **visible** pixels of one
instance — exact, occlusion-aware, and identical in all six domains because the layout is shared. No
connected-component guessing is needed. The layout comes from
:func:`vltk_plugins.datasets.synthetic.layout.scene_layout` and the image from
:func:`vltk_plugins.datasets.synthetic.domains.paint_domain`, the same two steps
:func:`~vltk_plugins.datasets.synthetic.render.render_scene` takes, so an image here is pixel-identical to the
segmentation dataset's.

Boxes are continuous ``(x1, y1, x2, y2)`` pixel coordinates in the returned image, labels are 0-based indices into
``classes`` (the detector adds the background class itself), ``difficult`` marks boxes that are neither trained
on nor counted by the VOC evaluator.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from vltk.api import CITYSCAPES_CLASSES, BuildContext, DetectionDataSource, DetectionSample
from vltk_plugins.datasets.flips import flip_boxes, flip_coin
from vltk_plugins.datasets.synthetic.domains import check_domain, paint_domain
from vltk_plugins.datasets.synthetic.layout import scene_layout
from vltk_plugins.datasets.synthetic.options import VAL_INDEX_OFFSET
from vltk_plugins.datasets.synthetic_det.options import SyntheticDetectionOptions


def instance_boxes(
    instance_map: np.ndarray, instance_class: np.ndarray, class_ids: Sequence[int], min_pixels: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of the visible pixels of every instance whose class is in ``class_ids``.

    ``instance_map`` ``[H, W]`` holds instance ids, ``instance_class[id]`` their class. Returns
    ``(boxes float32 [N, 4] continuous xyxy, classes int64 [N])``, ordered by instance id.
    """
    wanted = np.isin(instance_class[instance_map], np.asarray(class_ids))
    ys, xs = np.nonzero(wanted)
    if len(ys) == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    ids = instance_map[ys, xs]
    order = np.argsort(ids, kind="stable")
    ids, ys, xs = ids[order], ys[order], xs[order]
    starts = np.concatenate(([0], np.nonzero(np.diff(ids))[0] + 1))
    counts = np.diff(np.concatenate((starts, [len(ids)])))
    boxes = np.stack(
        [
            np.minimum.reduceat(xs, starts),
            np.minimum.reduceat(ys, starts),
            np.maximum.reduceat(xs, starts) + 1,
            np.maximum.reduceat(ys, starts) + 1,
        ],
        axis=1,
    ).astype(np.float32)
    keep = counts >= min_pixels
    return boxes[keep], instance_class[ids[starts]][keep].astype(np.int64)


def render_detection_scene(
    seed: int, index: int, size: tuple[int, int], domain: str, classes: Sequence[str], min_pixels: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image uint8 [3, H, W], boxes [N, 4], labels [N])`` of scene ``index`` in ``domain``.

    The image equals ``render_scene(seed, index, size, domain)[0]`` (same layout, same appearance seed);
    labels index ``classes`` (Cityscapes names).
    """
    check_domain(domain)
    layout = scene_layout(seed, index, size)
    image = paint_domain(layout, seed, index, domain).transpose(2, 0, 1)  # an HWC view of a CHW buffer
    city_ids = [CITYSCAPES_CLASSES.index(name) for name in classes]
    boxes, city_classes = instance_boxes(layout.instance_map, layout.inst_class, city_ids, min_pixels)
    lookup = {city: label for label, city in enumerate(city_ids)}
    labels = np.array([lookup[int(c)] for c in city_classes], dtype=np.int64)
    return np.ascontiguousarray(image), boxes, labels


class SyntheticDetectionSplit(Dataset):
    """``length`` scenes from layout index ``offset``; training splits flip left-right with a per-epoch coin."""

    def __init__(
        self, options: SyntheticDetectionOptions, *, offset: int, length: int, domain: str, flip: bool = False
    ) -> None:
        self.options = options
        self.offset, self.length, self.domain, self.flip = offset, length, domain, flip
        self.size = options.image_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> DetectionSample:
        if not 0 <= int(i) < self.length:
            raise IndexError(f"index {i} out of range for a split of {self.length} scenes")
        seed = self.options.seed
        index = self.offset + int(i)
        image, boxes, labels = render_detection_scene(
            seed, index, self.size, self.domain, self.options.classes, self.options.min_pixels
        )
        image_t = torch.from_numpy(image)
        boxes_t = torch.from_numpy(boxes)
        if self.flip and flip_coin(seed, index, self.epoch):
            image_t = image_t.flip(-1)
            boxes_t = flip_boxes(boxes_t, self.size[1])
        sides = torch.minimum(boxes_t[:, 2] - boxes_t[:, 0], boxes_t[:, 3] - boxes_t[:, 1])
        return {
            "image": image_t,
            "boxes": boxes_t,
            "labels": torch.from_numpy(labels),
            "difficult": sides < self.options.min_size,
            "domain": self.domain,
            "index": index,
        }


class SyntheticDetection(DetectionDataSource):
    """``synthetic-det``: instance boxes of the procedural street scenes in six appearance domains."""

    def __init__(self, options: SyntheticDetectionOptions | None = None) -> None:
        self.options = options or SyntheticDetectionOptions()
        self.classes = tuple(self.options.classes)
        self.domains = tuple(self.options.domains)
        self.train_domains = tuple(self.options.train_domains)

    def split(self, split: str, domain: str) -> SyntheticDetectionSplit:
        self.check_split(split, domain)
        if split == "train":
            return SyntheticDetectionSplit(
                self.options, offset=0, length=self.options.num_train, domain=domain, flip=True
            )
        return SyntheticDetectionSplit(
            self.options, offset=VAL_INDEX_OFFSET, length=self.options.num_val, domain=domain
        )

    def __repr__(self) -> str:
        return (
            f"SyntheticDetection(size={self.options.image_size}, classes={self.classes}, domains={self.domains}, "
            f"train_domains={self.train_domains})"
        )


def build_synthetic_detection(
    options: SyntheticDetectionOptions, context: BuildContext | None = None
) -> SyntheticDetection:
    """Factory registered as dataset ``synthetic-det``."""
    return SyntheticDetection(options)


__all__ = [
    "SyntheticDetection",
    "SyntheticDetectionSplit",
    "build_synthetic_detection",
    "instance_boxes",
    "render_detection_scene",
]
