"""Options of the ``dwd`` detection dataset (no torch import: config validation needs them).

``dwd`` reads the Diverse Weather Dataset of Single-DGOD / CLIP the Gap from a local folder (VOC layout, nothing
is downloaded).
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from vltk.api import Options, did_you_mean

#: The 7 Diverse Weather classes in the order of CLIP the Gap's loader (``data/datasets/diverse_weather.py``).
DWD_CLASSES: tuple[str, ...] = ("bus", "bike", "car", "motor", "person", "rider", "truck")

#: DWD domain folders; ``daytime_clear`` is the source.
DWD_DOMAINS: tuple[str, ...] = ("daytime_clear", "night_sunny", "dusk_rainy", "night_rainy", "daytime_foggy")


class DWDOptions(Options):
    """The Diverse Weather Dataset (Wu & Deng, CVPR 2022) as CLIP the Gap uses it: train on daytime_clear/train,
    evaluate on daytime_clear/test and on the `train` lists of the four target domains (no test split exists)."""

    root: str = Field(
        description=(
            "Folder holding one sub-folder per domain, each a VOC tree: "
            "<root>/<domain>/VOC2007/{Annotations,JPEGImages,ImageSets/Main}. CLIP the Gap calls it "
            "$DETECTRON2_DATASETS/diverseWeather."
        )
    )
    domains: list[str] = Field(
        default_factory=lambda: list(DWD_DOMAINS), min_length=1, description=f"Domains, from: {', '.join(DWD_DOMAINS)}."
    )
    train_domains: list[str] = Field(
        default_factory=lambda: ["daytime_clear"], min_length=1, description="Source domain(s); a subset of `domains`."
    )
    train_list: str = Field("train", description="ImageSets/Main/<name>.txt listing the training images.")
    val_lists: dict[str, str] = Field(
        default_factory=lambda: {"daytime_clear": "test"},
        description=(
            "Image list evaluated per domain; domains not named here use `train` (the protocol of CLIP the Gap: "
            "Single-DGOD released no test split for the targets)."
        ),
    )
    min_size: int = Field(600, ge=32, description="Shortest image side after resizing (paper: 600).")
    max_size: int = Field(1333, ge=32, description="Longest side cap after resizing (paper: 1333).")
    flip: bool = Field(True, description="Random horizontal flip of training images (detectron2's default).")
    max_train_images: int | None = Field(None, ge=1, description="Use only the first N training images (debugging).")

    @field_validator("domains", "train_domains")
    @classmethod
    def _check_domain(cls, value: list[str]) -> list[str]:
        for name in value:
            if name not in DWD_DOMAINS:
                raise ValueError(
                    f"unknown DWD domain '{name}';{did_you_mean(name, DWD_DOMAINS)} domains: {', '.join(DWD_DOMAINS)}"
                )
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _check_subset(self) -> DWDOptions:
        missing = [name for name in self.train_domains if name not in self.domains]
        if missing:
            raise ValueError(f"train_domains {missing} must also be listed in domains ({', '.join(self.domains)})")
        return self

    def val_list(self, domain: str) -> str:
        return self.val_lists.get(domain, "train")


__all__ = ["DWDOptions", "DWD_CLASSES", "DWD_DOMAINS"]
