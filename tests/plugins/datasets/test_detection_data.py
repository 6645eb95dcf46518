"""Detection datasets: synthetic-det boxes (exact, shared across domains, flipped with the image), the DWD reader on
a small fabricated VOC tree, and the errors for missing folders and lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vltk.errors import UserError
from vltk_plugins.datasets.detection.datasets import (
    DiverseWeather,
    SyntheticDetection,
    collate_detection,
    instance_boxes,
    parse_voc_xml,
    render_detection_scene,
    resize_scale,
)
from vltk_plugins.datasets.detection.options import DWD_CLASSES, DWD_DOMAINS, DWDOptions, SyntheticDetectionOptions
from vltk_plugins.datasets.synthetic.renderer import CITYSCAPES_CLASSES, render_scene

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


# ---------------------------------------------------------------------------------------------------- DWD


def _xml(objects: list[tuple[str, tuple[int, int, int, int], int]], size: tuple[int, int] = (60, 80)) -> str:
    body = "".join(
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{box[0]}</xmin>"
        f"<ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object>"
        for name, box, difficult in objects
    )
    return f"<annotation><size><width>{size[1]}</width><height>{size[0]}</height></size>{body}</annotation>"


def make_dwd(root: Path, domains: tuple[str, ...] = DWD_DOMAINS) -> None:
    """A tiny VOC tree per domain: two 60x80 images, lists train/test."""
    for domain in domains:
        folder = root / domain / "VOC2007"
        for part in ("Annotations", "JPEGImages", "ImageSets/Main"):
            (folder / part).mkdir(parents=True)
        for index in range(2):
            Image.new("RGB", (80, 60), (40 * (index + 1),) * 3).save(folder / "JPEGImages" / f"img{index}.jpg")
            objects = [("car", (11, 21, 40, 50), 0), ("person", (1, 1, 10, 30), 1), ("train", (5, 5, 9, 9), 0)]
            (folder / "Annotations" / f"img{index}.xml").write_text(_xml(objects))
        (folder / "ImageSets/Main/train.txt").write_text("img0\nimg1\n")
        (folder / "ImageSets/Main/test.txt").write_text("img1\n")


def test_parse_voc_xml(tmp_path: Path) -> None:
    path = tmp_path / "a.xml"
    path.write_text(_xml([("car", (11, 21, 40, 50), 0), ("person", (1, 1, 10, 30), 1), ("train", (5, 5, 9, 9), 0)]))
    parsed = parse_voc_xml(path, DWD_CLASSES)
    # 1-based inclusive VOC pixels -> continuous: x1 = xmin - 1, x2 = xmax (widths = xmax - xmin + 1, as the devkit)
    np.testing.assert_array_equal(parsed["boxes"], [[10, 20, 40, 50], [0, 0, 10, 30]])
    np.testing.assert_array_equal(parsed["labels"], [DWD_CLASSES.index("car"), DWD_CLASSES.index("person")])
    np.testing.assert_array_equal(parsed["difficult"], [False, True])
    assert parsed["size"] == (60, 80) and parsed["skipped"] == ["train"]
    (tmp_path / "bad.xml").write_text("<annotation><object>")
    with pytest.raises(UserError, match="cannot read VOC annotation"):
        parse_voc_xml(tmp_path / "bad.xml", DWD_CLASSES)


def test_dwd_reader_on_a_fabricated_tree(tmp_path: Path) -> None:
    make_dwd(tmp_path)
    source = DiverseWeather(DWDOptions(root=str(tmp_path), min_size=120, max_size=1000))
    assert source.classes == DWD_CLASSES and source.domains == DWD_DOMAINS
    assert source.train_domains == ("daytime_clear",) and len(source.target_domains) == 4
    assert len(source.split("val", "daytime_clear")) == 1  # the day-clear test list
    assert len(source.split("val", "night_rainy")) == 2  # targets are evaluated on their train lists
    val = source.split("val", "dusk_rainy")
    sample = val[0]
    assert sample["image"].shape == (3, 120, 160) and sample["image"].dtype == torch.uint8  # 60x80 scaled by 2
    torch.testing.assert_close(sample["boxes"], torch.tensor([[20.0, 40, 80, 100], [0, 0, 20, 60]]))
    assert sample["labels"].tolist() == [DWD_CLASSES.index("car"), DWD_CLASSES.index("person")]
    assert sample["difficult"].tolist() == [False, True] and sample["domain"] == "dusk_rainy"
    train = source.split("train", "daytime_clear")
    widths = [train[i]["image"].shape[-1] for i in range(2)]
    assert widths == [160, 160]
    assert resize_scale(720, 1280, 600, 1333) == pytest.approx(600 / 720)  # BDD frames -> 600 x 1067
    assert resize_scale(100, 1000, 600, 1333) == pytest.approx(1.333)


def test_dwd_errors_say_what_is_expected(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"does not exist.*Annotations"):
        DiverseWeather(DWDOptions(root=str(tmp_path / "nowhere")))
    make_dwd(tmp_path, domains=("daytime_clear",))
    with pytest.raises(UserError, match="night_sunny.*incomplete"):
        DiverseWeather(DWDOptions(root=str(tmp_path)))
    source = DiverseWeather(DWDOptions(root=str(tmp_path), domains=["daytime_clear"], train_list="trainval"))
    with pytest.raises(UserError, match=r"trainval.txt' is missing"):
        source.split("train", "daytime_clear")
    (tmp_path / "daytime_clear/VOC2007/ImageSets/Main/test.txt").write_text("ghost\n")
    with pytest.raises(UserError, match="cannot read VOC annotation"):
        source.split("val", "daytime_clear")[0]
    with pytest.raises(ValueError, match="unknown DWD domain"):
        DWDOptions(root=".", domains=["daytime_clearr"])
