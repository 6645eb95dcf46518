"""The pixel decoder's memory-lean linears: the modules' values and gradients, one saved tensor fewer each."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vltk_plugins.decoders.mask2former.head import mask_product
from vltk_plugins.decoders.mask2former.lean import layer_norm_then_linear, linear_on_sum
from vltk_plugins.decoders.mask2former.pixel_decoder import DeformableEncoderLayer


def _saved_storages(fn, *inputs: Tensor, modules: tuple[nn.Module, ...]) -> set[int]:  # noqa: ANN001
    """The storages autograd keeps for ``fn(*inputs)``, the ``modules``' weights and the norm's statistics left
    out."""
    weights = {p.untyped_storage().data_ptr() for module in modules for p in module.parameters()}
    storages: set[int] = set()

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage().data_ptr()
        if storage not in weights and tensor.shape[-1] > 1:
            storages.add(storage)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn(*inputs)
    return storages


def _assert_gradients_equal(ours: Tensor, theirs: Tensor, leaves: list[Tensor], tolerance: float) -> None:
    grad = torch.randn_like(ours)
    for a, b in zip(torch.autograd.grad(ours, leaves, grad), torch.autograd.grad(theirs, leaves, grad), strict=True):
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance * max(b.abs().max().item(), 1.0))


def test_linear_on_sum_equals_the_linear_of_the_sum() -> None:
    torch.manual_seed(0)
    for dtype, tolerance in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        linear = nn.Linear(16, 12).to(dtype)
        x = torch.randn(3, 10, 16, dtype=dtype, requires_grad=True)
        pos = torch.randn(1, 10, 16, dtype=dtype, requires_grad=True)  # broadcast over the batch, learnable
        ours, theirs = linear_on_sum(linear, x, pos), linear(x + pos)
        assert torch.equal(ours, theirs)
        _assert_gradients_equal(ours, theirs, [x, pos, *linear.parameters()], tolerance)


def test_layer_norm_then_linear_equals_the_two_modules() -> None:
    torch.manual_seed(0)
    for dtype, tolerance in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        norm, linear = nn.LayerNorm(16).to(dtype), nn.Linear(16, 24).to(dtype)
        with torch.no_grad():
            norm.weight.normal_()
            norm.bias.normal_()
        x = torch.randn(3, 10, 16, dtype=dtype, requires_grad=True)
        normed, hidden = layer_norm_then_linear(norm, linear, x)
        assert torch.equal(normed, norm(x)) and torch.equal(hidden, linear(norm(x)))
        # both outputs carry gradient: the residual reads the normalised input, the FFN the product
        ours = normed * 0.5 + torch.relu_(hidden).sum(-1, keepdim=True)
        theirs = norm(x) * 0.5 + torch.relu(linear(norm(x))).sum(-1, keepdim=True)
        _assert_gradients_equal(ours, theirs, [x, *norm.parameters(), *linear.parameters()], tolerance)


def test_each_keeps_one_tensor_fewer_for_the_backward() -> None:
    linear, norm = nn.Linear(16, 12), nn.LayerNorm(16)
    x = torch.randn(3, 10, 16, requires_grad=True)
    pos = torch.randn(1, 10, 16, requires_grad=True)
    modules = (linear, norm)
    plain = _saved_storages(lambda a, b: linear(a + b), x, pos, modules=modules)
    lean = _saved_storages(lambda a, b: linear_on_sum(linear, a, b), x, pos, modules=modules)
    assert len(plain) == 1 and x.untyped_storage().data_ptr() not in plain  # the sum
    assert lean == {x.untyped_storage().data_ptr(), pos.untyped_storage().data_ptr()}  # kept by the caller anyway
    plain = _saved_storages(lambda a: linear(norm(a)), x, modules=modules)
    lean = _saved_storages(lambda a: layer_norm_then_linear(norm, linear, a), x, modules=modules)
    assert len(plain) == 2 and lean == {x.untyped_storage().data_ptr()}


def test_the_encoder_layer_is_unchanged_where_the_lean_path_is_off() -> None:
    torch.manual_seed(0)
    layer = DeformableEncoderLayer(32, 4, 2, 2, 48)
    with torch.no_grad():
        for parameter in layer.parameters():  # off the init (zero offset weights), so every input matters
            parameter.add_(0.1 * torch.randn_like(parameter))
    shapes = torch.tensor([[4, 4], [2, 2]])
    starts = torch.tensor([0, 16])
    query = torch.randn(2, 20, 32, requires_grad=True)
    pos = torch.randn(1, 20, 32, requires_grad=True)
    reference = torch.rand(1, 20, 2, 2)
    lean = layer(query, pos, reference, shapes, starts)
    with torch.no_grad():
        plain = layer(query, pos, reference, shapes, starts)  # no grad: the modules themselves run
    assert torch.equal(lean, plain)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(query, pos, reference, shapes, starts).dtype == torch.float32  # the norms' output dtype


def test_mask_product_is_the_einsum_channels_last() -> None:
    """The swapped-operand mask product: the einsum's values and gradients, queries innermost in memory, and the
    features kept as they are (no transposed copy for the backward)."""
    generator = torch.Generator().manual_seed(7)
    embed = torch.randn(2, 5, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    features = torch.randn(2, 6, 3, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 5, 3, 4, generator=generator, dtype=torch.float64)
    logits = mask_product(embed, features)
    expected = torch.einsum("bqc,bchw->bqhw", embed, features)
    torch.testing.assert_close(logits, expected)
    assert logits.is_contiguous(memory_format=torch.channels_last)
    grads = torch.autograd.grad((logits * weights).sum(), [embed, features])
    want = torch.autograd.grad((expected * weights).sum(), [embed, features])
    for got, wanted in zip(grads, want, strict=True):
        torch.testing.assert_close(got, wanted)
    assert grads[1].is_contiguous()
    with torch.no_grad():
        torch.testing.assert_close(mask_product(embed, features), expected)
