"""Options of the ``ade20k`` dataset (torch-free, for config validation and ``vltk show dataset ade20k``)."""

from __future__ import annotations

from pydantic import Field, field_validator

from vltk.api import Options


class ADE20KOptions(Options):
    """ADEChallengeData2016 from disk, 150 classes, mmseg's ADE20K pipeline (DenseCLIP's setting by default)."""

    root: str = Field(
        description=(
            "ADEChallengeData2016 folder: images/{training,validation}/*.jpg + annotations/{training,validation}/"
            "*.png (label 0 = other -> ignored, 1..150 -> classes 0..149, mmseg's reduce_zero_label)."
        )
    )
    name: str = Field("ade20k", description="Domain name in tables and metrics.")
    crop_size: int | tuple[int, int] = Field(512, description="Training crop: one int or [height, width].")
    scale: tuple[int, int] = Field(
        (2048, 512), description="Base resize (long, short) keeping the ratio, for training (times ratio) and val."
    )
    ratio_range: tuple[float, float] = Field(
        (0.5, 2.0), description="Training resize: the base scale times a ratio drawn uniformly from this range."
    )
    cat_max_ratio: float = Field(
        0.75, gt=0, le=1, description="Random crop retries (10x) while one class covers more than this fraction."
    )
    flip: bool = Field(True, description="Random horizontal flip with p = 0.5 during training.")
    photometric: bool = Field(True, description="Random brightness/contrast/saturation/hue during training.")
    max_val_images: int | None = Field(
        None, ge=1, description="Use at most this many of the 2,000 val images (the first ones; quick checks)."
    )

    @field_validator("ratio_range")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] <= 0 or value[0] > value[1]:
            raise ValueError(f"ratio_range must be [min, max] with 0 < min <= max, got {list(value)}")
        return value

    @property
    def crop(self) -> tuple[int, int]:
        """``crop_size`` as ``(height, width)``."""
        size = self.crop_size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


__all__ = ["ADE20KOptions"]
