"""Options of the built-in ``synthetic`` dataset (procedural street scenes, nothing to download).

Kept apart from the renderer so ``vltk list``/``vltk show dataset synthetic`` and config
validation never import torch. The domain names live here for the same reason: validation needs them.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from vltk.api import Options, did_you_mean

#: Every appearance the renderer knows, source first. All share one layout per (seed, index).
SYNTHETIC_DOMAINS: tuple[str, ...] = ("synthetic", "textured", "fog", "night", "rain", "snow")

#: Image sizes must divide by the coarsest backbone/decoder stride so feature maps tile the image exactly.
SIZE_MULTIPLE = 32

#: Validation scenes use layout indices from here on, so they never repeat a training layout.
VAL_INDEX_OFFSET = 1_000_000


def _check_domain_names(names: list[str], key: str) -> list[str]:
    """Reject unknown names with the closest valid one and the full list, and drop duplicates (order kept)."""
    for name in names:
        if name not in SYNTHETIC_DOMAINS:
            hint = did_you_mean(name, SYNTHETIC_DOMAINS)
            raise ValueError(
                f"unknown synthetic domain '{name}' in {key};{hint} valid domains: {', '.join(SYNTHETIC_DOMAINS)}"
            )
    return list(dict.fromkeys(names))


class SyntheticOptions(Options):
    """Knobs of the procedural street-scene dataset: image size, which domains, how many samples, which seed."""

    size: int | tuple[int, int] = Field(
        128,
        description=(
            "Image size in pixels: one int for square images or [height, width]. Each side must be at least 32 "
            "and a multiple of 32 (the coarsest feature stride)."
        ),
    )
    domains: list[str] = Field(
        default_factory=lambda: list(SYNTHETIC_DOMAINS),
        min_length=1,
        description=(
            "Domains evaluated, from: synthetic (flat GTAV-like source), textured (realistic texture/colour shift), "
            "fog, night, rain, snow. Every domain renders the same layouts; only appearance differs."
        ),
    )
    train_domains: list[str] = Field(
        default_factory=lambda: ["synthetic"],
        min_length=1,
        description="Source domain(s) trained on; must be a subset of `domains`. The others are the targets.",
    )
    num_train: int = Field(
        512,
        gt=0,
        le=VAL_INDEX_OFFSET,
        description="Number of training scenes (layout indices 0..num_train-1 of `seed`).",
    )
    num_val: int = Field(
        32,
        gt=0,
        description=(
            f"Number of validation scenes per domain (layout indices from {VAL_INDEX_OFFSET:_} on, disjoint from "
            "train); every domain uses the same validation layouts."
        ),
    )
    seed: int = Field(0, ge=0, description="Seed of the scene generator: same seed and index give the same scene.")

    @field_validator("size")
    @classmethod
    def _check_size(cls, value: int | tuple[int, int]) -> int | tuple[int, int]:
        """Fail at configuration time with the rule, not later with a shape mismatch inside a decoder."""
        sides = (value, value) if isinstance(value, int) else tuple(value)
        for side in sides:
            if side < SIZE_MULTIPLE or side % SIZE_MULTIPLE:
                raise ValueError(
                    f"each side of size must be >= {SIZE_MULTIPLE} and a multiple of {SIZE_MULTIPLE} (got {value!r}); "
                    f"e.g. {max(SIZE_MULTIPLE, round(side / SIZE_MULTIPLE) * SIZE_MULTIPLE)}"
                )
        return value

    @field_validator("domains")
    @classmethod
    def _check_domains(cls, value: list[str]) -> list[str]:
        return _check_domain_names(value, "domains")

    @field_validator("train_domains")
    @classmethod
    def _check_train_domains(cls, value: list[str]) -> list[str]:
        return _check_domain_names(value, "train_domains")

    @model_validator(mode="after")
    def _check_subset(self) -> SyntheticOptions:
        """Training on a domain that is never evaluated is almost always a typo in one of the two lists."""
        missing = [name for name in self.train_domains if name not in self.domains]
        if missing:
            raise ValueError(f"train_domains {missing} must also be listed in domains ({', '.join(self.domains)})")
        return self

    @property
    def image_size(self) -> tuple[int, int]:
        """``size`` as ``(height, width)``."""
        return (self.size, self.size) if isinstance(self.size, int) else (int(self.size[0]), int(self.size[1]))


__all__ = ["SIZE_MULTIPLE", "SYNTHETIC_DOMAINS", "VAL_INDEX_OFFSET", "SyntheticOptions"]
