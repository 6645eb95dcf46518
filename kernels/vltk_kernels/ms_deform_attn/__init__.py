"""Multi-scale deformable attention op (Mask2Former's pixel decoder). Reference only until a Triton backend plugs
in here."""

from __future__ import annotations

from torch import Tensor

from vltk_kernels.ms_deform_attn.reference import ms_deform_attn_reference


def ms_deform_attn(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """``[B, Q, nH * D]`` deformable-attention output — see :func:`ms_deform_attn_reference`."""
    return ms_deform_attn_reference(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)


__all__ = ["ms_deform_attn", "ms_deform_attn_reference"]
