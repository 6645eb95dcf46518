"""The Cityscapes label set: 19 evaluation classes in train-id order, their colours and the ignore index.

They are the lingua franca of the DG segmentation protocol (GTAV, SYNTHIA, Cityscapes, BDD100K, Mapillary and ACDC
are all evaluated on these 19 classes), so every dataset plugin and the reports share one definition. Plain Python:
importing this module is free.
"""

from __future__ import annotations

#: Cityscapes' 19 evaluation classes in their standard train-id order.
CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)

#: Cityscapes' colour for each class (for visualising label maps, not for rendering images).
CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
)

IGNORE_INDEX = 255


__all__ = ["CITYSCAPES_CLASSES", "CITYSCAPES_PALETTE", "IGNORE_INDEX"]
