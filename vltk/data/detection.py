"""The contract between a detection dataset plugin and the engine: :class:`DetectionDataSource` and its batches.

A detection source is the detection twin of :class:`vltk.data.base.DenseDataSource`: class names, the domains
evaluated and the ones trained on, and ``split(split, domain)`` giving a ``Dataset`` of :class:`DetectionSample`
dicts. ``task = "detection"`` lets the pipeline refuse a segmentation dataset in a detection run (and the reverse)
with a clear message instead of a ``KeyError`` deep in a collate function.

Boxes are continuous ``(x1, y1, x2, y2)`` pixel coordinates in the returned image, labels are 0-based indices into
``classes`` (the detector adds the background class itself), ``difficult`` marks boxes that are neither trained on
nor counted by the VOC evaluator.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, TypedDict

from torch import Tensor
from torch.utils.data import Dataset

from vltk.data.base import SPLITS
from vltk.errors import UserError, did_you_mean

#: Distinct colours for drawing boxes of up to 10 classes (then repeated).
BOX_COLOURS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
)


class DetectionSample(TypedDict):
    """One item: ``image`` uint8 ``[3, H, W]``, ``boxes`` float32 ``[N, 4]`` xyxy, ``labels`` int64 ``[N]``,
    ``difficult`` bool ``[N]``, plus its domain and index."""

    image: Tensor
    boxes: Tensor
    labels: Tensor
    difficult: Tensor
    domain: str
    index: int


class DetectionDataSource(ABC):
    """Boxes in one or more domains, trained on ``train_domains`` and evaluated (AP50) on every domain."""

    task: str = "detection"
    classes: tuple[str, ...]
    domains: tuple[str, ...]
    train_domains: tuple[str, ...]
    #: Not used by detection; present so code that reads a source's ignore index generically keeps working.
    ignore_index: int = 255

    @abstractmethod
    def split(self, split: str, domain: str) -> Dataset:
        """The ``"train"`` or ``"val"`` images of ``domain`` as :class:`DetectionSample` dicts."""

    @property
    def palette(self) -> tuple[tuple[int, int, int], ...]:
        """One colour per class (for drawing boxes; saved in checkpoints like a segmentation palette)."""
        return tuple(BOX_COLOURS[index % len(BOX_COLOURS)] for index in range(len(self.classes)))

    @property
    def target_domains(self) -> tuple[str, ...]:
        return tuple(domain for domain in self.domains if domain not in self.train_domains)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def check_split(self, split: str, domain: str) -> None:
        if split not in SPLITS:
            raise UserError(f"unknown split '{split}';{did_you_mean(split, SPLITS)} splits: {', '.join(SPLITS)}")
        if domain not in self.domains:
            raise UserError(
                f"unknown domain '{domain}' for {type(self).__name__};{did_you_mean(domain, self.domains)} "
                f"domains: {', '.join(self.domains)}"
            )


def collate_detection(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Images stay a list (sizes may differ; the detector pads), as float in [0, 1]; targets as dicts."""
    return {
        "images": [item["image"].float().div_(255.0) for item in items],
        "targets": [
            {"boxes": item["boxes"].float(), "labels": item["labels"].long(), "difficult": item["difficult"].bool()}
            for item in items
        ],
        "domain": [item["domain"] for item in items],
    }


__all__ = ["BOX_COLOURS", "DetectionDataSource", "DetectionSample", "collate_detection"]
