"""Triton kernels for Rein's token attention (imported lazily by :func:`vltk_kernels.rein_attention`).

``out = softmax(f Tᵀ · scale)[..., 1:] @ V`` with f ``[B, N, C]``, T ``[M, C]``, V ``[M-1, C]``. Rein has few
tokens (M = 100 in the paper), so one program holds a ``BLOCK_N x M`` score tile in registers: it accumulates
``f Tᵀ`` over channel chunks, takes the softmax, then writes the output chunk by chunk as ``P @ V'`` where V' is V
shifted down one row with a zero row for token 0 (Rein's null token) — masked loads, no copy. Scores and
probabilities never reach global memory; the forward saves only the per-row log-sum-exp (4 bytes per row).

The backward recomputes P from the log-sum-exp (flash-attention style):
``dP = dO V'ᵀ``, ``dS = P ∘ (dP - rowsum(P ∘ dP)) · scale``, ``df = dS T``, ``dT = dSᵀ f``, ``dV' = Pᵀ dO``.
``dT`` and ``dV`` sum over all B·N rows, so each program adds its partial into fp32 buffers with atomics.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from vltk_kernels._triton_utils import (
    INTERPRET,
    check_launchable,
    dot_precision,
    interpreter_tile,
    next_pow2,
    tuned,
)


@triton.jit
def _rein_fwd_kernel(
    F, T, V, OUT, LSE,
    N, C, M, scale,
    stride_fb, stride_fn, stride_fc,
    stride_tm, stride_tc,
    stride_vm, stride_vc,
    stride_ob, stride_on, stride_oc,
    BLOCK_M: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    toks = tl.arange(0, BLOCK_M)
    row_ok = rows < N
    tok_ok = toks < M
    f_base = F + batch * stride_fb + rows[:, None] * stride_fn
    # scores = f @ T^T, accumulated over channel chunks in fp32
    scores = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        col_ok = cols < C
        f = tl.load(f_base + cols[None, :] * stride_fc, mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        t = tl.load(
            T + toks[:, None] * stride_tm + cols[None, :] * stride_tc, mask=tok_ok[:, None] & col_ok[None, :], other=0.0
        )
        if UPCAST:
            f = f.to(tl.float32)
            t = t.to(tl.float32)
        scores = tl.dot(f, tl.trans(t), scores, input_precision=PRECISION)
    scores = tl.where(tok_ok[None, :], scores * scale, float("-inf"))
    row_max = tl.max(scores, axis=1)
    probs = tl.exp(scores - row_max[:, None])
    row_sum = tl.sum(probs, axis=1)
    probs = probs / row_sum[:, None]
    tl.store(LSE + batch * N + rows, row_max + tl.log(row_sum), mask=row_ok)
    if not UPCAST:
        probs = probs.to(F.dtype.element_ty)
    # out = P @ V' (V' = V shifted down one row; token 0 has no value)
    o_base = OUT + batch * stride_ob + rows[:, None] * stride_on
    v_ok = (toks >= 1) & tok_ok
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        col_ok = cols < C
        v = tl.load(
            V + (toks[:, None] - 1) * stride_vm + cols[None, :] * stride_vc,
            mask=v_ok[:, None] & col_ok[None, :],
            other=0.0,
        )
        if UPCAST:
            v = v.to(tl.float32)
        out = tl.dot(probs, v, input_precision=PRECISION)
        tl.store(
            o_base + cols[None, :] * stride_oc, out.to(OUT.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :]
        )


@triton.jit
def _rein_bwd_kernel(
    F, T, V, DO, LSE, DF, DT, DV,
    N, C, M, scale,
    stride_fb, stride_fn, stride_fc,
    stride_tm, stride_tc,
    stride_vm, stride_vc,
    stride_dob, stride_don, stride_doc,
    stride_dfb, stride_dfn, stride_dfc,
    BLOCK_M: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    toks = tl.arange(0, BLOCK_M)
    row_ok = rows < N
    tok_ok = toks < M
    v_ok = (toks >= 1) & tok_ok
    f_base = F + batch * stride_fb + rows[:, None] * stride_fn
    do_base = DO + batch * stride_dob + rows[:, None] * stride_don
    # recompute scores and dP = dO @ V'^T in one sweep over the channels
    scores = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    dprobs = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        col_ok = cols < C
        tile_ok = row_ok[:, None] & col_ok[None, :]
        f = tl.load(f_base + cols[None, :] * stride_fc, mask=tile_ok, other=0.0)
        t = tl.load(
            T + toks[:, None] * stride_tm + cols[None, :] * stride_tc, mask=tok_ok[:, None] & col_ok[None, :], other=0.0
        )
        do = tl.load(do_base + cols[None, :] * stride_doc, mask=tile_ok, other=0.0)
        v = tl.load(
            V + (toks[:, None] - 1) * stride_vm + cols[None, :] * stride_vc,
            mask=v_ok[:, None] & col_ok[None, :],
            other=0.0,
        )
        if UPCAST:
            f = f.to(tl.float32)
            t = t.to(tl.float32)
            do = do.to(tl.float32)
            v = v.to(tl.float32)
        scores = tl.dot(f, tl.trans(t), scores, input_precision=PRECISION)
        dprobs = tl.dot(do, tl.trans(v), dprobs, input_precision=PRECISION)
    lse = tl.load(LSE + batch * N + rows, mask=row_ok, other=0.0)
    probs = tl.exp(scores * scale - lse[:, None])
    probs = tl.where(row_ok[:, None] & tok_ok[None, :], probs, 0.0)
    dscores = probs * (dprobs - tl.sum(probs * dprobs, axis=1)[:, None]) * scale
    if not UPCAST:
        probs = probs.to(F.dtype.element_ty)
        dscores = dscores.to(F.dtype.element_ty)
    df_base = DF + batch * stride_dfb + rows[:, None] * stride_dfn
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        col_ok = cols < C
        tile_ok = row_ok[:, None] & col_ok[None, :]
        t = tl.load(
            T + toks[:, None] * stride_tm + cols[None, :] * stride_tc, mask=tok_ok[:, None] & col_ok[None, :], other=0.0
        )
        f = tl.load(f_base + cols[None, :] * stride_fc, mask=tile_ok, other=0.0)
        do = tl.load(do_base + cols[None, :] * stride_doc, mask=tile_ok, other=0.0)
        if UPCAST:
            t = t.to(tl.float32)
            f = f.to(tl.float32)
            do = do.to(tl.float32)
        df = tl.dot(dscores, t, input_precision=PRECISION)
        tl.store(df_base + cols[None, :] * stride_dfc, df.to(DF.dtype.element_ty), mask=tile_ok)
        # partial dT and dV' of this row tile, summed over all tiles with fp32 atomics
        dt = tl.dot(tl.trans(dscores), f, input_precision=PRECISION)
        tl.atomic_add(DT + toks[:, None] * C + cols[None, :], dt, mask=tok_ok[:, None] & col_ok[None, :])
        dv = tl.dot(tl.trans(probs), do, input_precision=PRECISION)
        tl.atomic_add(DV + (toks[:, None] - 1) * C + cols[None, :], dv, mask=v_ok[:, None] & col_ok[None, :])


# The score tile is BLOCK_N x BLOCK_M fp32 in registers: BLOCK_N stays <= 64 so M up to 128 fits without spills.
_rein_fwd = tuned(
    _rein_fwd_kernel,
    [
        triton.Config({"BLOCK_N": 64, "BLOCK_C": 64}, num_warps=4, num_stages=2),
        triton.Config({"BLOCK_N": 64, "BLOCK_C": 128}, num_warps=8, num_stages=2),
        triton.Config({"BLOCK_N": 32, "BLOCK_C": 64}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_N": 32, "BLOCK_C": 128}, num_warps=4, num_stages=3),
    ],
    key=["C", "BLOCK_M"],
)


def _launch_args(feats: Tensor) -> dict:
    return {"UPCAST": INTERPRET or feats.dtype == torch.float32, "PRECISION": dot_precision(feats.dtype)}


@triton_op("vltk::rein_attention_fwd", mutates_args=())
def rein_attention_fwd(feats: Tensor, tokens: Tensor, values: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Forward: ``(out [B, N, C], lse [B, N] fp32)``; the log-sum-exp is all the backward needs besides inputs."""
    batch, rows, channels = feats.shape
    num_tokens = tokens.shape[0]
    out = torch.empty((batch, rows, channels), dtype=feats.dtype, device=feats.device)
    lse = torch.empty((batch, rows), dtype=torch.float32, device=feats.device)

    tiles = {"BLOCK_N": interpreter_tile(rows, 1024), "BLOCK_C": interpreter_tile(channels, 256)} if INTERPRET else {}

    def grid(meta: dict) -> tuple[int, int]:
        return (triton.cdiv(rows, meta["BLOCK_N"]), batch)

    wrap_triton(_rein_fwd)[grid](
        feats, tokens, values, out, lse,
        rows, channels, num_tokens, scale,
        *feats.stride(), *tokens.stride(), *values.stride(), *out.stride(),
        BLOCK_M=next_pow2(num_tokens), **tiles, **_launch_args(feats),
    )  # fmt: skip
    return out, lse


