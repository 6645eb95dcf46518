"""Options of the ``bitfit`` adapter; light (no torch) because ``vltk_sample/hooks.py`` imports it."""

from __future__ import annotations

from pydantic import Field

from vltk.api import Options


class BitFitOptions(Options):
    """Options of the BitFit adapter."""

    train_norms: bool = Field(False, description="also train normalisation weights, not only biases")
