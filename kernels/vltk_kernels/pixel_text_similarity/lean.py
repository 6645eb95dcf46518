"""Memory-lean PyTorch path of the pixel-text cosine similarity: what the public op runs on a CPU and wherever
the Triton kernel cannot (the ``torch`` backend).

:func:`~vltk_kernels.pixel_text_similarity.reference.pixel_text_similarity_reference` normalises before the
product, so autograd keeps a normalised copy of the ``[B, C, H, W]`` pixels (and its backward builds more of the
same size): 130 MB of extra memory at Cityscapes-512 size where the output is 2.4 MB. Here the norms are divided
out *after* the product, as the fused kernel does:

``out = (t̂ · p) · rp`` with ``t̂ = t · rt / temperature`` (``[K, C]``, small), ``rp = 1 / max(|p|, eps)``
(``[B, H·W]``) and ``rt`` likewise for the texts. The autograd function saves the inputs, the output and the
inverse norms, and its backward only builds tensors of the output's or the gradients' size:

- ``dp = rp · (t̂ᵀ dOut - p · rp · Σ_k dOut·out)``
- ``dt = rt / temperature · Σ_hw dOut·rp·pᵀ - rt² · t · Σ_hw dOut·out``

(the radial terms only where the norm exceeds eps: below it the clamp is a constant). Large tensors stay in the
input dtype (a mixed-dtype elementwise op on a CPU would copy its operands); only the ``[K, C]`` side is summed in
fp32.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from vltk_kernels._dispatch import autocast_inputs, autocast_off
from vltk_kernels.pixel_text_similarity.reference import check_pixel_text_shapes, pixel_text_similarity_reference

EPS = 1e-12  # F.normalize's default, as in the reference


def flat_pixels(pixels: Tensor) -> Tensor:
    """``[B, C, H·W]`` as a view when H and W merge (NCHW and channels-last both do), else a contiguous copy."""
    if pixels.shape[2] > 1 and pixels.stride(2) != pixels.shape[3] * pixels.stride(3):
        pixels = pixels.contiguous()
    return pixels.flatten(2)


def _inverse_norms(x: Tensor, dim: int) -> Tensor:
    """``1 / max(|x|, eps)`` along ``dim``, at least in fp32 (eps underflows in fp16).

    The norm is a reduction in ``x``'s own dtype (it accumulates in fp32 inside), so neither a squared nor an
    upcast copy of ``x`` is made; only the small result is upcast.
    """
    norms = torch.linalg.vector_norm(x, dim=dim)
    return norms.to(torch.promote_types(x.dtype, torch.float32)).clamp_min_(EPS).reciprocal_()


def _scale_for(values: Tensor, like: Tensor) -> Tensor:
    """``values`` in ``like``'s dtype for an elementwise op on a large tensor (clamped where it would overflow)."""
    if values.dtype == like.dtype:
        return values
    return values.clamp_max(torch.finfo(like.dtype).max).to(like.dtype)


def _scaled_texts(texts: Tensor, inv_txt: Tensor, inv_temp: float) -> Tensor:
    """``t · rt / temperature`` in the texts' dtype: ``[K, C]`` or ``[B, K, C]``, small."""
    return (texts.to(inv_txt.dtype) * (inv_txt * inv_temp).unsqueeze(-1)).to(texts.dtype)


class _PixelTextCosine(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, pixels: Tensor, texts: Tensor, inv_temp: float) -> Tensor:
        batch, _, height, width = pixels.shape
        flat = flat_pixels(pixels)
        inv_pix = _inverse_norms(flat, dim=1)  # [B, HW]
        inv_txt = _inverse_norms(texts, dim=-1)  # [K] or [B, K]
        out = torch.matmul(_scaled_texts(texts, inv_txt, inv_temp), flat)  # [B, K, HW]: no pixel-sized copy
        out.mul_(_scale_for(inv_pix, out).unsqueeze(1))
        out = out.view(batch, texts.shape[-2], height, width)
        ctx.save_for_backward(pixels, texts, out, inv_pix, inv_txt)
        ctx.inv_temp = inv_temp
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        with autocast_off(grad_out.device):
            return _PixelTextCosine._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx: FunctionCtx, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        pixels, texts, out, inv_pix, inv_txt = ctx.saved_tensors
        need_pixels, need_texts, _ = ctx.needs_input_grad
        flat = flat_pixels(pixels)
        grad = grad_out.reshape(out.shape[0], out.shape[1], -1)  # [B, K, HW]
        along_dot = grad * out.flatten(2)  # Σ over K gives the pixels' radial term, over HW the texts'
        grad_pixels = grad_texts = None
        if need_pixels:
            scaled_texts = _scaled_texts(texts, inv_txt, ctx.inv_temp)
            # t̂ᵀ dOut, computed in the layout of the pixels (channels-last pixels: as (dOutᵀ t̂)ᵀ)
            if flat.stride(1) == 1 and flat.shape[1] > 1:
                projected = torch.matmul(grad.transpose(1, 2), scaled_texts).transpose(1, 2)
            else:
                projected = torch.matmul(scaled_texts.transpose(-1, -2), grad)
            radial = torch.where(inv_pix * EPS < 1.0, inv_pix * along_dot.sum(1), 0.0)  # [B, HW]
            projected.addcmul_(flat, _scale_for(radial, flat).unsqueeze(1), value=-1.0)
            projected.mul_(_scale_for(inv_pix, flat).unsqueeze(1))
            grad_pixels = projected.view(pixels.shape)
        if need_texts:
            weighted = torch.matmul(grad * _scale_for(inv_pix, grad).unsqueeze(1), flat.transpose(1, 2))  # [B, K, C]
            weighted, sums = weighted.to(inv_txt.dtype), along_dot.sum(-1).to(inv_txt.dtype)  # small: fp32 sums
            if texts.dim() == 2:
                weighted, sums = weighted.sum(0), sums.sum(0)
            radial_t = torch.where(inv_txt * EPS < 1.0, inv_txt * inv_txt * sums, 0.0)
            grad_texts = weighted * (inv_txt * ctx.inv_temp).unsqueeze(-1) - texts.to(
                inv_txt.dtype
            ) * radial_t.unsqueeze(-1)
            grad_texts = grad_texts.to(texts.dtype)
        return grad_pixels, grad_texts, None


def pixel_text_similarity_lean(pixels: Tensor, texts: Tensor, temperature: float | Tensor | None = None) -> Tensor:
    """Same result and gradients as the reference; peak extra memory about the output (plus, for the backward,
    the gradients and one more output-sized buffer).

    Under autocast both inputs are cast as the product would cast them and the op runs in that dtype. Inputs the
    lean path does not cover (empty tensors, mixed dtypes or devices, non-floating dtypes) go to the
    reference, so errors and corner cases stay the specification's. A tensor ``temperature`` divides the cosines
    in PyTorch, so its gradient flows as in the reference.
    """
    check_pixel_text_shapes(pixels, texts)
    pixels, texts = autocast_inputs(pixels, texts)
    if (
        pixels.numel() == 0
        or texts.numel() == 0
        or pixels.dtype != texts.dtype
        or pixels.device != texts.device
        or not pixels.is_floating_point()
    ):
        return pixel_text_similarity_reference(pixels, texts, temperature)
    inv_temp = 1.0 if temperature is None or isinstance(temperature, Tensor) else 1.0 / float(temperature)
    with autocast_off(pixels.device):
        cosines = _PixelTextCosine.apply(pixels, texts, inv_temp)
    return cosines / temperature if isinstance(temperature, Tensor) else cosines


__all__ = ["flat_pixels", "pixel_text_similarity_lean"]
