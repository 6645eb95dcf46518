"""``synthetic-det``: boxes are exact, shared across domains and flipped with the image; the source's splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vltk.api import CITYSCAPES_CLASSES, collate_detection
from vltk.errors import UserError
from vltk_plugins.datasets.synthetic.render import render_scene
from vltk_plugins.datasets.synthetic_det.dataset import SyntheticDetection, instance_boxes, render_detection_scene
from vltk_plugins.datasets.synthetic_det.options import SyntheticDetectionOptions

SIZE = (64, 96)


def test_instance_boxes_by_hand() -> None:
    instances = np.zeros((6, 8), np.int64)
    instances[1:3, 2:5] = 1  # class 7, 2x3 pixels
    instances[4, 0] = 2  # class 7, one pixel
    instances[0:6, 7] = 3  # class 5 (not wanted)
    instances[5, 5:7] = 4  # class 7, two pixels
    classes = np.array([0, 7, 7, 5, 7])
    boxes, labels = instance_boxes(instances, classes, [7], min_pixels=2)
    np.testing.assert_array_equal(boxes, [[2, 1, 5, 3], [5, 5, 7, 6]])  # instance 2 has < 2 pixels
    np.testing.assert_array_equal(labels, [7, 7])


def test_synthetic_boxes_are_the_visible_instances_of_the_label_map() -> None:
    classes = ["car", "person", "traffic sign"]
    image, boxes, labels = render_detection_scene(0, 3, SIZE, "fog", classes)
    reference, label_map = render_scene(0, 3, SIZE, "fog")
    np.testing.assert_array_equal(image, reference.transpose(2, 0, 1))  # pixel-identical to the segmentation set
    assert len(boxes) > 0 and boxes.dtype == np.float32
    for box, label in zip(boxes, labels, strict=True):
        x1, y1, x2, y2 = box.astype(int)
        assert 0 <= x1 < x2 <= SIZE[1] and 0 <= y1 < y2 <= SIZE[0]
        city = CITYSCAPES_CLASSES.index(classes[label])
        inside = label_map[y1:y2, x1:x2] == city
        # the box is tight: every border row/column holds a pixel of that class
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
    # every pixel of a boxed class lies in some box of that class
    for label, name in enumerate(classes):
        covered = np.zeros(SIZE, bool)
        for box in boxes[labels == label].astype(int):
            covered[box[1] : box[3], box[0] : box[2]] = True
        assert not ((label_map == CITYSCAPES_CLASSES.index(name)) & ~covered).any()
    # same layout in every domain: same boxes
    _, boxes_night, labels_night = render_detection_scene(0, 3, SIZE, "night", classes)
    np.testing.assert_array_equal(boxes, boxes_night)
    np.testing.assert_array_equal(labels, labels_night)


def test_synthetic_source_splits_flips_and_difficult() -> None:
    options = SyntheticDetectionOptions(size=list(SIZE), num_train=6, num_val=2, domains=["synthetic", "snow"])
    source = SyntheticDetection(options)
    assert source.classes == ("car", "person", "traffic sign") and source.task == "detection"
    assert source.target_domains == ("snow",) and len(source.palette) == 3
    train = source.split("train", "synthetic")
    flipped = 0
    for index in range(len(train)):
        sample = train[index]
        image, boxes, _ = render_detection_scene(0, index, SIZE, "synthetic", source.classes, options.min_pixels)
        if torch.equal(sample["image"], torch.from_numpy(image)):
            torch.testing.assert_close(sample["boxes"], torch.from_numpy(boxes))
        else:
            flipped += 1
            torch.testing.assert_close(sample["image"], torch.from_numpy(image).flip(-1))
            np.testing.assert_allclose(sample["boxes"][:, [2, 0]].numpy(), SIZE[1] - boxes[:, [0, 2]])
        sides = torch.minimum(
            sample["boxes"][:, 2] - sample["boxes"][:, 0], sample["boxes"][:, 3] - sample["boxes"][:, 1]
        )
        torch.testing.assert_close(sample["difficult"], sides < options.min_size)
    assert 0 < flipped < len(train)  # a coin per image
    val = source.split("val", "snow")
    assert len(val) == 2 and val[0]["index"] >= 1_000_000
    batch = collate_detection([val[0], val[1]])
    assert batch["images"][0].dtype == torch.float32 and float(batch["images"][0].max()) <= 1.0
    assert set(batch["targets"][0]) == {"boxes", "labels", "difficult"} and batch["domain"] == ["snow", "snow"]
    with pytest.raises(UserError, match="unknown domain"):
        source.split("val", "fog")
    with pytest.raises(ValueError, match="unknown box class"):
        SyntheticDetectionOptions(classes=["cars"])
