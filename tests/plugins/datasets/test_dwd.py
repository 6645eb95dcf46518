"""``dwd``: the Diverse Weather reader on a small fabricated VOC tree, and the errors for missing folders and lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vltk.errors import UserError
from vltk_plugins.datasets.dwd.dataset import DiverseWeather, parse_voc_xml, resize_scale
from vltk_plugins.datasets.dwd.options import DWD_CLASSES, DWD_DOMAINS, DWDOptions


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
