"""DPT's reassemble stage as LSeg runs it (isl-org/lang-seg ``lseg_vit.py``, ``_make_vit_b16_backbone``).

Input: the ``lseg-vit`` backbone's DPT pyramid, per hooked block a map ``[B, 2C, h, w]`` at the patch stride ``p``
holding every patch token followed by its block's cls token. Per level (``act_postprocess1..4`` in LSeg):

* readout (``use_readout``): ``project`` = ``GELU(Linear_{2C->C}([patch, cls]))`` (LSeg's default,
  ``ProjectReadout``), ``add`` = ``patch + cls``, ``ignore`` = ``patch``;
* a 1x1 conv ``C -> width_i`` (``act_postprocessN.3``);
* a resampling from stride ``p`` to stride ``s_i`` of 4/8/16/32 (``act_postprocessN.4``): a ``ConvTranspose2d``
  with kernel = stride = ``p / s_i`` when it grows (ViT-L/16: x4 and x2 for levels 1 and 2), nothing at
  ``p = s_i`` (level 3), a 3x3 conv with stride 2 and padding 1 when it halves (level 4); DPT's ViT-B/32 variant
  (x8, x4, x2, nothing) follows the same rule.

The modules are named after their place in LSeg's ``nn.Sequential`` so that the release map is one rename per
tensor: ``readout`` (index 0, its ``project.0`` Linear), ``project`` (index 3), ``resample`` (index 4).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class ReassembleLevel(nn.Module):
    """One ``act_postprocessN``: readout, 1x1 conv to ``width``, resample by ``factor`` (>1 up, 1, or 1/2)."""

    def __init__(self, embed_dim: int, width: int, factor: float, readout: str) -> None:
        super().__init__()
        self.embed_dim = int(embed_dim)
        self.readout_kind = readout
        self.readout = nn.Linear(2 * embed_dim, embed_dim) if readout == "project" else None
        self.project = nn.Conv2d(embed_dim, width, kernel_size=1)
        if factor > 1:
            if factor != int(factor):
                raise ValueError(f"lseg reassemble: cannot upsample by {factor}")
            self.resample: nn.Module = nn.ConvTranspose2d(width, width, kernel_size=int(factor), stride=int(factor))
        elif factor == 1:
            self.resample = nn.Identity()
        elif factor == 0.5:
            self.resample = nn.Conv2d(width, width, kernel_size=3, stride=2, padding=1)
        else:
            raise ValueError(f"lseg reassemble: a level {1 / factor:g}x coarser than the patch grid is not DPT's")

    def forward(self, level: Tensor) -> Tensor:
        patches, cls = level[:, : self.embed_dim], level[:, self.embed_dim :]
        if self.readout is not None:
            x = torch.nn.functional.gelu(self.readout(level.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        elif self.readout_kind == "add":
            x = patches + cls
        else:
            x = patches
        return self.resample(self.project(x))


class DPTReassemble(nn.Module):
    """The four :class:`ReassembleLevel` s: patch-stride token maps -> widths ``widths`` at strides 4/8/16/32."""

    def __init__(self, embed_dim: int, patch_size: int, widths: Sequence[int], readout: str) -> None:
        super().__init__()
        self.levels = nn.ModuleList(
            ReassembleLevel(embed_dim, width, patch_size / stride, readout)
            for width, stride in zip(widths, (4, 8, 16, 32), strict=True)
        )

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        return [level(x) for level, x in zip(self.levels, features, strict=True)]


__all__ = ["DPTReassemble", "ReassembleLevel"]
