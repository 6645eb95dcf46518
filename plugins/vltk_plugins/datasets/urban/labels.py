"""Label encodings of the paper datasets and their tables to training ids, applied when a label file is read.

Each dataset stores its own class ids; the papers map them to Cityscapes' 19 train ids (or, for ADE20K, shift
them by one), and doing that on load means no converted copy of a dataset has to exist on disk:

- ``synthia``: SYNTHIA-RAND-CITYSCAPES ``GT/LABELS/*.png`` are 16-bit 3-channel PNGs whose first channel is the
  Synthia class id (the second the instance id). Pillow reads 16-bit RGB PNGs as 8-bit by keeping the high byte,
  which turns every id below 256 into 0, so these files are decoded with torchvision. Table: the class list of
  the dataset's README, as DAFormer's ``tools/convert_datasets/synthia.py`` (lhoyer/DAFormer) and mmseg's
  conversion use it; terrain, truck and train have no Synthia class.
- ``mapillary``: Mapillary Vistas v1.2 ``labels/*.png`` are palette PNGs whose index is one of 66 classes.
  Table: the name rules of Rein's ``tools/convert_datasets/mapillary2cityscape.py`` (w1oves/Rein, itself from
  openseg-group/openseg.pytorch) evaluated on the 66 v1.2 names (mmseg's ``MapillaryDataset`` class order):
  exact Cityscapes names, then traffic sign front/back/frame -> traffic sign, on rails -> train, cyclists and
  riders -> rider, street light and utility pole -> pole, curb, curb cut and pedestrian area -> sidewalk,
  crosswalk, parking, bike lane, service lane and lane markings -> road; the other 32 classes are ignored.
- ``ade20k``: ADE20K (mmseg's ``reduce_zero_label``): 0 = "other" -> ignore, 1..150 -> 0..149.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vltk.api import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, IGNORE_INDEX, UserError

#: Synthia class id -> Cityscapes train id (README of SYNTHIA-RAND-CITYSCAPES: 1 sky, 2 building, 3 road, ...).
SYNTHIA_ID_TO_TRAIN_ID: dict[int, int] = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 1: 10,
    10: 11, 17: 12, 8: 13, 19: 15, 12: 17, 11: 18,
}  # fmt: skip

#: Mapillary Vistas v1.2 class index (0..65) -> Cityscapes train id; unlisted classes are ignored.
MAPILLARY_ID_TO_TRAIN_ID: dict[int, int] = {
    2: 1,  # curb -> sidewalk
    3: 4,  # fence
    6: 3,  # wall
    7: 0,  # bike lane -> road
    8: 0,  # crosswalk - plain -> road
    9: 1,  # curb cut -> sidewalk
    10: 0,  # parking -> road
    11: 1,  # pedestrian area -> sidewalk
    13: 0,  # road
    14: 0,  # service lane -> road
    15: 1,  # sidewalk
    17: 2,  # building
    19: 11,  # person
    20: 12,  # bicyclist -> rider
    21: 12,  # motorcyclist -> rider
    22: 12,  # other rider -> rider
    23: 0,  # lane marking - crosswalk -> road
    24: 0,  # lane marking - general -> road
    27: 10,  # sky
    29: 9,  # terrain
    30: 8,  # vegetation
    44: 5,  # street light -> pole
    45: 5,  # pole
    46: 7,  # traffic sign frame -> traffic sign
    47: 5,  # utility pole -> pole
    48: 6,  # traffic light
    49: 7,  # traffic sign (back) -> traffic sign
    50: 7,  # traffic sign (front) -> traffic sign
    52: 18,  # bicycle
    54: 15,  # bus
    55: 13,  # car
    57: 17,  # motorcycle
    58: 16,  # on rails -> train
    61: 14,  # truck
}

#: The Cityscapes classes Synthia has no label for; the 16-class protocol leaves them out of training and mIoU.
SYNTHIA_MISSING = ("terrain", "truck", "train")

#: Class names and colours of the 16-class Synthia protocol (Cityscapes' 19 without :data:`SYNTHIA_MISSING`).
SYNTHIA16_CLASSES: tuple[str, ...] = tuple(name for name in CITYSCAPES_CLASSES if name not in SYNTHIA_MISSING)
SYNTHIA16_PALETTE: tuple[tuple[int, int, int], ...] = tuple(
    colour for name, colour in zip(CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, strict=True) if name not in SYNTHIA_MISSING
)


def lookup_table(mapping: dict[int, int]) -> np.ndarray:
    """A 65536-entry uint8 table: ``table[raw_id]`` is the train id, :data:`IGNORE_INDEX` for unlisted ids."""
    table = np.full(65536, IGNORE_INDEX, dtype=np.uint8)
    for raw_id, train_id in mapping.items():
        table[raw_id] = train_id
    return table


#: encoding -> table applied to the raw ids read from a label file (``cityscapes`` lives in the dataset module).
LABEL_TABLES: dict[str, np.ndarray] = {
    "synthia": lookup_table(SYNTHIA_ID_TO_TRAIN_ID),
    "mapillary": lookup_table(MAPILLARY_ID_TO_TRAIN_ID),
    "ade20k": lookup_table({raw_id: raw_id - 1 for raw_id in range(1, 151)}),  # ids past 150 are no class: ignored
}

#: Cityscapes train id -> class index of the 16-class Synthia protocol (the three missing classes -> ignore).
PROTOCOL16_TABLE: np.ndarray = lookup_table(
    {
        train_id: SYNTHIA16_CLASSES.index(name)
        for train_id, name in enumerate(CITYSCAPES_CLASSES)
        if name not in SYNTHIA_MISSING
    }
)


def read_label_file(path: Path, encoding: str) -> np.ndarray:
    """The raw class ids of a label file as a 2-D array, before any table is applied.

    Synthia's 16-bit PNGs go through torchvision (first channel = class id); every other encoding is an 8-bit
    PNG Pillow reads exactly (palette images give their indices).
    """
    if encoding != "synthia":
        with Image.open(path) as handle:
            return np.asarray(handle)
    import warnings

    import torch
    from torchvision.io import ImageReadMode, decode_png, read_file

    try:
        with warnings.catch_warnings():  # torchvision 0.29 flags its decoders as deprecated; the pinned one works
            warnings.simplefilter("ignore", DeprecationWarning)
            decoded = decode_png(read_file(str(path)), ImageReadMode.UNCHANGED)
    except RuntimeError as error:
        raise UserError(f"cannot read Synthia label '{path}': {error}; expected a PNG of GT/LABELS") from None
    return decoded[0].to(torch.int32).numpy()  # channel 0 = the class id (16-bit)


def to_train_ids(label: np.ndarray, encoding: str) -> np.ndarray:
    """Raw ids -> train ids through the encoding's table; encodings without a table pass through unchanged."""
    table = LABEL_TABLES.get(encoding)
    return label if table is None else table[label]


__all__ = [
    "LABEL_TABLES",
    "MAPILLARY_ID_TO_TRAIN_ID",
    "PROTOCOL16_TABLE",
    "SYNTHIA16_CLASSES",
    "SYNTHIA16_PALETTE",
    "SYNTHIA_ID_TO_TRAIN_ID",
    "SYNTHIA_MISSING",
    "lookup_table",
    "read_label_file",
    "to_train_ids",
]
