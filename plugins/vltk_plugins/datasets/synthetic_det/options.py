"""Options of the ``synthetic-det`` detection dataset (no torch import: config validation needs them).

``synthetic-det`` boxes the objects the procedural street scenes of ``synthetic`` paint (cars, persons, signs
by default) in the same six appearance domains.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from vltk.api import did_you_mean
from vltk_plugins.datasets.synthetic.options import SyntheticOptions

#: Classes the synthetic renderer paints as separate instances, boxable by ``synthetic-det`` (Cityscapes names).
SYNTHETIC_BOX_CLASSES: tuple[str, ...] = (
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "motorcycle",
    "bicycle",
    "traffic sign",
    "traffic light",
)


class SyntheticDetectionOptions(SyntheticOptions):
    """Boxes of the procedural street scenes: same layouts, domains, seeds and checks as ``synthetic`` (whose
    options these extend), instance boxes as labels."""

    size: int | tuple[int, int] = Field(
        (192, 320),
        description=(
            "Image size: one int or [height, width], each side >= 32 and a multiple of 32. Wider than the "
            "segmentation default because objects are small: at 128x128 almost every person is under 8 pixels."
        ),
    )
    classes: list[str] = Field(
        default_factory=lambda: ["car", "person", "traffic sign"],
        min_length=1,
        description=f"Classes to box (label order), from: {', '.join(SYNTHETIC_BOX_CLASSES)}.",
    )
    min_size: int = Field(
        8,
        ge=0,
        description=(
            "Boxes whose height or width is below this many pixels are marked difficult: not trained on and "
            "ignored by the VOC evaluator (a far-away object of 2-3 pixels is not recognisable)."
        ),
    )
    min_pixels: int = Field(
        4, ge=1, description="Instances with fewer visible pixels than this (almost fully occluded) get no box at all."
    )

    @field_validator("classes")
    @classmethod
    def _check_classes(cls, value: list[str]) -> list[str]:
        for name in value:
            if name not in SYNTHETIC_BOX_CLASSES:
                raise ValueError(
                    f"unknown box class '{name}';{did_you_mean(name, SYNTHETIC_BOX_CLASSES)} "
                    f"classes: {', '.join(SYNTHETIC_BOX_CLASSES)}"
                )
        return list(dict.fromkeys(value))


__all__ = ["SYNTHETIC_BOX_CLASSES", "SyntheticDetectionOptions"]
