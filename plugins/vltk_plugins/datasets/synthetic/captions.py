"""Captions generated from what is really in a scene: conditions, objects with counts and rough positions.

Why: contrastive image-text pretraining teaches the text tower language only if captions vary the way language
does. So every object class has synonyms ("car/automobile/vehicle", "person/pedestrian",
"vegetation/trees"), counts are written as words, positions are left/centre/right of the image, conditions come
from the scene's point in the appearance space (:mod:`.appearance`), and several templates order the facts
differently. Counts and positions are read off the label and instance maps of the layout (what the pixels
show, after occlusion), so a caption never mentions a car the image does not show.

:data:`HELD_OUT_WORDS` are the synonyms no fine-tuning label name uses ("automobile", "pedestrian", "foliage"...):
the open-vocabulary tests name classes with them, words the text tower met only in captions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vltk.api import CITYSCAPES_CLASSES
from vltk_plugins.datasets.synthetic.appearance import Appearance
from vltk_plugins.datasets.synthetic.codes import (
    BICYCLE,
    BUILDING,
    BUS,
    CAR,
    LIGHT,
    MOTORCYCLE,
    PERSON,
    RIDER,
    SIGN,
    TERRAIN,
    TRUCK,
    VEGETATION,
)
from vltk_plugins.datasets.synthetic.layout import Layout

#: Countable classes -> (singular synonyms, plural synonyms); the first synonym is the label name.
THINGS: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = {
    CAR: (("car", "automobile", "vehicle"), ("cars", "automobiles", "vehicles")),
    PERSON: (("person", "pedestrian"), ("people", "pedestrians")),
    TRUCK: (("truck", "lorry"), ("trucks", "lorries")),
    BUS: (("bus", "coach"), ("buses", "coaches")),
    RIDER: (("rider", "cyclist"), ("riders", "cyclists")),
    BICYCLE: (("bicycle", "bike"), ("bicycles", "bikes")),
    MOTORCYCLE: (("motorcycle", "motorbike"), ("motorcycles", "motorbikes")),
    LIGHT: (("traffic light", "signal"), ("traffic lights", "signals")),
    SIGN: (("traffic sign", "signpost"), ("traffic signs", "signposts")),
}
#: Stuff classes mentioned by coverage (fraction of the image) -> synonyms.
STUFF: dict[int, tuple[str, ...]] = {
    VEGETATION: ("vegetation", "trees", "foliage"),
    BUILDING: ("buildings", "houses", "facades"),
    TERRAIN: ("terrain", "grass", "lawn"),
}

#: Condition names of the named domains (what zero-shot condition classification chooses between).
CONDITIONS: dict[str, tuple[str, ...]] = {
    "synthetic": ("a video game", "a computer rendering", "flat colours"),
    "textured": ("clear weather", "daylight", "a sunny day"),
    "fog": ("fog", "mist", "haze"),
    "night": ("night", "darkness", "the dark"),
    "rain": ("rain", "a downpour", "wet weather"),
    "snow": ("snow", "a snowfall", "winter"),
}

_LABEL_WORDS = {word for name in CITYSCAPES_CLASSES for word in name.split()}
#: Words captions use that no Cityscapes label name contains: the open-vocabulary vocabulary.
HELD_OUT_WORDS: frozenset[str] = frozenset(
    word
    for singular, plural in THINGS.values()
    for phrase in singular[1:] + plural[1:]
    for word in phrase.split()
    if word not in _LABEL_WORDS
) | frozenset(
    word for names in STUFF.values() for name in names[1:] for word in name.split() if word not in _LABEL_WORDS
)


def held_out_class_names() -> list[str]:
    """The label list with every class that has a caption synonym renamed to its first held-out one.

    Why: an open-vocabulary model fine-tuned on the label names ("car", "person", "vegetation") is scored
    zero-shot with words it met only in pretraining captions ("automobile", "pedestrian", "trees"); classes
    without a synonym keep their names. The masks are the same, so the mIoU of the renamed classes compares
    directly with the same model under the training names.
    """
    names = list(CITYSCAPES_CLASSES)
    synonyms = {cls: singular[1:] for cls, (singular, _) in THINGS.items()}
    synonyms |= {cls: words[1:] for cls, words in STUFF.items()}
    for cls, words in synonyms.items():
        held_out = [word for word in words if all(part in HELD_OUT_WORDS for part in word.split())]
        if held_out:
            names[cls] = held_out[0]
    return names


_NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_TEMPLATES = (
    "a street scene in {condition} with {objects}.",
    "{objects} on a street in {condition}.",
    "a photo of a road in {condition}: {objects}.",
    "in {condition}, {objects}.",
)
#: Visible pixels (as a fraction of the image) an instance needs to be mentioned / a stuff class to be named.
MIN_INSTANCE_FRACTION = 0.0015
MIN_STUFF_FRACTION = 0.05


@dataclass(frozen=True)
class SceneFacts:
    """What the captions may say about one rendered scene: per class, the count and the positions of instances."""

    counts: dict[int, int]
    positions: dict[int, tuple[str, ...]]
    stuff: tuple[int, ...]
    conditions: tuple[str, ...]


def scene_facts(lay: Layout, look: Appearance, named: str | None = None) -> SceneFacts:
    """Count visible instances per countable class (with their horizontal thirds) and the conditions shown."""
    H, W = lay.label.shape
    inst = lay.instance_map.ravel()
    sizes = np.bincount(inst, minlength=len(lay.inst_class))
    columns = np.bincount(inst, weights=np.tile(np.arange(W, dtype=np.float64), H), minlength=len(lay.inst_class))
    counts: dict[int, int] = {}
    positions: dict[int, list[str]] = {}
    for i in np.nonzero(sizes >= MIN_INSTANCE_FRACTION * H * W)[0]:
        cls = int(lay.inst_class[i])
        if cls not in THINGS:
            continue
        counts[cls] = counts.get(cls, 0) + 1
        x = columns[i] / sizes[i] / W
        positions.setdefault(cls, []).append(
            "on the left" if x < 1 / 3 else "on the right" if x > 2 / 3 else "in the middle"
        )
    coverage = np.bincount(lay.label.ravel(), minlength=len(CITYSCAPES_CLASSES)) / (H * W)
    stuff = tuple(cls for cls in STUFF if coverage[cls] >= MIN_STUFF_FRACTION)
    return SceneFacts(counts, {k: tuple(v) for k, v in positions.items()}, stuff, conditions_of(look, named))


def conditions_of(look: Appearance, named: str | None = None) -> tuple[str, ...]:
    """The named-domain conditions a point of the space shows (a named domain: exactly its own)."""
    if named is not None:
        return (named,)
    shown = [name for name, value in (("fog", look.fog), ("rain", look.rain), ("snow", look.snow)) if value >= 0.4]
    if look.daylight <= 0.5:
        shown.append("night")
    if not shown:
        shown.append("synthetic" if look.realism < 0.5 else "textured")
    return tuple(shown)


def _count_phrase(cls: int, count: int, positions: tuple[str, ...], rng: np.random.Generator) -> str:
    singular, plural = THINGS[cls]
    pick = int(rng.integers(len(singular)))
    noun = singular[pick] if count == 1 else plural[pick]
    number = _NUMBERS[count] if count < len(_NUMBERS) else "many"
    phrase = f"{number} {noun}"
    if len(set(positions)) == 1 and rng.random() < 0.7:
        phrase += f" {positions[0]}"
    return phrase


def caption(facts: SceneFacts, rng: np.random.Generator, max_objects: int = 4) -> str:
    """One caption of ``facts``: a template, a synonym per noun, the objects in random order (at most a few)."""
    condition = " and ".join(CONDITIONS[name][int(rng.integers(3))] for name in facts.conditions)
    things = [cls for cls in facts.counts if facts.counts[cls] > 0]
    rng.shuffle(things)
    parts = [_count_phrase(cls, facts.counts[cls], facts.positions[cls], rng) for cls in things[:max_objects]]
    if facts.stuff and rng.random() < 0.6:
        cls = facts.stuff[int(rng.integers(len(facts.stuff)))]
        parts.append(STUFF[cls][int(rng.integers(len(STUFF[cls])))])
    if not parts:
        missing = sorted(THINGS)[int(rng.integers(2))]  # an empty street: say what is absent
        parts.append(f"no {THINGS[missing][1][int(rng.integers(len(THINGS[missing][1])))]}")
    objects = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
    return template.format(condition=condition, objects=objects)


def condition_prompts(name: str) -> list[str]:
    """Zero-shot prompts for one named condition (one per synonym)."""
    return [f"a street scene in {word}." for word in CONDITIONS[name]]


def object_prompts(cls: int, present: bool) -> list[str]:
    """Zero-shot prompts saying an object class is (``present``) or is not in the scene."""
    _, plural = THINGS[cls]
    return [f"a street with {noun}." if present else f"a street with no {noun}." for noun in plural]


__all__ = [
    "CONDITIONS",
    "HELD_OUT_WORDS",
    "STUFF",
    "THINGS",
    "SceneFacts",
    "caption",
    "condition_prompts",
    "conditions_of",
    "held_out_class_names",
    "object_prompts",
    "scene_facts",
]
