"""Segmentation metrics: confusion matrix -> per-class IoU -> mIoU, per domain and over target domains.

Domain generalisation papers (Rein, VLTSeg) report mIoU on every target domain and their mean; the source
domain's own mIoU shows how large the gap is. Classes absent from both prediction and ground truth of a
domain are left out of that domain's mean (NaN IoU), as mmseg does. The relative performance drop
(:func:`relative_drops`, "rPD") puts each target's mIoU in proportion to the source's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor


class ConfusionMatrix:
    """Accumulates a ``[K, K]`` (ground truth x prediction) matrix, ignoring ``ignore_index`` pixels."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, prediction: Tensor, target: Tensor) -> None:
        prediction = prediction.reshape(-1).to(torch.int64).cpu()
        target = target.reshape(-1).to(torch.int64).cpu()
        keep = (target != self.ignore_index) & (target >= 0) & (target < self.num_classes)
        index = target[keep] * self.num_classes + prediction[keep]
        self.matrix += torch.bincount(index, minlength=self.num_classes**2).view(self.num_classes, self.num_classes)

    def iou(self) -> list[float]:
        """Per-class IoU; NaN for classes that appear in neither ground truth nor prediction."""
        matrix = self.matrix.double()
        intersection = matrix.diag()
        union = matrix.sum(0) + matrix.sum(1) - intersection
        return [float(i / u) if u > 0 else math.nan for i, u in zip(intersection.tolist(), union.tolist(), strict=True)]

    def miou(self) -> float:
        return nanmean(self.iou())

    def accuracy(self) -> float:
        total = int(self.matrix.sum())
        return float(self.matrix.diag().sum()) / total if total else math.nan


def nanmean(values: Iterable[float]) -> float:
    kept = [value for value in values if not math.isnan(value)]
    return sum(kept) / len(kept) if kept else math.nan


def summarise_domains(miou_by_domain: dict[str, float], train_domains: Iterable[str]) -> dict[str, float]:
    """Add ``source`` (mean over training domains), ``target_avg`` (mean over the others) and ``gap``."""
    train_domains = set(train_domains)
    source = nanmean(value for domain, value in miou_by_domain.items() if domain in train_domains)
    target = nanmean(value for domain, value in miou_by_domain.items() if domain not in train_domains)
    return {"source": source, "target_avg": target, "gap": source - target}


def relative_drop(source_miou: float, target_miou: float) -> float:
    """Relative performance drop in percent: ``100 * (source - target) / source`` (NaN when undefined).

    vltk's own metric for "how much of the in-domain performance survives the shift"; VLTSeg mentions an rPD but
    its exact definition could not be verified, so numbers may not be comparable with that paper's. Positive means
    the target domain is worse than the source; 0 means no drop; negative means the target is better.
    """
    if math.isnan(source_miou) or math.isnan(target_miou) or source_miou <= 0:
        return math.nan
    return 100.0 * (source_miou - target_miou) / source_miou


def relative_drops(miou_by_domain: dict[str, float], train_domains: Iterable[str]) -> dict[str, float]:
    """rPD(S->T) for every target domain T, with S->S the mean mIoU over the training (source) domains.

    Returns ``{target domain: rPD in percent}``; the mean over targets is ``nanmean(result.values())``.
    """
    train_domains = set(train_domains)
    source = nanmean(value for domain, value in miou_by_domain.items() if domain in train_domains)
    return {
        domain: relative_drop(source, value) for domain, value in miou_by_domain.items() if domain not in train_domains
    }
