"""VOC AP evaluator against hand-worked examples: 11-point / 101-point / area interpolation, difficult boxes,
duplicate detections, the strict IoU threshold and the devkit's max-IoU matching rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from vltk.engine.detection_metrics import VOCAveragePrecision, box_iou_numpy, interpolated_ap

A = [0.0, 0.0, 10.0, 10.0]
B = [20.0, 20.0, 30.0, 30.0]
C = [40.0, 40.0, 50.0, 50.0]  # difficult
FAR = [80.0, 80.0, 90.0, 90.0]


def prediction(boxes: list[list[float]], scores: list[float], labels: list[int] | None = None) -> dict:
    labels = [0] * len(boxes) if labels is None else labels
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def target(boxes: list[list[float]], labels: list[int], difficult: list[bool] | None = None) -> dict:
    out = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels)}
    if difficult is not None:
        out["difficult"] = torch.tensor(difficult)
    return out


def worked_example(interpolation: str) -> float:
    """Scores .9 -> A (TP), .8 -> C (difficult: ignored), .7 -> A again (FP), .6 -> nothing (FP), .5 -> B (TP).

    npos = 2 (C does not count). Curve: (rec, prec) = (.5, 1), (.5, 1), (.5, .5), (.5, 1/3), (1, .5).
    """
    metric = VOCAveragePrecision(1, interpolation=interpolation)
    metric.update(
        [prediction([A, C, A, FAR, B], [0.9, 0.8, 0.7, 0.6, 0.5])],
        [target([A, B, C], [0, 0, 0], [False, False, True])],
    )
    ap, num_gt, num_det = metric.class_ap(0)
    assert (num_gt, num_det) == (2, 5)
    return ap


def test_eleven_point_hand_worked() -> None:
    # t = 0, .1, ..., .5 reach recall .5 with precision 1 (6 points); t = .6 ... 1 only recall 1 at .5 (5 points)
    assert worked_example("11point") == pytest.approx((6 * 1.0 + 5 * 0.5) / 11)


def test_101_point_hand_worked() -> None:
    # t = 0.00 ... 0.50: 51 points at precision 1; t = 0.51 ... 1.00: 50 points at 0.5
    assert worked_example("101point") == pytest.approx((51 * 1.0 + 50 * 0.5) / 101)


def test_area_hand_worked() -> None:
    # envelope: precision 1 up to recall .5, then .5 up to recall 1
    assert worked_example("area") == pytest.approx(0.5 * 1.0 + 0.5 * 0.5)


def test_difficult_boxes_are_neither_positive_nor_counted() -> None:
    # Same detections with C not difficult: C becomes a TP, npos = 3 -> a different (higher-recall) curve.
    metric = VOCAveragePrecision(1)
    metric.update([prediction([A, C, A, FAR, B], [0.9, 0.8, 0.7, 0.6, 0.5])], [target([A, B, C], [0, 0, 0])])
    ap, num_gt, _ = metric.class_ap(0)
    assert num_gt == 3
    # curve: (1/3, 1), (2/3, 1), (2/3, 2/3), (2/3, 1/2), (1, 3/5): t<=.6 -> 1 (7 points), t>=.7 -> .6 (4 points)
    assert ap == pytest.approx((7 * 1.0 + 4 * 0.6) / 11)
    # a detection on a difficult box alone: no TP, no FP, recall 0 -> AP 0 (not NaN: one positive exists)
    metric = VOCAveragePrecision(1)
    metric.update([prediction([C], [0.9])], [target([A, C], [0, 0], [False, True])])
    assert metric.class_ap(0)[0] == 0.0


def test_threshold_is_strict_and_matching_uses_the_best_overlap() -> None:
    half = [0.0, 0.0, 10.0, 5.0]  # IoU with A is exactly 0.5 -> not a match (VOC: ovmax > 0.5)
    metric = VOCAveragePrecision(1)
    metric.update([prediction([half], [0.9])], [target([A], [0])])
    assert metric.class_ap(0)[0] == 0.0
    # Two ground truths A and A' (IoU(A, A') = 0.8). Both detections equal A: the second one's best overlap is the
    # already matched A, so it is a false positive even though it overlaps A' by 0.8 (the devkit's rule).
    a_prime = [0.0, 0.0, 10.0, 8.0]
    metric = VOCAveragePrecision(1)
    metric.update([prediction([A, A], [0.9, 0.8])], [target([A, a_prime], [0, 0])])
    # curve: (.5, 1), (.5, .5): 11-point -> 6 points at 1, recall 1 never reached
    assert metric.class_ap(0)[0] == pytest.approx(6 / 11)


def test_classes_images_and_map() -> None:
    metric = VOCAveragePrecision(3)
    metric.update(
        [prediction([A, B], [0.9, 0.8], [0, 1]), prediction([A], [0.7], [0])],
        [target([A], [0]), target([C], [1])],  # image 2: class-0 detection without class-0 truth -> FP
    )
    result = metric.compute()
    ap0, ap1, ap2 = result["ap"]
    assert ap0 == pytest.approx(1.0)  # TP at rank 1 (recall 1, precision 1) then an FP: envelope still 1
    assert ap1 == 0.0  # B does not overlap C
    assert math.isnan(ap2)  # no ground truth of class 2 anywhere
    assert result["map"] == pytest.approx(0.5)  # NaN classes left out
    assert result["num_gt"] == [1, 1, 0] and result["images"] == 2
    assert math.isnan(VOCAveragePrecision(2).compute()["map"])


def test_no_detections_and_interpolation_edges() -> None:
    metric = VOCAveragePrecision(1)
    metric.update([prediction([], [])], [target([A], [0])])
    assert metric.class_ap(0)[0] == 0.0
    # recall exactly 0.3 reaches the 0.3 sample point (the devkit's float arange would miss it)
    recall = np.array([0.1, 0.2, 0.3])
    assert interpolated_ap(recall, np.ones(3)) == pytest.approx(4 / 11)
    with pytest.raises(ValueError, match="interpolation"):
        VOCAveragePrecision(1, interpolation="7point")  # type: ignore[arg-type]


def test_iou_matches_torchvision() -> None:
    generator = torch.Generator().manual_seed(0)
    xy = torch.rand(7, 2, generator=generator) * 50
    boxes = torch.cat([xy, xy + torch.rand(7, 2, generator=generator) * 30 + 1], dim=1)
    expected = box_iou(boxes[:4].double(), boxes[3:].double()).numpy()
    np.testing.assert_allclose(box_iou_numpy(boxes[:4].numpy(), boxes[3:].numpy()), expected, rtol=1e-9)
