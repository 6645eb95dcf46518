"""Overlay PNGs carry a title, panel captions and a legend of exactly the classes that appear, for label maps
(segmentation, ``vltk predict``) and boxes (detection)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vltk.engine.overlays import legend_entries, write_box_overlay
from vltk.engine.report import write_overlay

NAMES = ("road", "car", "sky")
PALETTE = ((200, 0, 0), (0, 200, 0), (0, 0, 200))


def _colours(path: Path) -> set[tuple[int, int, int]]:
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    return {tuple(int(c) for c in pixel) for pixel in np.unique(pixels, axis=0)}


def test_the_legend_names_the_classes_that_appear_and_ignore() -> None:
    label = np.array([[0, 0], [255, 2]])
    prediction = np.array([[0, 2], [2, 2]])
    assert legend_entries([label, prediction], NAMES, PALETTE) == [
        ("road", (200, 0, 0)),
        ("sky", (0, 0, 200)),
        ("ignore", (0, 0, 0)),
    ]
    assert legend_entries([np.array([7])], NAMES, PALETTE)[0][0] == "class 7"


def test_a_label_map_overlay_has_captions_and_a_swatch_per_present_class(tmp_path: Path) -> None:
    image = np.full((32, 48, 3), 128, np.uint8)
    label = np.zeros((32, 48), np.int64)
    prediction = np.full((32, 48), 2, np.int64)
    plain = write_overlay(tmp_path / "plain.png", image, label, prediction, PALETTE)
    titled = write_overlay(
        tmp_path / "o.png", image, label, prediction, PALETTE, class_names=NAMES, title="domain fog, image 0"
    )
    colours = _colours(titled)
    assert {(200, 0, 0), (0, 0, 200)} <= colours  # the swatches of road and sky, unblended
    assert (0, 200, 0) not in colours  # car appears nowhere: no swatch
    assert Image.open(titled).size[1] > Image.open(plain).size[1]  # the legend rows below the panels
    assert (0, 0, 200) not in _colours(plain)  # without class names there is no legend


def test_a_box_overlay_draws_both_panels_with_class_colours(tmp_path: Path) -> None:
    image = np.zeros((40, 60, 3), np.uint8)
    truth = {"boxes": np.array([[5.0, 5.0, 30.0, 30.0]]), "labels": np.array([1])}
    prediction = {"boxes": np.array([[6.0, 6.0, 31.0, 29.0]]), "labels": np.array([1]), "scores": np.array([0.9])}
    path = write_box_overlay(tmp_path / "b.png", image, truth, prediction, NAMES, PALETTE, title="fog 0")
    width, _ = Image.open(path).size
    assert width >= 2 * 60  # ground truth | prediction
    colours = _colours(path)
    assert (0, 200, 0) in colours and (200, 0, 0) not in colours  # car only
