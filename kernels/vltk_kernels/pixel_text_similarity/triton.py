"""Triton kernels for the pixel-text cosine similarity (imported lazily by the public op).

Forward: one program owns a ``BLOCK_K x BLOCK_P`` tile of the ``[B, K, H·W]`` output and sweeps the channels once,
accumulating the raw dot products ``t·p`` (``tl.dot``) and the squared norms of both sides; the tile is then
scaled by ``1 / (max(|t|, eps) · max(|p|, eps) · temperature)``. No normalised copy of either input exists; the
inverse norms (4 bytes per pixel and per text) are saved for the backward.

Backward, with ``g = dOut / temperature``, ``p̂ = p / max(|p|, eps)`` and likewise ``t̂``:
``dp = rp · (t̂ᵀ g) - rp² · p · Σ_k dOut·out`` and ``dt = rt · (g p̂ᵀ) - rt² · t · Σ_hw dOut·out`` (the second
terms only where the norm exceeds eps — below it the clamp is constant). ``Σ dOut·out`` replaces a recomputation of
the cosines, as flash-attention's ``rowsum(dO ∘ O)`` does.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from vltk_kernels._triton_utils import INTERPRET, check_launchable, dot_precision, interpreter_tile, next_pow2, tuned
from vltk_kernels.pixel_text_similarity.lean import EPS, flat_pixels  # F.normalize's eps; [B, C, H·W] view


@triton.jit
def _pts_fwd_kernel(
    P, T, OUT, RP, RT,
    C, HW, K, inv_temp, eps,
    stride_pb, stride_pc, stride_phw,
    stride_tb, stride_tk, stride_tc,
    stride_ob, stride_ok, stride_ohw,
    BLOCK_K: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    pid_p = tl.program_id(0)
    pid_k = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    pix = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    ks = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    pix_ok = pix < HW
    k_ok = ks < K
    acc = tl.zeros([BLOCK_K, BLOCK_P], dtype=tl.float32)
    p_sq = tl.zeros([BLOCK_P], dtype=tl.float32)
    t_sq = tl.zeros([BLOCK_K], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        c_ok = cs < C
        p = tl.load(
            P + batch * stride_pb + cs[:, None] * stride_pc + pix[None, :] * stride_phw,
            mask=c_ok[:, None] & pix_ok[None, :],
            other=0.0,
        )
        t = tl.load(
            T + batch * stride_tb + ks[:, None] * stride_tk + cs[None, :] * stride_tc,
            mask=k_ok[:, None] & c_ok[None, :],
            other=0.0,
        )
        p32 = p.to(tl.float32)
        t32 = t.to(tl.float32)
        p_sq += tl.sum(p32 * p32, axis=0)
        t_sq += tl.sum(t32 * t32, axis=1)
        if UPCAST:
            acc = tl.dot(t32, p32, acc, input_precision=PRECISION)
        else:
            acc = tl.dot(t, p, acc, input_precision=PRECISION)
    rp = 1.0 / tl.maximum(tl.sqrt(p_sq), eps)
    rt = 1.0 / tl.maximum(tl.sqrt(t_sq), eps)
    out = acc * (rt * inv_temp)[:, None] * rp[None, :]
    tl.store(
        OUT + batch * stride_ob + ks[:, None] * stride_ok + pix[None, :] * stride_ohw,
        out.to(OUT.dtype.element_ty),
        mask=k_ok[:, None] & pix_ok[None, :],
    )
    if pid_k == 0:
        tl.store(RP + batch * HW + pix, rp, mask=pix_ok)
    if pid_p == 0:
        tl.store(RT + batch * K + ks, rt, mask=k_ok)


@triton.jit
def _pts_bwd_pixels_kernel(
    P, T, OUT, DO, RP, RT, DP, DTSUM,
    C, HW, K, inv_temp, eps,
    stride_pb, stride_pc, stride_phw,
    stride_tb, stride_tk, stride_tc,
    stride_ob, stride_ok, stride_ohw,
    stride_dob, stride_dok, stride_dohw,
    stride_dpb, stride_dpc, stride_dphw,
    stride_rtb,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    pid_p = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    pix = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    pix_ok = pix < HW
    rp = tl.load(RP + batch * HW + pix, mask=pix_ok, other=0.0)
    # sum_k dOut * out per pixel (and, atomically, per text over this pixel tile)
    d_pix = tl.zeros([BLOCK_P], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        tile_ok = (ks < K)[:, None] & pix_ok[None, :]
        do = tl.load(
            DO + batch * stride_dob + ks[:, None] * stride_dok + pix[None, :] * stride_dohw, mask=tile_ok, other=0.0
        )
        o = tl.load(
            OUT + batch * stride_ob + ks[:, None] * stride_ok + pix[None, :] * stride_ohw, mask=tile_ok, other=0.0
        )
        prod = do.to(tl.float32) * o.to(tl.float32)
        d_pix += tl.sum(prod, axis=0)
        tl.atomic_add(DTSUM + batch * K + ks, tl.sum(prod, axis=1), mask=ks < K)
    radial = tl.where(rp * eps < 1.0, rp * rp * d_pix, 0.0)  # the clamp has no gradient below eps
    for c0 in range(0, C, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        c_ok = cs < C
        acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < K
            t = tl.load(
                T + batch * stride_tb + ks[:, None] * stride_tk + cs[None, :] * stride_tc,
                mask=k_ok[:, None] & c_ok[None, :],
                other=0.0,
            )
            rt = tl.load(RT + batch * stride_rtb + ks, mask=k_ok, other=0.0)
            do = tl.load(
                DO + batch * stride_dob + ks[:, None] * stride_dok + pix[None, :] * stride_dohw,
                mask=k_ok[:, None] & pix_ok[None, :],
                other=0.0,
            )
            t_hat = t.to(tl.float32) * rt[:, None]
            if UPCAST:
                do = do.to(tl.float32)
            else:
                t_hat = t_hat.to(DO.dtype.element_ty)
            acc = tl.dot(tl.trans(t_hat), do, acc, input_precision=PRECISION)
        p = tl.load(
            P + batch * stride_pb + cs[:, None] * stride_pc + pix[None, :] * stride_phw,
            mask=c_ok[:, None] & pix_ok[None, :],
            other=0.0,
        )
        dp = acc * (rp * inv_temp)[None, :] - p.to(tl.float32) * radial[None, :]
        tl.store(
            DP + batch * stride_dpb + cs[:, None] * stride_dpc + pix[None, :] * stride_dphw,
            dp.to(DP.dtype.element_ty),
            mask=c_ok[:, None] & pix_ok[None, :],
        )


@triton.jit
def _pts_bwd_texts_kernel(
    P, DO, RP, W,
    C, HW, K, pix_per_split, splits,
    stride_pb, stride_pc, stride_phw,
    stride_dob, stride_dok, stride_dohw,
    stride_wb,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """W[b, k, c] += sum over this program's pixels of dOut[b, k, hw] * p̂[b, c, hw] (fp32 atomics)."""
    pid_k = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_bs = tl.program_id(2)
    batch = (pid_bs // splits).to(tl.int64)
    split = pid_bs % splits
    ks = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    cs = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    k_ok = ks < K
    c_ok = cs < C
    acc = tl.zeros([BLOCK_K, BLOCK_C], dtype=tl.float32)
    start = split * pix_per_split
    for p0 in range(start, start + pix_per_split, BLOCK_P):
        pix = p0 + tl.arange(0, BLOCK_P)
        pix_ok = (pix < HW) & (pix < start + pix_per_split)
        do = tl.load(
            DO + batch * stride_dob + ks[:, None] * stride_dok + pix[None, :] * stride_dohw,
            mask=k_ok[:, None] & pix_ok[None, :],
            other=0.0,
        )
        p = tl.load(
            P + batch * stride_pb + cs[:, None] * stride_pc + pix[None, :] * stride_phw,
            mask=c_ok[:, None] & pix_ok[None, :],
            other=0.0,
        )
        rp = tl.load(RP + batch * HW + pix, mask=pix_ok, other=0.0)
        p_hat = p.to(tl.float32) * rp[None, :]
        if UPCAST:
            do = do.to(tl.float32)
        else:
            p_hat = p_hat.to(DO.dtype.element_ty)
        acc = tl.dot(do, tl.trans(p_hat), acc, input_precision=PRECISION)
    tl.atomic_add(W + batch * stride_wb + ks[:, None] * C + cs[None, :], acc, mask=k_ok[:, None] & c_ok[None, :])


_pts_fwd = tuned(
    _pts_fwd_kernel,
    [
        triton.Config({"BLOCK_P": 64, "BLOCK_C": 64}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_P": 128, "BLOCK_C": 32}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_P": 128, "BLOCK_C": 64}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_P": 256, "BLOCK_C": 32}, num_warps=8, num_stages=2),
    ],
    key=["C", "BLOCK_K"],
)


def _text_strides(texts: Tensor) -> tuple[int, int, int]:
    return (0, *texts.stride()) if texts.dim() == 2 else tuple(texts.stride())


def _launch_args(pixels: Tensor) -> dict:
    return {"UPCAST": INTERPRET or pixels.dtype == torch.float32, "PRECISION": dot_precision(pixels.dtype)}


def _block_k(num_texts: int) -> int:
    return interpreter_tile(num_texts, 256) if INTERPRET else min(next_pow2(num_texts), 32)


@triton_op("vltk::pixel_text_similarity_fwd", mutates_args=())
def pixel_text_similarity_fwd(pixels: Tensor, texts: Tensor, inv_temp: float) -> tuple[Tensor, Tensor, Tensor]:
    """Forward: ``(scores [B, K, H, W], inverse pixel norms [B, H·W], inverse text norms [B, K])`` (fp32 norms)."""
    batch, channels, height, width = pixels.shape
    num_texts = texts.shape[-2]
    flat = flat_pixels(pixels)
    hw = height * width
    out = torch.empty((batch, num_texts, height, width), dtype=pixels.dtype, device=pixels.device)
    inv_pix = torch.empty((batch, hw), dtype=torch.float32, device=pixels.device)
    inv_txt = torch.empty((batch, num_texts), dtype=torch.float32, device=pixels.device)
    block_k = _block_k(num_texts)

    tiles = {"BLOCK_P": interpreter_tile(hw, 4096), "BLOCK_C": interpreter_tile(channels, 128)} if INTERPRET else {}

    def grid(meta: dict) -> tuple[int, int, int]:
        return (triton.cdiv(hw, meta["BLOCK_P"]), triton.cdiv(num_texts, block_k), batch)

    wrap_triton(_pts_fwd)[grid](
        flat, texts, out, inv_pix, inv_txt,
        channels, hw, num_texts, inv_temp, EPS,
        *flat.stride(), *_text_strides(texts), out.stride(0), out.stride(1), out.stride(3),
        BLOCK_K=block_k, **tiles, **_launch_args(pixels),
    )  # fmt: skip
    return out, inv_pix, inv_txt


@triton_op("vltk::pixel_text_similarity_bwd", mutates_args=())
def pixel_text_similarity_bwd(
    grad_out: Tensor, out: Tensor, pixels: Tensor, texts: Tensor, inv_pix: Tensor, inv_txt: Tensor, inv_temp: float
) -> tuple[Tensor, Tensor]:
    """Backward: ``(d pixels, d texts)`` from the saved inputs, output and inverse norms."""
    batch, channels, height, width = pixels.shape
    num_texts = texts.shape[-2]
    shared = texts.dim() == 2
    flat = flat_pixels(pixels)
    hw = height * width
    grad_out = grad_out.reshape(batch, num_texts, hw)
    out = out.reshape(batch, num_texts, hw)
    grad_pixels = torch.empty((batch, channels, height, width), dtype=pixels.dtype, device=pixels.device)
    grad_flat = grad_pixels.view(batch, channels, hw)
    text_sums = torch.zeros((batch, num_texts), dtype=torch.float32, device=pixels.device)
    w = torch.zeros((1 if shared else batch, num_texts, channels), dtype=torch.float32, device=pixels.device)
    block_k = _block_k(num_texts)
    if INTERPRET:
        block_p, block_c, warps, splits = interpreter_tile(hw, 4096), interpreter_tile(channels, 128), 4, 1
    else:
        block_p, block_c, warps = 64, 64, 4
    common = _launch_args(pixels)
    wrap_triton(_pts_bwd_pixels_kernel)[(triton.cdiv(hw, block_p), batch)](
        flat, texts, out, grad_out, inv_pix, inv_txt, grad_flat, text_sums,
        channels, hw, num_texts, inv_temp, EPS,
        *flat.stride(), *_text_strides(texts), *out.stride(), *grad_out.stride(), *grad_flat.stride(),
        0 if shared else inv_txt.stride(0),
        BLOCK_K=block_k, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=warps, **common,
    )  # fmt: skip
    tiles = triton.cdiv(num_texts, block_k) * triton.cdiv(channels, block_c) * batch
    if not INTERPRET:  # enough programs to fill the GPU: split the pixel sum, partial sums meet in atomics
        splits = max(1, min(triton.cdiv(hw, 4 * block_p), triton.cdiv(512, tiles)))
    pix_per_split = triton.cdiv(triton.cdiv(hw, splits), block_p) * block_p
    splits = triton.cdiv(hw, pix_per_split)
    grid = (triton.cdiv(num_texts, block_k), triton.cdiv(channels, block_c), batch * splits)
    wrap_triton(_pts_bwd_texts_kernel)[grid](
        flat, grad_out, inv_pix, w,
        channels, hw, num_texts, pix_per_split, splits,
        *flat.stride(), *grad_out.stride(), 0 if shared else w.stride(0),
        BLOCK_K=block_k, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=warps, **common,
    )  # fmt: skip
    # finish on the small [K, C] side: dt = rt·W·inv_temp - rt²·t·Σ dOut·out (no radial term below eps)
    inv_t = inv_txt[0] if shared else inv_txt
    sums = text_sums.sum(0) if shared else text_sums
    radial = torch.where(inv_t * EPS < 1.0, inv_t * inv_t * sums, torch.zeros_like(sums))
    w = w[0] if shared else w
    grad_texts = w * (inv_t * inv_temp).unsqueeze(-1) - texts.float() * radial.unsqueeze(-1)
    return grad_pixels, grad_texts.to(texts.dtype)


def _setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: tuple) -> None:
    pixels, texts, inv_temp = inputs
    out, inv_pix, inv_txt = output
    ctx.save_for_backward(pixels, texts, out, inv_pix, inv_txt)
    ctx.inv_temp = inv_temp
    ctx.mark_non_differentiable(inv_pix, inv_txt)


def _backward(ctx: torch.autograd.function.FunctionCtx, grad_out: Tensor | None, *unused: Tensor | None) -> tuple:
    pixels, texts, out, inv_pix, inv_txt = ctx.saved_tensors
    if grad_out is None:
        return None, None, None
    grad_pixels, grad_texts = pixel_text_similarity_bwd(grad_out, out, pixels, texts, inv_pix, inv_txt, ctx.inv_temp)
    return grad_pixels, grad_texts, None


pixel_text_similarity_fwd.register_autograd(_backward, setup_context=_setup_context)


def pixel_text_similarity_triton(pixels: Tensor, texts: Tensor, temperature: float | None = None) -> Tensor:
    """The fused op (inputs validated by the public function); differentiable in pixels and texts."""
    check_launchable(pixels, texts)
    inv_temp = 1.0 if temperature is None else 1.0 / float(temperature)
    out, _, _ = pixel_text_similarity_fwd(pixels, texts, inv_temp)
    return out


__all__ = ["pixel_text_similarity_bwd", "pixel_text_similarity_fwd", "pixel_text_similarity_triton"]
