"""Triton kernels for multi-scale deformable attention sampling (imported lazily by the public op).

One program owns ``BLOCK_R`` (image, query, head) rows — contiguous in the locations, weights and output — and all
``D`` channels of each row's head. For every level and point it turns the normalised location into the pixel
coordinate ``(x·W - 0.5, y·H - 0.5)`` (``grid_sample`` with ``align_corners=False``) and gathers the four
neighbouring value rows as one ``[BLOCK_R, 4, D]`` tile (``D`` contiguous channels per corner; corners outside
the map are masked to zero, ``padding_mode="zeros"``), reduced with bilinear × attention weights. Level offsets
are summed from ``spatial_shapes`` inside the kernel, exactly as the reference splits ``value``, and every gather
is also masked to ``< S``, so inconsistent shapes can never read out of bounds.

Backward (same grid): the attention-weight gradient is ``dO · sample``, the location gradient
``w · dO · ∂sample/∂(x, y) · (W, H)``, and the value gradient scatters ``w · bilinear · dO`` into the four
neighbours — with fp32 atomics, as queries of different programs hit the same pixels.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from vltk_kernels._triton_utils import INTERPRET, check_launchable, interpreter_tile, next_pow2, tuned


@triton.jit
def _neighbours(V, LOC, ATTN, at, value_base, q_ok, ds, d_ok, start, width, height, S, stride_vs, stride_vd):
    """The four bilinear neighbours of each row's sampling point, as a corner axis of length 4.

    Returns value rows ``[R, 4, BLOCK_D]`` (fp32, zero outside the map), bilinear weights ``[R, 4]``, their
    factors along x and y, the flat pixel index and validity ``[R, 4]``, the attention weight ``[R]`` and the
    fractional position. Corners are ordered (x0, y0), (x0+1, y0), (x0, y0+1), (x0+1, y0+1).
    """
    x = tl.load(LOC + 2 * at, mask=q_ok, other=0.0).to(tl.float32) * width - 0.5
    y = tl.load(LOC + 2 * at + 1, mask=q_ok, other=0.0).to(tl.float32) * height - 0.5
    w = tl.load(ATTN + at, mask=q_ok, other=0.0).to(tl.float32)
    x0 = tl.floor(x)
    y0 = tl.floor(y)
    fx = (x - x0)[:, None]
    fy = (y - y0)[:, None]
    corner = tl.arange(0, 4)[None, :]
    right = (corner % 2) == 1
    below = (corner // 2) == 1
    xi = x0.to(tl.int32)[:, None] + right.to(tl.int32)
    yi = y0.to(tl.int32)[:, None] + below.to(tl.int32)
    weight_x = tl.where(right, fx, 1.0 - fx)
    weight_y = tl.where(below, fy, 1.0 - fy)
    index = start + yi * width + xi
    valid = q_ok[:, None] & (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height) & (index < S)
    ptrs = V + value_base[:, None, None] + index[:, :, None].to(tl.int64) * stride_vs + ds[None, None, :] * stride_vd
    rows = tl.load(ptrs, mask=valid[:, :, None] & d_ok[None, None, :], other=0.0).to(tl.float32)
    return rows, weight_x * weight_y, weight_x, weight_y, right, below, index, valid, w


@triton.jit
def _msda_fwd_kernel(
    V, SHAPES, LOC, ATTN, OUT,
    S, Q, NH, D, total_rows,
    stride_vb, stride_vs, stride_vh, stride_vd,
    NUM_LEVELS: tl.constexpr, NUM_POINTS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    # a "row" is one (image, query, head) triple: rows are contiguous in loc, attn and out ([B, Q, NH, ...])
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    q_ok = rows < total_rows
    value_base = (rows // (Q * NH)) * stride_vb + (rows % NH) * stride_vh
    ds = tl.arange(0, BLOCK_D)
    d_ok = ds < D
    acc = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    start = 0
    for level in tl.static_range(NUM_LEVELS):
        height = tl.load(SHAPES + 2 * level).to(tl.int32)
        width = tl.load(SHAPES + 2 * level + 1).to(tl.int32)
        for point in tl.static_range(NUM_POINTS):
            at = rows * (NUM_LEVELS * NUM_POINTS) + level * NUM_POINTS + point
            v, bilinear, _, _, _, _, _, _, w = _neighbours(
                V, LOC, ATTN, at, value_base, q_ok, ds, d_ok, start, width, height, S, stride_vs, stride_vd
            )
            acc += tl.sum(v * (bilinear * w[:, None])[:, :, None], axis=1)
        start += height * width
    tl.store(OUT + rows[:, None] * D + ds[None, :], acc.to(OUT.dtype.element_ty), mask=q_ok[:, None] & d_ok[None, :])


@triton.jit
def _msda_bwd_kernel(
    V, SHAPES, LOC, ATTN, DO, DV, DLOC, DATTN,
    S, Q, NH, D, total_rows,
    stride_vb, stride_vs, stride_vh, stride_vd,
    NUM_LEVELS: tl.constexpr, NUM_POINTS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    q_ok = rows < total_rows
    value_base = (rows // (Q * NH)) * stride_vb + (rows % NH) * stride_vh
    grad_base = (rows // (Q * NH)) * (S * NH * D) + (rows % NH) * D  # DV is contiguous fp32 [B, S, NH, D]
    ds = tl.arange(0, BLOCK_D)
    d_ok = ds < D
    grad = tl.load(DO + rows[:, None] * D + ds[None, :], mask=q_ok[:, None] & d_ok[None, :], other=0.0)
    grad = grad.to(tl.float32)
    start = 0
    for level in tl.static_range(NUM_LEVELS):
        height = tl.load(SHAPES + 2 * level).to(tl.int32)
        width = tl.load(SHAPES + 2 * level + 1).to(tl.int32)
        for point in tl.static_range(NUM_POINTS):
            at = rows * (NUM_LEVELS * NUM_POINTS) + level * NUM_POINTS + point
            v, bilinear, weight_x, weight_y, right, below, index, valid, w = _neighbours(
                V, LOC, ATTN, at, value_base, q_ok, ds, d_ok, start, width, height, S, stride_vs, stride_vd
            )
            g = tl.sum(grad[:, None, :] * v, axis=2)  # dO · corner value, [R, 4]
            tl.store(DATTN + at, tl.sum(g * bilinear, axis=1), mask=q_ok)
            d_x = tl.sum(g * tl.where(right, 1.0, -1.0) * weight_y, axis=1)
            d_y = tl.sum(g * tl.where(below, 1.0, -1.0) * weight_x, axis=1)
            tl.store(DLOC + 2 * at, w * d_x * width, mask=q_ok)
            tl.store(DLOC + 2 * at + 1, w * d_y * height, mask=q_ok)
            ptrs = DV + grad_base[:, None, None] + index[:, :, None].to(tl.int64) * (NH * D) + ds[None, None, :]
            contribution = grad[:, None, :] * (bilinear * w[:, None])[:, :, None]
            tl.atomic_add(ptrs, contribution, mask=valid[:, :, None] & d_ok[None, None, :])
        start += height * width


_msda_fwd = tuned(
    _msda_fwd_kernel,
    [
        triton.Config({"BLOCK_R": 32}, num_warps=2),
        triton.Config({"BLOCK_R": 64}, num_warps=4),
        triton.Config({"BLOCK_R": 128}, num_warps=4),
    ],
    key=["NH", "NUM_LEVELS", "NUM_POINTS", "BLOCK_D"],
)


@triton_op("vltk::ms_deform_attn_fwd", mutates_args=())
def ms_deform_attn_fwd(value: Tensor, spatial_shapes: Tensor, locations: Tensor, weights: Tensor) -> Tensor:
    """Forward ``[B, Q, nH·D]``; locations ``[B, Q, nH, L, P, 2]`` and weights ``[B, Q, nH, L, P]`` contiguous."""
    batch, total, heads, dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    out = torch.empty((batch, queries, heads * dim), dtype=value.dtype, device=value.device)

    rows = batch * queries * heads
    tiles = {"BLOCK_R": interpreter_tile(rows, 4096)} if INTERPRET else {}

    def grid(meta: dict) -> tuple[int]:
        return (triton.cdiv(rows, meta["BLOCK_R"]),)

    wrap_triton(_msda_fwd)[grid](
        value, spatial_shapes, locations, weights, out,
        total, queries, heads, dim, rows, *value.stride(),
        NUM_LEVELS=levels, NUM_POINTS=points, BLOCK_D=next_pow2(dim, 1), **tiles,
    )  # fmt: skip
    return out


@triton_op("vltk::ms_deform_attn_bwd", mutates_args=())
def ms_deform_attn_bwd(
    grad_out: Tensor, value: Tensor, spatial_shapes: Tensor, locations: Tensor, weights: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Backward: ``(d value, d locations, d weights)``."""
    batch, total, heads, dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    grad_out = grad_out.contiguous()
    grad_value = torch.zeros((batch, total, heads, dim), dtype=torch.float32, device=value.device)
    grad_locations = torch.empty(locations.shape, dtype=torch.float32, device=value.device)
    grad_weights = torch.empty(weights.shape, dtype=torch.float32, device=value.device)
    rows = batch * queries * heads
    block_r = interpreter_tile(rows, 4096) if INTERPRET else 32
    wrap_triton(_msda_bwd_kernel)[(triton.cdiv(rows, block_r),)](
        value, spatial_shapes, locations, weights, grad_out, grad_value, grad_locations, grad_weights,
        total, queries, heads, dim, rows, *value.stride(),
        NUM_LEVELS=levels, NUM_POINTS=points, BLOCK_D=next_pow2(dim, 1), BLOCK_R=block_r, num_warps=4,
    )  # fmt: skip
    return grad_value.to(value.dtype), grad_locations.to(locations.dtype), grad_weights.to(weights.dtype)


def _setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx: torch.autograd.function.FunctionCtx, grad_out: Tensor) -> tuple:
    value, spatial_shapes, locations, weights = ctx.saved_tensors
    grad_value, grad_locations, grad_weights = ms_deform_attn_bwd(grad_out, value, spatial_shapes, locations, weights)
    return grad_value, None, grad_locations, grad_weights


ms_deform_attn_fwd.register_autograd(_backward, setup_context=_setup_context)


def ms_deform_attn_triton(value: Tensor, spatial_shapes: Tensor, locations: Tensor, weights: Tensor) -> Tensor:
    """The fused op (inputs validated by the public function); differentiable in value, locations, weights."""
    check_launchable(value, locations, weights)
    shapes = spatial_shapes.to(device=value.device, dtype=torch.int64).contiguous()
    return ms_deform_attn_fwd(value, shapes, locations.contiguous(), weights.contiguous())


__all__ = ["ms_deform_attn_bwd", "ms_deform_attn_fwd", "ms_deform_attn_triton"]
