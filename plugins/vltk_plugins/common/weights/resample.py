"""Converting a checkpoint's patch kernel and absolute position grid to another patch size and grid.

Rein runs DINOv2 and EVA02, pre-trained at patch 14 with a 37x37 (DINOv2) or 16x16 (EVA02) grid, at patch 16
with a 32x32 grid (512 crops). Two conversions are on offer (``patch_resample`` of ``dinov2`` and ``eva02``):

* ``rein``: what Rein's ``tools/convert_models/convert_dinov2_large_512x512.py`` and ``convert_eva2_512x512.py``
  do, so that Rein's released adapters and heads see the features they were trained on. The kernel
  ``[C, 3, k, k]`` is resized as an image, ``F.interpolate(kernel.float(), size, mode="bicubic",
  align_corners=False)`` (no antialias); the grid part of the position embedding is reshaped to ``[1, C, s, s]``,
  resized with the same call and flattened back, the prefix rows (the cls position) kept. A plain resize of the
  kernel is not a re-parameterisation: a constant patch embeds ``(16/14)^2`` larger than at patch 14.
* ``flexi``: FlexiViT's pseudo-inverse resize of the kernel (timm's ``resample_patch_embed``: a patch resized
  bicubically and embedded with the new kernel gives the old embedding as closely as possible) and timm's
  antialiased bicubic ``resample_abs_pos_embed`` of the grid.

Both work in float32 and return the target's dtype.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional as F

logger = logging.getLogger(__name__)

#: The conversions of :func:`resample_spatial`.
ResampleMode = Literal["rein", "flexi"]


def rein_resize_kernel(kernel: Tensor, size: tuple[int, int]) -> Tensor:
    """Rein's kernel conversion: ``kernel`` ``[C, in, k, k]`` resized to ``size`` as an image (bicubic, float32)."""
    return F.interpolate(kernel.float(), size=size, mode="bicubic", align_corners=False)


def rein_resize_grid(positions: Tensor, grid: tuple[int, int], num_prefix_tokens: int) -> Tensor:
    """Rein's grid conversion: the square grid part of ``positions`` (``[1, P + s*s, C]``, or 2-D without the
    batch) resized to ``grid`` (bicubic, no antialias, float32); the ``P`` prefix rows are kept."""
    batched = positions if positions.ndim == 3 else positions.unsqueeze(0)
    prefix, cells = batched[:, :num_prefix_tokens], batched[:, num_prefix_tokens:]
    side, channels = math.isqrt(cells.shape[1]), cells.shape[-1]
    spatial = cells.reshape(batched.shape[0], side, side, channels).permute(0, 3, 1, 2)
    spatial = F.interpolate(spatial.float(), size=grid, mode="bicubic", align_corners=False)
    cells = spatial.permute(0, 2, 3, 1).reshape(batched.shape[0], grid[0] * grid[1], channels)
    resized = torch.cat([prefix.float(), cells], dim=1)
    return resized if positions.ndim == 3 else resized.squeeze(0)


def _flexi_kernel(kernel: Tensor, size: tuple[int, int]) -> Tensor:
    from timm.layers import resample_patch_embed

    return resample_patch_embed(kernel.float(), list(size))


def _flexi_grid(positions: Tensor, grid: tuple[int, int], num_prefix_tokens: int) -> Tensor:
    from timm.layers import resample_abs_pos_embed

    side = math.isqrt(positions.shape[-2] - num_prefix_tokens)
    batched = positions if positions.ndim == 3 else positions.unsqueeze(0)
    resampled = resample_abs_pos_embed(
        batched.float(), new_size=list(grid), old_size=[side, side], num_prefix_tokens=num_prefix_tokens
    )
    return resampled if positions.ndim == 3 else resampled.squeeze(0)


def resample_spatial(
    state: dict[str, Tensor],
    target: Mapping[str, Tensor],
    patch_key: str,
    pos_key: str,
    grid: tuple[int, int],
    label: str,
    num_prefix_tokens: int = 1,
    *,
    mode: ResampleMode = "flexi",
) -> list[str]:
    """Convert ``state``'s patch kernel and position grid in place to the shapes of ``target``; return what changed.

    * ``state[patch_key]`` (``[C, 3, k, k]``) of another kernel size is resized by ``mode`` (module docstring);
    * ``state[pos_key]`` (``[1, P + s*s, C]`` or ``[P + s*s, C]``) of another square grid has its ``s x s`` part
      resized to ``grid``, the ``num_prefix_tokens`` rows ``P`` (the cls entry) kept as they are.

    An entry of the same shape is left alone; anything else that differs (channels, a non-square grid) is left
    for :func:`~vltk_plugins.common.weights.load.check_fit` to report. ``mode`` defaults to ``flexi``, the
    helper's behaviour before the modes existed (``clip-vit`` and ``clip-resnet`` still use it); ``dinov2`` and
    ``eva02`` pass their ``patch_resample`` option. Each change is logged and returned as one line.
    """
    notes: list[str] = []
    kernel, wanted = state.get(patch_key), target.get(patch_key)
    if kernel is not None and wanted is not None and kernel.shape != wanted.shape:
        if kernel.ndim == 4 and kernel.shape[:2] == wanted.shape[:2]:
            size = (int(wanted.shape[-2]), int(wanted.shape[-1]))
            resize = rein_resize_kernel if mode == "rein" else _flexi_kernel
            state[patch_key] = resize(kernel, size).to(wanted.dtype)
            notes.append(f"patch kernel {tuple(kernel.shape[-2:])} -> {size} ({mode})")
    positions, wanted = state.get(pos_key), target.get(pos_key)
    if positions is not None and wanted is not None and positions.shape != wanted.shape:
        cells = positions.shape[-2] - num_prefix_tokens
        side = math.isqrt(max(cells, 0))
        if (
            positions.shape[-1] == wanted.shape[-1]
            and positions.ndim == wanted.ndim
            and cells > 0
            and side * side == cells
        ):
            resize = rein_resize_grid if mode == "rein" else _flexi_grid
            state[pos_key] = resize(positions, tuple(grid), num_prefix_tokens).to(wanted.dtype)
            notes.append(f"position grid {side}x{side} -> {grid[0]}x{grid[1]} ({mode})")
    for note in notes:
        logger.info("%s: resampled %s", label, note)
    return notes


__all__ = ["ResampleMode", "rein_resize_grid", "rein_resize_kernel", "resample_spatial"]
