"""The built-in ``synthetic`` dataset: determinism, shared layouts across domains, contract, options.

Render speed is measured by ``benchmarks/render_time.py``, not asserted here (timings flake on a loaded machine)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from vltk.api import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, BuildContext
from vltk.data.base import DenseDataSource
from vltk.errors import UserError
from vltk_plugins.datasets.synthetic.dataset import SyntheticScenes, build_synthetic, colorize
from vltk_plugins.datasets.synthetic.domains import DOMAIN_PAINTERS
from vltk_plugins.datasets.synthetic.options import SYNTHETIC_DOMAINS, VAL_INDEX_OFFSET, SyntheticOptions
from vltk_plugins.datasets.synthetic.render import render_domains, render_scene

SIZE = (64, 64)
ROAD, SIDEWALK, BUILDING, SKY = 0, 1, 2, 10


def test_classes_and_palette_follow_cityscapes_order() -> None:
    assert len(CITYSCAPES_CLASSES) == len(CITYSCAPES_PALETTE) == 19
    assert CITYSCAPES_CLASSES[:3] == ("road", "sidewalk", "building")
    assert CITYSCAPES_CLASSES[SKY] == "sky" and CITYSCAPES_CLASSES[-1] == "bicycle"
    assert CITYSCAPES_PALETTE[ROAD] == (128, 64, 128)


def test_render_is_deterministic_and_index_dependent() -> None:
    image, label = render_scene(3, 7, SIZE, "textured")
    again_image, again_label = render_scene(3, 7, SIZE, "textured")
    np.testing.assert_array_equal(image, again_image)
    np.testing.assert_array_equal(label, again_label)
    other_image, other_label = render_scene(3, 8, SIZE, "textured")
    assert not np.array_equal(label, other_label)
    assert not np.array_equal(image, other_image)
    assert not np.array_equal(render_scene(4, 7, SIZE, "textured")[1], label)  # the seed matters too


def test_render_shapes_dtypes_and_label_range() -> None:
    for index in range(4):
        image, label = render_scene(0, index, (96, 160), "synthetic")
        assert image.shape == (96, 160, 3) and image.dtype == np.uint8
        assert label.shape == (96, 160)
        assert label.min() >= 0 and label.max() < len(CITYSCAPES_CLASSES)  # every pixel labelled, no 255


def test_domains_share_the_layout_but_not_the_appearance() -> None:
    for index in range(3):
        images, label = render_domains(1, index, SIZE)
        assert set(images) == set(SYNTHETIC_DOMAINS)
        for domain in SYNTHETIC_DOMAINS:
            image, own_label = render_scene(1, index, SIZE, domain)
            np.testing.assert_array_equal(own_label, label)
            np.testing.assert_array_equal(image, images[domain])
        source = images["synthetic"].astype(np.float32)
        for domain in SYNTHETIC_DOMAINS[1:]:
            gap = np.abs(images[domain].astype(np.float32) - source).mean()
            assert gap > 15.0, f"{domain} is too close to the source domain (mean abs difference {gap:.1f})"


def test_scenes_contain_the_main_street_classes() -> None:
    seen = {c: 0 for c in range(19)}
    n = 24
    for index in range(n):
        label = render_scene(0, index, (128, 128), "synthetic")[1]
        present = np.unique(label)
        assert len(present) >= 5, f"scene {index} has only classes {present.tolist()}"
        for c in present:
            seen[int(c)] += 1
    for c in (ROAD, SKY, BUILDING):
        assert seen[c] >= 0.75 * n, f"{CITYSCAPES_CLASSES[c]} in only {seen[c]}/{n} scenes"
    for name in ("sidewalk", "pole", "vegetation", "car", "person", "traffic sign", "traffic light", "terrain"):
        assert seen[CITYSCAPES_CLASSES.index(name)] > 0, f"no {name} in {n} scenes"


def test_layout_is_the_same_scene_at_other_sizes() -> None:
    """The random stream does not depend on the size: a downscaled big render matches a small one."""
    small = render_scene(0, 5, (64, 64), "synthetic")[1]
    big = render_scene(0, 5, (256, 256), "synthetic")[1]
    agreement = (big[2::4, 2::4] == small).mean()
    assert agreement > 0.9


def test_unknown_domain_is_a_user_error_with_suggestion() -> None:
    with pytest.raises(UserError, match="did you mean 'night'"):
        render_scene(0, 0, SIZE, "nigth")


def test_colorize_uses_the_palette() -> None:
    label = np.array([[ROAD, SKY]], np.uint8)
    rgb = colorize(label)
    assert rgb.shape == (1, 2, 3) and tuple(rgb[0, 0]) == CITYSCAPES_PALETTE[ROAD]


def test_every_domain_has_a_painter() -> None:
    """The registry and the option names must stay in step: options accept exactly the domains that can paint."""
    assert sorted(DOMAIN_PAINTERS) == sorted(SYNTHETIC_DOMAINS)


def test_data_source_contract_and_items() -> None:
    context = BuildContext(num_classes=19)  # the factory needs nothing from the context, but must accept it
    source = build_synthetic(SyntheticOptions(size=(64, 96), num_train=6, num_val=3), context)
    assert isinstance(source, SyntheticScenes) and isinstance(source, DenseDataSource)
    assert source.classes == CITYSCAPES_CLASSES and source.palette == CITYSCAPES_PALETTE
    assert source.train_domains == ("synthetic",)
    assert source.target_domains == tuple(SYNTHETIC_DOMAINS[1:])
    assert source.ignore_index == 255
    train = source.split("train", "synthetic")
    val = source.split("val", "fog")
    assert len(train) == 6 and len(val) == 3
    item = train[2]
    assert set(item) == {"image", "label", "domain", "index"}
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 64, 96)
    assert item["label"].dtype == torch.int64 and item["label"].shape == (64, 96)
    assert item["domain"] == "synthetic" and item["index"] == 2
    vitem = val[1]
    assert vitem["domain"] == "fog" and vitem["index"] == VAL_INDEX_OFFSET + 1
    # the val image is exactly the renderer's output, channels first
    image, label = render_scene(0, VAL_INDEX_OFFSET + 1, (64, 96), "fog")
    np.testing.assert_array_equal(vitem["image"].numpy().transpose(1, 2, 0), image)
    np.testing.assert_array_equal(vitem["label"].numpy(), label)
    with pytest.raises(IndexError):
        train[6]
    batch = torch.utils.data.default_collate([train[0], train[1]])
    assert batch["image"].shape == (2, 3, 64, 96) and batch["label"].shape == (2, 64, 96)


def test_train_flips_are_deterministic_per_epoch_and_keep_image_and_label_aligned() -> None:
    train = build_synthetic(SyntheticOptions(size=64, num_train=8)).split("train", "synthetic")
    first = [train[i] for i in range(8)]
    again = [train[i] for i in range(8)]
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    flipped = 0
    for i, item in enumerate(first):
        image, label = render_scene(0, i, 64, "synthetic")
        if np.array_equal(item["label"].numpy(), label):
            np.testing.assert_array_equal(item["image"].numpy().transpose(1, 2, 0), image)
        else:
            flipped += 1
            np.testing.assert_array_equal(item["label"].numpy(), label[:, ::-1])
            np.testing.assert_array_equal(item["image"].numpy().transpose(1, 2, 0), image[:, ::-1])
    assert 0 < flipped < 8
    train.set_epoch(1)
    assert any(not torch.equal(train[i]["image"], first[i]["image"]) for i in range(8))


def test_val_indices_are_disjoint_from_train() -> None:
    source = build_synthetic(SyntheticOptions(num_train=512, num_val=32))
    train = source.split("train", "synthetic")
    val = source.split("val", "synthetic")
    train_ids = {train.layout_index(i) for i in range(len(train))}
    val_ids = {val.layout_index(i) for i in range(len(val))}
    assert not train_ids & val_ids
    assert not np.array_equal(val[0]["label"].numpy(), train[0]["label"].numpy())


def test_split_errors() -> None:
    source = build_synthetic(SyntheticOptions(domains=["synthetic", "fog"], size=32))
    with pytest.raises(UserError, match="did you mean 'train'"):
        source.split("trian", "synthetic")
    with pytest.raises(UserError, match="did you mean 'fog'"):
        source.split("val", "fgo")
    with pytest.raises(UserError, match="domains: synthetic, fog"):
        source.split("val", "night")  # a valid renderer domain, but not one this source evaluates


def test_options_defaults_and_sizes() -> None:
    options = SyntheticOptions()
    assert options.image_size == (128, 128)
    assert options.domains == list(SYNTHETIC_DOMAINS) and options.train_domains == ["synthetic"]
    assert (options.num_train, options.num_val, options.seed) == (512, 32, 0)
    assert SyntheticOptions(size=[64, 96]).image_size == (64, 96)
    for field in SyntheticOptions.model_fields.values():
        assert field.description
    for bad in (48, 16, (64, 100), 0):
        with pytest.raises(ValidationError, match="multiple of 32"):
            SyntheticOptions(size=bad)


def test_options_domain_validation() -> None:
    with pytest.raises(ValidationError, match="did you mean 'snow'.*valid domains: synthetic, textured"):
        SyntheticOptions(domains=["synthetic", "snwo"])
    with pytest.raises(ValidationError, match="did you mean 'synthetic'"):
        SyntheticOptions(train_domains=["synthetc"])
    with pytest.raises(ValidationError, match="must also be listed in domains"):
        SyntheticOptions(domains=["synthetic", "fog"], train_domains=["night"])
    with pytest.raises(ValidationError, match="extra"):
        SyntheticOptions(szie=64)
    options = SyntheticOptions(domains=["fog", "synthetic", "fog"], train_domains=["synthetic"])
    assert options.domains == ["fog", "synthetic"]
