"""rein_attention: Triton (interpreter on CPU) and the lean PyTorch path vs the reference, forward and backward,
on awkward shapes."""

from __future__ import annotations

import pytest
import torch

from vltk.context import BuildContext
from vltk_kernels import rein_attention, use_backend
from vltk_kernels.rein_attention import rein_attention_lean, rein_attention_reference

# (B, N, C, M): non-powers of two everywhere; N > 64 gives several row tiles with a masked last one; M = 100 is
# Rein's token count; M = 2 is the smallest legal case (one real token next to the null token).
SHAPES = [(2, 37, 48, 11), (1, 130, 100, 100), (3, 5, 20, 2)]


def make_inputs(batch: int, rows: int, channels: int, tokens: int, dtype: torch.dtype, seed: int = 0) -> list:
    generator = torch.Generator().manual_seed(seed)
    feats = torch.randn(batch, rows + 1, channels, generator=generator)  # the op sees the strided [:, 1:] view
    toks = torch.randn(tokens, channels, generator=generator)
    values = torch.randn(tokens - 1, channels, generator=generator) * 0.5
    return [x.to(dtype) for x in (feats, toks, values)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_triton_matches_reference(shape: tuple[int, int, int, int], dtype: torch.dtype, check_backends) -> None:
    scale = shape[2] ** -0.5

    def op(feats: torch.Tensor, tokens: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return rein_attention(feats[:, 1:], tokens, values, scale)

    def reference(feats: torch.Tensor, tokens: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return rein_attention_reference(feats[:, 1:], tokens, values, scale)

    check_backends(op, make_inputs(*shape, dtype), reference=reference)


def test_sharp_softmax_and_large_scale() -> None:
    """Large logits (scale 1) stress the max-subtraction; the log-sum-exp saved for backward must stay finite."""
    feats, tokens, values = make_inputs(2, 33, 40, 9, torch.float32, seed=3)
    feats = feats * 4
    with use_backend("triton"):
        out = rein_attention(feats, tokens, values, 1.0)
    torch.testing.assert_close(out, rein_attention_reference(feats, tokens, values, 1.0), atol=1e-4, rtol=1e-4)


def test_reference_gradcheck_float64() -> None:
    feats, tokens, values = (x.double().requires_grad_() for x in make_inputs(2, 3, 5, 4, torch.float64, seed=1))
    assert torch.autograd.gradcheck(lambda f, t, v: rein_attention_reference(f, t, v, 0.7), (feats, tokens, values))


def test_null_token_gets_no_value() -> None:
    """A patch that matches only token 0 receives (almost) no update: token 0 has no value row."""
    tokens = torch.zeros(3, 4)
    tokens[0, 0] = 50.0
    feats = torch.zeros(1, 2, 4)
    feats[..., 0] = 1.0
    values = torch.ones(2, 4)
    with use_backend("triton"):
        out = rein_attention(feats, tokens, values, 1.0)
    assert out.abs().max() < 1e-12 + 2 * torch.exp(torch.tensor(-50.0))


def test_rein_adapter_runs_the_kernel_under_auto() -> None:
    """The adapter calls the op; with the interpreter on, ``auto`` takes the Triton path and agrees with torch."""
    from vltk_plugins.rein.adapter import build_rein

    torch.manual_seed(0)
    rein = build_rein(
        {"token_length": 7, "lora_dim": 4, "query_dims": 8}, BuildContext(embed_dim=24, num_layers=2, patch_size=4)
    )
    x = torch.randn(2, 1 + 9, 24)
    with use_backend("auto"):
        fused = rein(x, 1)
        fused.sum().backward()
    grad_fused = rein.learnable_tokens_b.grad.clone()
    rein.zero_grad()
    with use_backend("torch"):
        reference = rein(x, 1)
        reference.sum().backward()
    torch.testing.assert_close(fused, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_fused, rein.learnable_tokens_b.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("chunk_size", [None, 7, 1], ids=["auto", "chunk7", "chunk1"])
@pytest.mark.parametrize("recompute", [False, True], ids=["keep", "recompute"])
def test_rein_lean_matches_reference(shape: tuple, chunk_size: int | None, recompute: bool, check_lean) -> None:
    scale = shape[2] ** -0.5

    def lean(f: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return rein_attention_lean(f[:, 1:], t, v, scale, chunk_size=chunk_size, recompute=recompute)

    def reference(f: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return rein_attention_reference(f[:, 1:], t, v, scale)

    check_lean(lean, reference, make_inputs(*shape, torch.float32))


@pytest.mark.parametrize("recompute", [False, True], ids=["keep", "recompute"])
def test_rein_lean_gradcheck_float64(recompute: bool) -> None:
    inputs = tuple(x.requires_grad_() for x in make_inputs(2, 6, 5, 4, torch.float64, seed=1))
    assert torch.autograd.gradcheck(
        lambda f, t, v: rein_attention_lean(f, t, v, 0.7, chunk_size=4, recompute=recompute), inputs
    )


def test_rein_lean_partial_gradients_and_half(check_lean) -> None:
    """Frozen tokens or values (only some inputs need gradients), and fp16 against the fp32 reference."""
    inputs = make_inputs(2, 37, 48, 11, torch.float32)
    for mask in ([True, False, True], [False, True, False], [False, False, True]):
        check_lean(
            lambda f, t, v: rein_attention_lean(f, t, v, 0.2, chunk_size=5),
            lambda f, t, v: rein_attention_reference(f, t, v, 0.2),
            inputs,
            grad_mask=mask,
        )
    check_lean(
        lambda f, t, v: rein_attention_lean(f, t, v, 0.2, chunk_size=16),
        lambda f, t, v: rein_attention_reference(f, t, v, 0.2),
        [x.half() for x in inputs],
        reference_dtype=torch.float32,
    )


def test_rein_lean_chunks_never_build_the_full_scores(peak_bytes) -> None:
    """With many tokens (M = 2C) the reference's [B, N, M] scores outweigh the output; the chunked path's do not."""
    feats, tokens, values = make_inputs(2, 1024, 32, 64, torch.float32)
    output_bytes = feats[:, 1:].numel() * 4
    lean = peak_bytes(lambda: rein_attention_lean(feats[:, 1:], tokens, values, 0.2, chunk_size=16))
    assert lean < 1.25 * output_bytes
    assert peak_bytes(lambda: rein_attention_reference(feats[:, 1:], tokens, values, 0.2)) > 2 * output_bytes


def test_rein_lean_rejects_a_bad_chunk_size() -> None:
    with pytest.raises(ValueError, match="chunk_size must be a positive number of rows"):
        rein_attention_lean(*make_inputs(1, 4, 8, 3, torch.float32), 0.5, chunk_size=0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_gpu_matches_reference(dtype: torch.dtype, check_backends) -> None:
    inputs = [x.cuda() for x in make_inputs(4, 1024 + 3, 1024, 100, dtype)]
    check_backends(
        lambda f, t, v: rein_attention(f[:, 1:], t, v, 1024**-0.5),
        inputs,
        reference=lambda f, t, v: rein_attention_reference(f[:, 1:], t, v, 1024**-0.5),
        scale_tolerance=2.0,
    )


@pytest.mark.gpu
def test_gpu_opcheck() -> None:
    from vltk_kernels.rein_attention.triton import rein_attention_fwd

    feats, tokens, values = (x.cuda().requires_grad_() for x in make_inputs(2, 77, 96, 13, torch.float32))
    torch.library.opcheck(rein_attention_fwd, (feats, tokens, values, 0.1))


@pytest.mark.gpu
def test_gpu_compile_fullgraph() -> None:
    feats, tokens, values = (x.cuda().requires_grad_() for x in make_inputs(2, 77, 96, 13, torch.float16))
    compiled = torch.compile(lambda f, t, v: rein_attention(f, t, v, 0.1), fullgraph=True)
    with use_backend("triton"):
        out = compiled(feats, tokens, values)
        out.float().sum().backward()
    with use_backend("torch"):
        expected = rein_attention(feats.float(), tokens.float(), values.float(), 0.1)
    torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=2e-2)
    assert feats.grad is not None and tokens.grad is not None and values.grad is not None


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_gpu_lean_matches_reference(dtype: torch.dtype, check_lean) -> None:
    """The lean path is what a GPU runs beyond the kernel's token limit, or with VLTK_KERNEL_BACKEND=torch."""
    feats, tokens, values = (x.cuda() for x in make_inputs(2, 300, 1024, 700, torch.float32))
    out = rein_attention_lean(feats.to(dtype), tokens.to(dtype), values.to(dtype), 1024**-0.5, chunk_size=128)
    expected = rein_attention_reference(feats, tokens, values, 1024**-0.5)
    tolerance = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    torch.testing.assert_close(out.float(), expected, atol=tolerance, rtol=tolerance)
    check_lean(
        lambda f, t, v: rein_attention_lean(f, t, v, 0.1, chunk_size=64, recompute=True),
        lambda f, t, v: rein_attention_reference(f, t, v, 0.1),
        [feats[:, :200, :96], tokens[:, :96], values[:, :96]],
    )
