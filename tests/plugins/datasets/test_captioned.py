"""``synthetic-captions``: captions say what the pixels show, named domains unchanged, held-out words, free looks."""

from __future__ import annotations

import numpy as np
import pytest

from vltk.api import CITYSCAPES_CLASSES
from vltk_plugins.datasets.synthetic.appearance import Appearance, paint_appearance, sample_appearance
from vltk_plugins.datasets.synthetic.captioned import OBJECT_CLASSES, CaptionedScenes
from vltk_plugins.datasets.synthetic.captioned_options import CaptionedOptions
from vltk_plugins.datasets.synthetic.captions import (
    HELD_OUT_WORDS,
    MIN_INSTANCE_FRACTION,
    THINGS,
    caption,
    scene_facts,
)
from vltk_plugins.datasets.synthetic.layout import scene_layout
from vltk_plugins.datasets.synthetic.options import SYNTHETIC_DOMAINS, VAL_INDEX_OFFSET
from vltk_plugins.datasets.synthetic.render import render_scene

NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _visible_instances(layout, cls: int) -> int:
    """Counted independently of ``scene_facts``: instances of ``cls`` with enough visible pixels."""
    ids, sizes = np.unique(layout.instance_map, return_counts=True)
    area = layout.label.size
    return sum(
        1 for i, n in zip(ids, sizes, strict=True) if layout.inst_class[i] == cls and n >= MIN_INSTANCE_FRACTION * area
    )


@pytest.mark.parametrize("index", [0, 3, 7, 11])
def test_caption_counts_match_the_label_and_instance_maps(index: int) -> None:
    layout = scene_layout(0, index, (96, 96))
    facts = scene_facts(layout, Appearance())
    for cls in THINGS:
        assert facts.counts.get(cls, 0) == _visible_instances(layout, cls), CITYSCAPES_CLASSES[cls]
        if facts.counts.get(cls, 0):  # every counted instance really has pixels of its class
            assert (layout.label == cls).any()
    text = caption(facts, np.random.default_rng(index), max_objects=9)
    for cls, count in facts.counts.items():
        singular, plural = THINGS[cls]
        nouns = singular if count == 1 else plural
        number = NUMBERS[count] if count < len(NUMBERS) else "many"
        assert any(f"{number} {noun}" in text for noun in nouns), (text, CITYSCAPES_CLASSES[cls], count)
    for cls in set(THINGS) - set(facts.counts):  # an absent class is never said to be there
        singular, plural = THINGS[cls]
        for noun in singular + plural:
            assert f"one {noun}" not in text and not any(f"{n} {noun}" in text for n in NUMBERS[2:])


def test_named_domains_render_exactly_as_the_synthetic_dataset() -> None:
    source = CaptionedScenes(CaptionedOptions(size=64, num_val=2))
    assert source.domains == SYNTHETIC_DOMAINS
    for domain in SYNTHETIC_DOMAINS:
        item = source.split("val", domain)[1]
        image, label = render_scene(0, VAL_INDEX_OFFSET + 1, (64, 64), domain)
        assert np.array_equal(item["image"].permute(1, 2, 0).numpy(), image)
        assert np.array_equal(item["label"].numpy(), label)
        assert SYNTHETIC_DOMAINS[item["condition"]] == domain


def test_held_out_words_are_in_captions_but_never_in_label_names() -> None:
    label_words = {word for name in CITYSCAPES_CLASSES for word in name.split()}
    assert HELD_OUT_WORDS and not (HELD_OUT_WORDS & label_words)
    assert {"automobile", "pedestrian", "trees"} <= HELD_OUT_WORDS
    source = CaptionedScenes(CaptionedOptions(size=64, num_train=40))
    split = source.split("train", "synthetic")
    words = {word.strip(".,:") for i in range(len(split)) for word in split[i]["caption"].split()}
    assert len(HELD_OUT_WORDS & words) >= 5  # the text tower meets them during pretraining


def test_free_appearance_changes_with_the_epoch_labels_do_not() -> None:
    split = CaptionedScenes(CaptionedOptions(size=64, num_train=4)).split("train", "synthetic")
    first = split[2]
    split.set_epoch(1)
    second = split[2]
    assert np.array_equal(first["label"].numpy(), second["label"].numpy())
    assert not np.array_equal(first["image"].numpy(), second["image"].numpy())
    assert first["objects"].shape == (len(OBJECT_CLASSES),)


def test_every_corner_of_the_appearance_space_paints() -> None:
    layout = scene_layout(0, 1, (64, 64))
    rng = np.random.default_rng(0)
    looks = [sample_appearance(rng) for _ in range(8)]
    looks.append(Appearance(realism=1, texture=1, sun=1, daylight=0, fog=1, rain=1, snow=1, noise=1))
    images = [paint_appearance(layout, np.random.default_rng(1), look) for look in looks]
    for image in images:
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    night = paint_appearance(layout, np.random.default_rng(1), Appearance(daylight=0.0))
    day = paint_appearance(layout, np.random.default_rng(1), Appearance(daylight=1.0))
    assert night.mean() < 0.6 * day.mean()
