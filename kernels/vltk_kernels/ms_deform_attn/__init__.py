"""Multi-scale deformable attention op (Mask2Former's pixel decoder), fused in Triton.

The Triton kernels (``triton.py``) gather the bilinear neighbours directly from ``value`` instead of building
``grid_sample``'s per-level ``[B·nH, D, Q, P]`` samples. The ``torch`` backend (every CPU run and every fallback) is
:func:`ms_deform_attn_lean` (``lean.py``), the same gather in PyTorch: one ``embedding_bag`` of every query's
bilinear corner rows, and a sorted transposed gather for the value's gradient; :func:`ms_deform_attn_reference` is
the readable specification both are tested against. The backend follows :mod:`vltk_kernels._dispatch`.
"""

from __future__ import annotations

from torch import Tensor

from vltk_kernels._dispatch import TRITON_DTYPES, compiling, select_backend
from vltk_kernels.ms_deform_attn.lean import ms_deform_attn_lean
from vltk_kernels.ms_deform_attn.reference import ms_deform_attn_reference


def _check_shapes(value: Tensor, spatial_shapes: Tensor, locations: Tensor, weights: Tensor) -> None:
    if value.dim() != 4 or locations.dim() != 6 or weights.dim() != 5 or spatial_shapes.dim() != 2:
        raise ValueError(
            "expected value [B,S,nH,D], spatial_shapes [L,2], sampling_locations [B,Q,nH,L,P,2], attention_weights "
            f"[B,Q,nH,L,P]; got {tuple(value.shape)}, {tuple(spatial_shapes.shape)}, {tuple(locations.shape)}, "
            f"{tuple(weights.shape)}"
        )
    batch, _, heads, _ = value.shape
    levels = spatial_shapes.shape[0]
    if (
        locations.shape[-1] != 2
        or spatial_shapes.shape[1] != 2
        or locations.shape[:-1] != weights.shape
        or (locations.shape[0], locations.shape[2], locations.shape[3]) != (batch, heads, levels)
    ):
        raise ValueError(
            f"shape mismatch: value {tuple(value.shape)}, spatial_shapes {tuple(spatial_shapes.shape)}, "
            f"sampling_locations {tuple(locations.shape)}, attention_weights {tuple(weights.shape)} (batch, heads "
            "and levels must agree)"
        )
    if spatial_shapes.device.type == "cpu":  # checking on a GPU would cost a sync; the kernel masks instead
        covered = int((spatial_shapes[:, 0] * spatial_shapes[:, 1]).sum())
        if covered != value.shape[1]:
            raise ValueError(f"spatial_shapes cover {covered} positions but value has {value.shape[1]}")


def _triton_problem(value: Tensor, locations: Tensor, weights: Tensor) -> str | None:
    if value.numel() == 0 or locations.numel() == 0:
        return "the input is empty"
    for name, tensor in (("value", value), ("sampling_locations", locations), ("attention_weights", weights)):
        if tensor.dtype not in TRITON_DTYPES:
            return f"{name} has dtype {tensor.dtype}, which is not supported (use float32, float16 or bfloat16)"
        if tensor.device != value.device:
            return f"{name} is on {tensor.device} but value is on {value.device}"
    return None


def ms_deform_attn(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """``[B, Q, nH * D]`` deformable-attention output — see :func:`ms_deform_attn_reference`.

    Differentiable in value, sampling_locations and attention_weights on every backend. As in the reference,
    level offsets follow ``spatial_shapes``; ``level_start_index`` is accepted for the shared signature.
    """
    _check_shapes(value, spatial_shapes, sampling_locations, attention_weights)
    problem = _triton_problem(value, sampling_locations, attention_weights)
    if select_backend("ms_deform_attn", value.device, problem) == "torch":
        if compiling():  # the compiler plans the per-level intermediates itself
            return ms_deform_attn_reference(
                value, spatial_shapes, level_start_index, sampling_locations, attention_weights
            )
        return ms_deform_attn_lean(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    from vltk_kernels.ms_deform_attn.triton import ms_deform_attn_triton

    return ms_deform_attn_triton(value, spatial_shapes, sampling_locations, attention_weights)


__all__ = ["ms_deform_attn", "ms_deform_attn_lean", "ms_deform_attn_reference"]