@triton_op("vltk::rein_attention_bwd", mutates_args=())
def rein_attention_bwd(
    grad_out: Tensor, feats: Tensor, tokens: Tensor, values: Tensor, lse: Tensor, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Backward: ``(d feats, d tokens, d values)`` from the saved inputs and log-sum-exp."""
    batch, rows, channels = feats.shape
    num_tokens = tokens.shape[0]
    block_m = next_pow2(num_tokens)
    grad_feats = torch.empty((batch, rows, channels), dtype=feats.dtype, device=feats.device)
    grad_tokens = torch.zeros((num_tokens, channels), dtype=torch.float32, device=feats.device)
    grad_values = torch.zeros((num_tokens - 1, channels), dtype=torch.float32, device=feats.device)
    if INTERPRET:
        block_n, block_c, warps = interpreter_tile(rows, 1024), interpreter_tile(channels, 256), 4
    else:  # registers: scores, dP and dS tiles of BLOCK_N x BLOCK_M fp32 each
        block_n = 64 if block_m <= 64 else 32 if block_m <= 128 else 16
        block_c, warps = 64, 4 if block_m <= 64 else 8
    wrap_triton(_rein_bwd_kernel)[(triton.cdiv(rows, block_n), batch)](
        feats, tokens, values, grad_out, lse, grad_feats, grad_tokens, grad_values,
        rows, channels, num_tokens, scale,
        *feats.stride(), *tokens.stride(), *values.stride(), *grad_out.stride(), *grad_feats.stride(),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_C=block_c, num_warps=warps, **_launch_args(feats),
    )  # fmt: skip
    return grad_feats, grad_tokens.to(tokens.dtype), grad_values.to(values.dtype)


def _setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: tuple) -> None:
    feats, tokens, values, scale = inputs
    _, lse = output
    ctx.save_for_backward(feats, tokens, values, lse)
    ctx.scale = scale
    ctx.mark_non_differentiable(lse)


def _backward(ctx: torch.autograd.function.FunctionCtx, grad_out: Tensor | None, grad_lse: Tensor | None) -> tuple:
    feats, tokens, values, lse = ctx.saved_tensors
    if grad_out is None:
        return None, None, None, None
    grad_feats, grad_tokens, grad_values = rein_attention_bwd(grad_out, feats, tokens, values, lse, ctx.scale)
    return grad_feats, grad_tokens, grad_values, None


rein_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


def rein_attention_triton(feats: Tensor, tokens: Tensor, values: Tensor, scale: float) -> Tensor:
    """The fused op (inputs already validated by the public function); differentiable."""
    check_launchable(feats, tokens, values)
    out, _ = rein_attention_fwd(feats, tokens, values, float(scale))
    return out


__all__ = ["rein_attention_bwd", "rein_attention_fwd", "rein_attention_triton"]
