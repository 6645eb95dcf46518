"""Detection metrics: PASCAL VOC average precision per class at one IoU threshold, mAP per domain.

This is the protocol CLIP the Gap and Single-DGOD report on the Diverse Weather Dataset: AP at IoU 0.5 with the
VOC2007 **11-point** interpolation (the datasets are registered as "year 2007"), difficult boxes ignored. The
matching rules follow the VOC devkit exactly, because they change the numbers:

* detections of one class are taken over all images in decreasing score order;
* each detection is compared with *every* ground-truth box of its image and class (difficult and already
  matched ones included) and keeps the one with the largest IoU; it is a true positive only when that IoU is
  **strictly greater** than the threshold, the box is not difficult and not yet matched; matching a difficult
  box makes the detection neither true nor false positive; everything else is a false positive;
* recall is divided by the number of non-difficult ground-truth boxes.

Boxes are continuous ``(x1, y1, x2, y2)`` pixel coordinates. VOC files store 1-based inclusive pixel indices and
the devkit adds 1 to widths; readers that convert ``x1 = xmin - 1, x2 = xmax`` (as vltk's DWD reader and
detectron2 do) make the plain continuous IoU used here equal to the devkit's.

Interpolations: ``"11point"`` (VOC2007: mean of the precision envelope at recall 0, 0.1, ..., 1),
``"101point"`` (COCO-style sampling of the same envelope at 101 recall values) and ``"area"`` (VOC2010+: the
exact area under the envelope). A class without non-difficult ground truth in a domain has AP NaN and is left
out of that domain's mAP (the devkit would divide by zero).

One deliberate difference: the devkit samples recall at ``np.arange(0, 1.1, 0.1)``, whose float values miss e.g.
a recall of exactly 3/10 (``0.30000000000000004 > 0.3``); here a recall equal to a sample point reaches it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

Interpolation = Literal["11point", "101point", "area"]
INTERPOLATIONS: tuple[str, ...] = ("11point", "101point", "area")


def box_iou_numpy(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU matrix ``[N, M]`` of continuous xyxy boxes (zero-area unions give 0)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    others = np.asarray(others, dtype=np.float64).reshape(-1, 4)
    x1 = np.maximum(boxes[:, None, 0], others[None, :, 0])
    y1 = np.maximum(boxes[:, None, 1], others[None, :, 1])
    x2 = np.minimum(boxes[:, None, 2], others[None, :, 2])
    y2 = np.minimum(boxes[:, None, 3], others[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area_b = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def interpolated_ap(recall: np.ndarray, precision: np.ndarray, interpolation: Interpolation = "11point") -> float:
    """Average precision from a recall/precision curve (detections in decreasing score order)."""
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if interpolation in ("11point", "101point"):
        points = np.linspace(0.0, 1.0, 11 if interpolation == "11point" else 101)
        total = 0.0
        for threshold in points:
            reached = recall >= threshold - 1e-9  # see the module docstring on float sample points
            total += float(precision[reached].max()) if reached.any() else 0.0
        return total / len(points)
    if interpolation == "area":
        mrec = np.concatenate(([0.0], recall, [1.0]))
        mpre = np.concatenate(([0.0], precision, [0.0]))
        mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
        steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
        return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))
    raise ValueError(f"unknown interpolation '{interpolation}'; choose one of {', '.join(INTERPOLATIONS)}")


def _numpy(value: Tensor | np.ndarray | Sequence[float], dtype: type) -> np.ndarray:
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


class VOCAveragePrecision:
    """Accumulates detections and ground truth image by image; :meth:`compute` gives per-class AP and mAP.

    Labels are 0-based class indices into the dataset's classes (no background). ``update`` takes one
    prediction dict (``boxes [N, 4]``, ``scores [N]``, ``labels [N]``) and one target dict (``boxes [M, 4]``,
    ``labels [M]``, optional ``difficult [M]`` bool) per image.
    """

    def __init__(self, num_classes: int, iou_threshold: float = 0.5, interpolation: Interpolation = "11point") -> None:
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation '{interpolation}'; choose one of {', '.join(INTERPOLATIONS)}")
        self.num_classes = int(num_classes)
        self.iou_threshold = float(iou_threshold)
        self.interpolation: Interpolation = interpolation
        self._images: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = []

    def __len__(self) -> int:
        return len(self._images)

    @classmethod
    def merged(cls, parts: Sequence[VOCAveragePrecision]) -> VOCAveragePrecision:
        """One accumulator holding the images of ``parts`` in order (shards of one domain, e.g. per rank)."""
        if not parts:
            raise ValueError("nothing to merge")
        first = parts[0]
        merged = cls(first.num_classes, iou_threshold=first.iou_threshold, interpolation=first.interpolation)
        for part in parts:
            if (part.num_classes, part.iou_threshold, part.interpolation) != (
                first.num_classes,
                first.iou_threshold,
                first.interpolation,
            ):
                raise ValueError("cannot merge accumulators of different classes, thresholds or interpolations")
            merged._images.extend(part._images)
        return merged

    def update(self, predictions: Sequence[dict[str, Tensor]], targets: Sequence[dict[str, Tensor]]) -> None:
        """Add a batch: one prediction dict and one target dict per image."""
        if len(predictions) != len(targets):
            raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
        for prediction, target in zip(predictions, targets, strict=True):
            gt_labels = _numpy(target["labels"], np.int64).reshape(-1)
            difficult = target.get("difficult")
            self._images.append(
                (
                    {
                        "boxes": _numpy(prediction["boxes"], np.float64).reshape(-1, 4),
                        "scores": _numpy(prediction["scores"], np.float64).reshape(-1),
                        "labels": _numpy(prediction["labels"], np.int64).reshape(-1),
                    },
                    {
                        "boxes": _numpy(target["boxes"], np.float64).reshape(-1, 4),
                        "labels": gt_labels,
                        "difficult": (
                            np.zeros(len(gt_labels), dtype=bool)
                            if difficult is None
                            else _numpy(difficult, np.bool_).reshape(-1)
                        ),
                    },
                )
            )

    def class_ap(self, class_index: int) -> tuple[float, int, int]:
        """``(AP, non-difficult ground-truth boxes, detections)`` of one class; AP is NaN without ground truth."""
        image_ids: list[np.ndarray] = []
        scores: list[np.ndarray] = []
        boxes: list[np.ndarray] = []
        gt: list[tuple[np.ndarray, np.ndarray]] = []
        num_positive = 0
        for image_id, (prediction, target) in enumerate(self._images):
            keep = prediction["labels"] == class_index
            image_ids.append(np.full(int(keep.sum()), image_id))
            scores.append(prediction["scores"][keep])
            boxes.append(prediction["boxes"][keep])
            gt_keep = target["labels"] == class_index
            gt.append((target["boxes"][gt_keep], target["difficult"][gt_keep]))
            num_positive += int((~target["difficult"][gt_keep]).sum())
        all_ids = np.concatenate(image_ids) if image_ids else np.zeros(0, np.int64)
        all_scores = np.concatenate(scores) if scores else np.zeros(0)
        all_boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4))
        if num_positive == 0:
            return math.nan, 0, len(all_scores)
        order = np.argsort(-all_scores, kind="stable")
        matched = [np.zeros(len(item[0]), dtype=bool) for item in gt]
        true_positive = np.zeros(len(order))
        false_positive = np.zeros(len(order))
        for rank, index in enumerate(order):
            gt_boxes, gt_difficult = gt[all_ids[index]]
            if len(gt_boxes) == 0:
                false_positive[rank] = 1
                continue
            overlaps = box_iou_numpy(all_boxes[index : index + 1], gt_boxes)[0]
            best = int(np.argmax(overlaps))
            if overlaps[best] > self.iou_threshold:
                if gt_difficult[best]:
                    continue  # neither true nor false positive (VOC)
                if not matched[all_ids[index]][best]:
                    true_positive[rank] = 1
                    matched[all_ids[index]][best] = True
                else:
                    false_positive[rank] = 1
            else:
                false_positive[rank] = 1
        tp = np.cumsum(true_positive)
        fp = np.cumsum(false_positive)
        recall = tp / num_positive
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        return interpolated_ap(recall, precision, self.interpolation), num_positive, len(order)

    def compute(self) -> dict[str, object]:
        """``{"ap": [AP per class], "map": mean over classes with ground truth, "num_gt": [...], "images": n}``."""
        aps, counts = [], []
        for class_index in range(self.num_classes):
            ap, num_gt, _ = self.class_ap(class_index)
            aps.append(ap)
            counts.append(num_gt)
        kept = [ap for ap in aps if not math.isnan(ap)]
        return {
            "ap": aps,
            "map": sum(kept) / len(kept) if kept else math.nan,
            "num_gt": counts,
            "images": len(self._images),
        }


def to_tensor_target(target: dict[str, object]) -> dict[str, Tensor]:
    """Convenience for tests and notebooks: lists -> tensors with the dtypes :class:`VOCAveragePrecision` reads."""
    return {
        "boxes": torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4),
        "labels": torch.as_tensor(target["labels"], dtype=torch.int64).reshape(-1),
        **(
            {"difficult": torch.as_tensor(target["difficult"], dtype=torch.bool).reshape(-1)}
            if "difficult" in target
            else {}
        ),
    }


__all__ = ["INTERPOLATIONS", "VOCAveragePrecision", "box_iou_numpy", "interpolated_ap", "to_tensor_target"]
