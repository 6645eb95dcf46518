"""Options of the ``fpn`` decoder (Semantic FPN: mmseg ``FPN`` neck + ``FPNHead``).

Kept apart from the module so the entry-point ``hooks.py`` can import it without importing torch: ``vltk list``
and ``vltk show decoder fpn`` stay fast. Defaults reproduce the Semantic FPN configs used by Rein (head width
128); DenseCLIP's ADE20K configs use ``head_channels=256`` and SyncBN.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from vltk.api import Options

#: GroupNorm groups used by ``norm="gn"`` (the usual ``dict(type="GN", num_groups=32)``).
GN_GROUPS = 32


class FPNOptions(Options):
    """Knobs of the Semantic FPN decoder; the pipeline supplies ``in_channels``, ``num_classes``, ``ignore_index``."""

    channels: int = Field(
        256,
        gt=0,
        description="Width of the FPN neck: every lateral 1x1 conv and 3x3 output conv has this many channels.",
    )
    head_channels: int = Field(
        128,
        gt=0,
        description=(
            "Width of the FPN head's per-level conv stacks (mmseg FPNHead `channels`). 128 as in Semantic FPN and "
            "Rein (1.63M head parameters with 19 classes); DenseCLIP uses 256."
        ),
    )
    dropout: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="Channel dropout (Dropout2d) probability before the final 1x1 classifier; 0 disables it.",
    )
    norm: Literal["bn", "gn", "syncbn"] = Field(
        "bn",
        description=(
            "Normalisation in the head's conv stacks: 'bn' BatchNorm2d, 'gn' GroupNorm with 32 groups (needs "
            "head_channels divisible by 32), 'syncbn' SyncBatchNorm over the GPUs of a data-parallel run (torchrun), "
            "BatchNorm2d in a single process; PyTorch has no SyncBatchNorm on CPU processes, so several CPU ranks "
            "refuse it. The neck has no normalisation (mmseg default)."
        ),
    )
    loss_weight: float = Field(
        1.0,
        ge=0.0,
        description="Multiplier of the cross-entropy loss (the 'loss_ce' term).",
    )
    class_weight: list[Annotated[float, Field(ge=0.0)]] | None = Field(
        None,
        description=(
            "Optional non-negative per-class cross-entropy weights, one per class (length must equal num_classes); "
            "None weighs every class 1."
        ),
    )

    @model_validator(mode="after")
    def _check_group_norm(self) -> FPNOptions:
        """Fail at configuration time rather than deep inside GroupNorm's constructor."""
        if self.norm == "gn" and self.head_channels % GN_GROUPS:
            raise ValueError(
                f"norm='gn' uses {GN_GROUPS} groups, so head_channels must be divisible by {GN_GROUPS} "
                f"(got head_channels={self.head_channels})"
            )
        return self


__all__ = ["GN_GROUPS", "FPNOptions"]
