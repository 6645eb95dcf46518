"""Options of ``synthetic-captions`` (light: pydantic only, ``hooks.py`` imports it)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vltk_plugins.datasets.synthetic.options import SyntheticOptions


class CaptionedOptions(SyntheticOptions):
    """The ``synthetic`` knobs plus where training looks come from and how long captions get."""

    size: int | tuple[int, int] = Field(
        96,
        description=(
            "Image size in pixels (one int or [height, width], multiples of 32). 96 keeps a 6x6 patch grid at "
            "patch 16: enough for dense objectives, cheap on a CPU."
        ),
    )
    num_train: int = Field(2048, gt=0, le=1_000_000, description="Number of training layouts (indices 0..num_train-1).")
    num_val: int = Field(
        64, gt=0, description="Validation scenes per named domain (the synthetic dataset's val layouts)."
    )
    appearance: Literal["free", "named"] = Field(
        "free",
        description=(
            "free: every training scene is painted at a random point of the continuous appearance space, redrawn "
            "each epoch; named: painted by the train_domains' own painters (a no-diversity baseline)."
        ),
    )
    max_objects: int = Field(4, ge=1, le=9, description="At most this many object phrases per caption.")


__all__ = ["CaptionedOptions"]
