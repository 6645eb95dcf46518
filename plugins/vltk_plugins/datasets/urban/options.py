"""Options of the ``urban`` dataset: street scenes on disk (GTAV, Synthia, Cityscapes, BDD100K, Mapillary, ACDC).

Kept apart from the dataset module so config validation and ``vltk show dataset urban`` never import torch.
The GTAV -> Cityscapes/BDD/Mapillary protocol of Rein, VLTSeg and most DG segmentation papers is one ``urban``
section with GTAV under ``train`` and the real datasets under ``test``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from vltk.api import Options

#: Dataset layouts the reader knows (see :data:`vltk_plugins.datasets.urban.dataset.LAYOUTS` for the expected folders).
URBAN_KINDS = ("gtav", "synthia", "cityscapes", "bdd100k", "mapillary", "acdc", "folder")

#: Kinds without an official val split whose val split is capped by default (the training set is 9k-25k images).
SOURCE_VAL_CAP: dict[str, int] = {"gtav": 500, "synthia": 500}


class UrbanDomain(Options):
    """One domain: a dataset folder in one of the known layouts."""

    name: str = Field(description="Domain name used in tables and metrics (e.g. gtav, citys, bdd, map).")
    kind: Literal["gtav", "synthia", "cityscapes", "bdd100k", "mapillary", "acdc", "folder"] = Field(
        description=(
            "Folder layout. gtav: images/*.png + labels/*.png (Cityscapes label ids). synthia: RGB/*.png + "
            "GT/LABELS/*.png (SYNTHIA-RAND-CITYSCAPES, raw 16-bit labels mapped to train ids on load). cityscapes: "
            "leftImg8bit/<split>/<city>/*_leftImg8bit.png + gtFine/<split>/<city>/*_gtFine_labelTrainIds.png "
            "(or *_labelIds.png). bdd100k: images/10k/<split>/*.jpg + labels/sem_seg/masks/<split>/*.png. "
            "mapillary: <training|validation>/images/*.jpg + <...>/v1.2/labels/*.png or <...>/labels/*.png (raw "
            "v1.2 ids of 66 classes, mapped to the 19 on load) or <...>/labels_trainid/*.png (converted). "
            "acdc: rgb_anon/<condition>/<split>/... + "
            "gt/<condition>/<split>/...*_gt_labelTrainIds.png. folder: <images>/ + <labels>/ matched by file stem."
        )
    )
    root: str = Field(description="Dataset root folder (local path).")
    condition: str | None = Field(
        None, description="ACDC only: fog, night, rain or snow (None: all four conditions together)."
    )
    images: str = Field("images", description="folder kind: image folder relative to root.")
    labels: str = Field("labels", description="folder kind: label folder relative to root.")
    label_ids: Literal["train", "cityscapes", "synthia", "mapillary"] = Field(
        "train",
        description=(
            "folder kind: label encoding, mapped to train ids on load. train = 0..18 Cityscapes train ids (255 "
            "ignore); cityscapes = the 34 Cityscapes label ids; synthia = raw Synthia labels (16-bit, class id in "
            "the first channel); mapillary = raw Mapillary v1.2 ids (66 classes)."
        ),
    )
    mapillary_labels: Literal["auto", "raw", "trainid"] = Field(
        "auto",
        description=(
            "mapillary kind: raw = Mapillary v1.2 class ids (66 classes, mapped to the 19 with Rein's table on "
            "load), trainid = labels already converted to Cityscapes train ids, auto = labels_trainid/ if present, "
            "else raw v1.2/labels/ or labels/."
        ),
    )
    mapillary_label_folder: str | None = Field(
        None,
        description=(
            "mapillary kind: label folder under training/ and validation/ (None: labels_trainid, v1.2/labels, "
            "labels, as mapillary_labels allows). With auto, palette PNGs are read as raw."
        ),
    )
    holdout: int = Field(
        0,
        ge=0,
        description=(
            "Layouts without an official val split (gtav, synthia, folder): the last `holdout` files form the val "
            "split and are excluded from train. 0 = val is drawn from the training set itself (in-sample, a source "
            "reference for the gap and rPD; all images stay in training, as the papers train)."
        ),
    )
    max_val_images: int | None = Field(
        None,
        ge=1,
        description=(
            "Use at most this many val images of this domain, evenly spaced over the split. Default: 500 for gtav "
            "and synthia (their val split is otherwise the whole ~25k / 9.4k training set), all for the others."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _cap_source_val(cls, data: object) -> object:
        """Fill the kind's val cap in before validation, so the resolved config shows it and null lifts it."""
        if isinstance(data, dict) and "max_val_images" not in data and data.get("kind") in SOURCE_VAL_CAP:
            return {**data, "max_val_images": SOURCE_VAL_CAP[data["kind"]]}
        return data


class UrbanOptions(Options):
    """Real street-scene data, Cityscapes' 19 classes, mmseg-style training augmentation."""

    train: list[UrbanDomain] = Field(min_length=1, description="Source domains trained on (e.g. GTAV).")
    test: list[UrbanDomain] = Field(
        default_factory=list, description="Target domains only evaluated on (e.g. Cityscapes, BDD100K, Mapillary)."
    )
    crop_size: int | tuple[int, int] = Field(512, description="Training crop: one int or [height, width].")
    short_edge_range: tuple[int, int] = Field(
        (256, 1024),
        description="Training resize: short edge drawn uniformly from this range (Rein: 256..1024, i.e. 512 x 0.5..2).",
    )
    max_long_edge: int = Field(2048, gt=0, description="Training resize never makes the long edge exceed this.")
    cat_max_ratio: float = Field(
        0.75, gt=0, le=1, description="Random crop retries (10x) while one class covers more than this fraction."
    )
    flip: bool = Field(True, description="Random horizontal flip with p = 0.5 during training.")
    photometric: bool = Field(True, description="Random brightness/contrast/saturation/hue during training.")
    eval_size: tuple[int, int] = Field(
        (1024, 512),
        description=(
            "Evaluation resize (long, short) keeping the aspect ratio, as the DG protocols do (Cityscapes 1024x512). "
            "Labels are resized with nearest neighbour to the same size."
        ),
    )
    max_val_images: int | None = Field(
        None, ge=1, description="Use at most this many val images per domain (the first ones; quick checks)."
    )
    protocol: Literal[19, 16] = Field(
        19,
        description=(
            "Class protocol. 19 = Cityscapes' 19 classes. 16 = the Synthia protocol of the DG/UDA papers: terrain, "
            "truck and train (no Synthia labels) are dropped from the class list, so the model predicts 16 classes, "
            "their pixels are ignored in every domain and mIoU averages the 16."
        ),
    )

    @field_validator("short_edge_range")
    @classmethod
    def _ordered(cls, value: tuple[int, int]) -> tuple[int, int]:
        if value[0] <= 0 or value[0] > value[1]:
            raise ValueError(f"short_edge_range must be [min, max] with 0 < min <= max, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> UrbanOptions:
        """Domain names key the metrics: two domains with one name would silently merge their scores."""
        names = [domain.name for domain in [*self.train, *self.test]]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"domain names must be unique, repeated: {', '.join(duplicates)}")
        return self

    @property
    def crop(self) -> tuple[int, int]:
        """``crop_size`` as ``(height, width)``."""
        size = self.crop_size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


__all__ = ["SOURCE_VAL_CAP", "URBAN_KINDS", "UrbanDomain", "UrbanOptions"]
