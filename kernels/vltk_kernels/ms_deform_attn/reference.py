"""Reference (pure PyTorch, differentiable) for multi-scale deformable attention sampling (Deformable DETR),
built on ``F.grid_sample``: the specification a kernel must match."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def ms_deform_attn_reference(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Weighted sum of bilinear samples of ``value`` at learned locations on every level.

    value ``[B, S, nH, D]`` (the levels' ``H_l * W_l`` positions concatenated, row-major), spatial_shapes
    ``[L, 2]`` as ``(H_l, W_l)``, level_start_index ``[L]`` (unused here: the split follows spatial_shapes, the
    argument is kept so every backend shares one signature), sampling_locations ``[B, Q, nH, L, P, 2]`` as
    ``(x, y)`` normalised to [0, 1], attention_weights ``[B, Q, nH, L, P]`` -> ``[B, Q, nH * D]``.

    Sampling is ``grid_sample(mode="bilinear", align_corners=False, padding_mode="zeros")``: location 0 and 1
    are the outer edges of the border pixels, and samples outside the map read zeros.
    """
    del level_start_index
    batch, _, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    sizes = [int(h) * int(w) for h, w in spatial_shapes.tolist()]
    if sum(sizes) != value.shape[1]:
        raise ValueError(f"spatial_shapes cover {sum(sizes)} positions but value has {value.shape[1]}")
    per_level = value.split(sizes, dim=1)
    grids = 2.0 * sampling_locations - 1.0
    sampled = []
    for level, (height, width) in enumerate(spatial_shapes.tolist()):
        # [B, H*W, nH, D] -> [B*nH, D, H, W]
        level_value = per_level[level].permute(0, 2, 3, 1).reshape(batch * heads, head_dim, int(height), int(width))
        # [B, Q, nH, P, 2] -> [B*nH, Q, P, 2]
        grid = grids[:, :, :, level].transpose(1, 2).reshape(batch * heads, queries, points, 2)
        sampled.append(F.grid_sample(level_value, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    # [B*nH, D, Q, L*P] weighted by [B*nH, 1, Q, L*P]
    stacked = torch.stack(sampled, dim=-2).flatten(-2)
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
    output = (stacked * weights).sum(-1).view(batch, heads * head_dim, queries)
    return output.transpose(1, 2).contiguous()
