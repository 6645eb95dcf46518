"""pixel_text_similarity: Triton (interpreter on CPU) and the lean PyTorch path vs the reference, forward and
backward."""

from __future__ import annotations

import importlib

import pytest
import torch

from vltk_kernels import pixel_text_similarity, use_backend
from vltk_kernels.pixel_text_similarity import pixel_text_similarity_lean, pixel_text_similarity_reference

# (B, C, H, W, K, per-image texts): non-powers of two; H·W = 323 > 256 gives a masked second pixel tile; K = 19
# (Cityscapes) and 150 (ADE20K, several K blocks on a GPU).
SHAPES = [(2, 40, 17, 19, 19, False), (1, 72, 9, 7, 150, False), (2, 24, 5, 13, 7, True)]


def make_inputs(b: int, c: int, h: int, w: int, k: int, per_image: bool, dtype: torch.dtype, seed: int = 0) -> list:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(b, c, h, w, generator=generator) * 3
    texts = torch.randn(*((b,) if per_image else ()), k, c, generator=generator)
    return [pixels.to(dtype), texts.to(dtype)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_triton_matches_reference(shape: tuple, dtype: torch.dtype, check_backends) -> None:
    temperature = 0.07 if shape[-1] else None
    check_backends(
        lambda p, t: pixel_text_similarity(p, t, temperature),
        make_inputs(*shape, dtype),
        reference=lambda p, t: pixel_text_similarity_reference(p, t, temperature),
    )


def test_channels_last_and_zero_vectors(check_backends) -> None:
    """Channels-last pixels are read in place; zero pixels/texts give 0 and the clamp's zero radial gradient."""
    pixels, texts = make_inputs(2, 24, 6, 11, 5, False, torch.float32, seed=2)
    pixels[0, :, 2, 3] = 0
    texts[1] = 0

    def op(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return pixel_text_similarity(p.contiguous(memory_format=torch.channels_last), t, 0.5)

    check_backends(op, [pixels, texts], reference=lambda p, t: pixel_text_similarity_reference(p, t, 0.5))
    with use_backend("triton"):
        out = op(pixels, texts)
    assert out[0, :, 2, 3].abs().max() == 0 and out[:, 1].abs().max() == 0


def test_tensor_temperature_keeps_its_gradient() -> None:
    pixels, texts = make_inputs(1, 16, 4, 5, 3, False, torch.float32)
    temperature = torch.tensor(0.1, requires_grad=True)
    with use_backend("triton"):
        pixel_text_similarity(pixels, texts, temperature).sum().backward()
    fused = temperature.grad.clone()
    temperature.grad = None
    pixel_text_similarity_reference(pixels, texts, temperature).sum().backward()
    torch.testing.assert_close(fused, temperature.grad, rtol=1e-4, atol=1e-4)


def test_reference_gradcheck_float64() -> None:
    pixels, texts = make_inputs(2, 5, 3, 2, 4, True, torch.float64, seed=1)
    assert torch.autograd.gradcheck(
        lambda p, t: pixel_text_similarity_reference(p, t, 0.5),
        (pixels.requires_grad_(), texts.requires_grad_()),
    )


def test_shape_errors_name_the_shapes() -> None:
    with pytest.raises(ValueError, match="shape mismatch"):
        pixel_text_similarity(torch.randn(1, 8, 2, 2), torch.randn(3, 7))
    with pytest.raises(ValueError, match="same batch size"):
        pixel_text_similarity(torch.randn(2, 8, 2, 2), torch.randn(3, 4, 8))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
def test_pixel_text_lean_matches_reference(shape: tuple, channels_last: bool, check_lean) -> None:
    pixels, texts = make_inputs(*shape, torch.float32)
    if channels_last:
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    check_lean(
        lambda p, t: pixel_text_similarity_lean(p, t, 0.07),
        lambda p, t: pixel_text_similarity_reference(p, t, 0.07),
        [pixels, texts],
    )


def test_pixel_text_lean_zero_vectors_half_and_frozen_texts(check_lean) -> None:
    """Zero pixels/texts give 0 (the clamp), fp16 follows the fp32 reference, frozen texts get no gradient."""
    pixels, texts = make_inputs(2, 24, 6, 11, 5, True, torch.float32, seed=2)
    pixels[0, :, 2, 3] = 0
    texts[1, 3] = 0
    check_lean(pixel_text_similarity_lean, pixel_text_similarity_reference, [pixels, texts])
    check_lean(pixel_text_similarity_lean, pixel_text_similarity_reference, [pixels, texts], grad_mask=[True, False])
    half = [x.half() for x in make_inputs(2, 40, 17, 19, 19, False, torch.float32)]
    check_lean(
        lambda p, t: pixel_text_similarity_lean(p, t, 0.5),
        lambda p, t: pixel_text_similarity_reference(p, t, 0.5),
        half,
        reference_dtype=torch.float32,
    )


@pytest.mark.parametrize("per_image", [False, True], ids=["texts-KC", "texts-BKC"])
def test_pixel_text_lean_gradcheck_float64(per_image: bool) -> None:
    pixels, texts = make_inputs(2, 5, 3, 2, 4, per_image, torch.float64, seed=1)
    assert torch.autograd.gradcheck(
        lambda p, t: pixel_text_similarity_lean(p, t, 0.5), (pixels.requires_grad_(), texts.requires_grad_())
    )


def test_pixel_text_lean_tensor_temperature_keeps_its_gradient(check_lean) -> None:
    pixels, texts = make_inputs(1, 16, 4, 5, 3, False, torch.float32)
    temperature = torch.tensor(0.1)
    check_lean(pixel_text_similarity_lean, pixel_text_similarity_reference, [pixels, texts, temperature])


def test_pixel_text_lean_makes_no_pixel_sized_copy(peak_bytes) -> None:
    """The forward's only large tensor is the output: nothing of the pixels' size (a normalised copy) appears."""
    pixels, texts = make_inputs(2, 256, 32, 32, 5, False, torch.float32)
    output_bytes = 2 * 5 * 32 * 32 * 4
    assert peak_bytes(lambda: pixel_text_similarity_lean(pixels, texts, 0.07)) < 1.5 * output_bytes
    assert peak_bytes(lambda: pixel_text_similarity_reference(pixels, texts, 0.07)) > pixels.nbytes


def test_torch_backend_dispatches_to_the_lean_path(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def spy(*args: object) -> torch.Tensor:
        calls.append(1)
        return pixel_text_similarity_lean(*args)  # type: ignore[arg-type]

    # the package attribute is the function (vltk_kernels re-exports it), so fetch the module itself
    package = importlib.import_module("vltk_kernels.pixel_text_similarity")
    monkeypatch.setattr(package, "pixel_text_similarity_lean", spy)
    with use_backend("torch"):
        pixel_text_similarity(*make_inputs(1, 8, 3, 3, 2, False, torch.float32))
    assert calls == [1]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("per_image", [False, True])
def test_gpu_matches_reference(dtype: torch.dtype, per_image: bool, check_backends) -> None:
    inputs = [x.cuda() for x in make_inputs(2, 512, 127, 129, 150, per_image, dtype)]
    check_backends(
        lambda p, t: pixel_text_similarity(p, t, 0.07),
        inputs,
        reference=lambda p, t: pixel_text_similarity_reference(p, t, 0.07),
        scale_tolerance=4.0,
    )


@pytest.mark.gpu
def test_gpu_opcheck() -> None:
    from vltk_kernels.pixel_text_similarity.triton import pixel_text_similarity_fwd

    pixels, texts = (x.cuda().requires_grad_() for x in make_inputs(2, 40, 17, 19, 19, True, torch.float32))
    torch.library.opcheck(pixel_text_similarity_fwd, (pixels, texts, 2.0))


@pytest.mark.gpu
def test_gpu_compile_fullgraph() -> None:
    pixels, texts = (x.cuda().requires_grad_() for x in make_inputs(2, 64, 33, 31, 19, False, torch.float16))
    compiled = torch.compile(lambda p, t: pixel_text_similarity(p, t, 0.07), fullgraph=True)
    with use_backend("triton"):
        out = compiled(pixels, texts)
        out.float().sum().backward()
    expected = pixel_text_similarity_reference(pixels.float(), texts.float(), 0.07)
    torch.testing.assert_close(out.float(), expected, atol=5e-2, rtol=2e-2)
    assert pixels.grad is not None and texts.grad is not None


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_gpu_lean_matches_reference(dtype: torch.dtype, check_lean) -> None:
    """The lean path is also what a GPU falls back to (e.g. with VLTK_KERNEL_BACKEND=torch)."""
    pixels, texts = (x.cuda() for x in make_inputs(2, 512, 33, 31, 150, True, torch.float32))
    out = pixel_text_similarity_lean(pixels.to(dtype), texts.to(dtype), 0.07)
    expected = pixel_text_similarity_reference(pixels, texts, 0.07)
    tolerance = {torch.float32: 1e-4, torch.float16: 5e-2, torch.bfloat16: 2e-1}[dtype]
    torch.testing.assert_close(out.float(), expected, atol=tolerance, rtol=tolerance)
    check_lean(pixel_text_similarity_lean, pixel_text_similarity_reference, [pixels[:, :64], texts[..., :64]])
