"""Options of the ``frozen`` and ``full`` adapters (the two baselines of every adapter paper). No torch import."""

from __future__ import annotations

from pydantic import Field

from vltk.api import Options


class FrozenOptions(Options):
    """The frozen baseline has no knobs: the backbone is fixed and only the decoder trains."""


class FullOptions(Options):
    """Full fine-tuning: every backbone parameter trains, optionally with layer-wise learning-rate decay."""

    layer_decay: float = Field(
        default=1.0,
        gt=0.0,
        le=1.0,
        description=(
            "Layer-wise lr decay (BEiT/mmseg style): block i of L gets lr * layer_decay**(L - i), the embeddings "
            "(patch, position, cls) layer_decay**(L + 1), everything after the last block the full lr. "
            "1.0 disables it."
        ),
    )


__all__ = ["FrozenOptions", "FullOptions"]
