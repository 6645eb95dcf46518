"""Options of the ``linear`` decoder.

Light on purpose (pydantic only, no torch): ``vltk_sample/hooks.py`` imports it, and ``vltk list`` and
``vltk show decoder linear`` import every plugin's hook module.
"""

from __future__ import annotations

from pydantic import Field

from vltk.api import Options


class LinearHeadOptions(Options):
    """Knobs of the linear head; the pipeline supplies the level widths, the classes and the ignore index."""

    stride: int = Field(
        16,
        gt=0,
        description="Stride of the pyramid level the head classifies (4, 8, 16 or 32); 16 is a ViT's own patch grid.",
    )
    batch_norm: bool = Field(
        True,
        description="BatchNorm before the 1x1 conv, as DINOv2's linear segmentation head; false: the bare conv.",
    )
