"""The faster Mask2Former paths against the formulas they replaced (outputs and gradients): SDPA attention with one
broadcast additive mask vs ``nn.MultiheadAttention`` with the per-head boolean mask, and the criterion's cost and
loss terms without all-ones weights vs the two-product forms."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from vltk_plugins.decoders.mask2former.criterion import (
    batch_dice_cost,
    batch_sigmoid_bce_cost,
    dice_loss,
    shared_point_mask_costs,
    shared_point_sample,
    sigmoid_bce_loss,
    uncertain_point_coords,
)
from vltk_plugins.decoders.mask2former.head import attention_mask
from vltk_plugins.decoders.mask2former.transformer_decoder import Mask2FormerDecoderLayer, attend

B, Q, S, DIM, HEADS = 2, 7, 30, 32, 4


def old_attention_mask(mask_logits: torch.Tensor, size: tuple[int, int], num_heads: int) -> torch.Tensor:
    """The earlier formula: boolean ``[B * heads, Q, S]``, True = hidden, repeated per head."""
    resized = F.interpolate(mask_logits, size=size, mode="bilinear", align_corners=False)
    hidden = resized.flatten(2).sigmoid() < 0.5
    hidden = hidden & ~hidden.all(dim=-1, keepdim=True)
    batch, queries, positions = hidden.shape
    return hidden.unsqueeze(1).expand(batch, num_heads, queries, positions).reshape(batch * num_heads, queries, -1)


def logits_with_an_empty_query() -> torch.Tensor:
    logits = torch.randn(B, Q, 10, 12, generator=torch.Generator().manual_seed(1))
    logits[0, 2] = -5.0  # predicts nothing: must see the whole level
    return logits


def test_additive_mask_is_the_per_head_boolean_mask_once() -> None:
    logits = logits_with_an_empty_query()
    new = attention_mask(logits, (5, 6))
    old = old_attention_mask(logits, (5, 6), HEADS)
    assert new.shape == (B, 1, Q, S)
    assert torch.equal(torch.isinf(new).expand(B, HEADS, Q, S).reshape(B * HEADS, Q, S), old)
    assert set(new.unique().tolist()) == {0.0, float("-inf")}
    assert (new[0, 0, 2] == 0).all()


def test_attend_equals_multihead_attention_outputs_and_gradients() -> None:
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(DIM, HEADS, batch_first=True)
    with torch.no_grad():
        attn.in_proj_bias.normal_()  # nonzero biases: the q/k/v slices must be the right ones
    query = torch.randn(B, Q, DIM, requires_grad=True)
    key = torch.randn(B, S, DIM, requires_grad=True)
    value = torch.randn(1, S, DIM).expand(B, -1, -1).requires_grad_()  # the decoder broadcasts [1, S, C] memories
    logits = logits_with_an_empty_query()
    cases = [
        (lambda: attend(attn, query, key, value, attention_mask(logits, (5, 6))),
         lambda: attn(query, key, value, attn_mask=old_attention_mask(logits, (5, 6), HEADS), need_weights=False)[0]),
        (lambda: attend(attn, query, None, query),  # self-attention: q and k from one GEMM
         lambda: attn(query, query, query, need_weights=False)[0]),
    ]  # fmt: skip
    weights = torch.randn(B, Q, DIM)
    for new, old in cases:
        inputs = [query, key, value, *attn.parameters()]
        out_new, out_old = new(), old()
        torch.testing.assert_close(out_new, out_old, rtol=1e-5, atol=1e-6)
        grads_new = torch.autograd.grad((out_new * weights).sum(), inputs, allow_unused=True)
        grads_old = torch.autograd.grad((out_old * weights).sum(), inputs, allow_unused=True)
        for a, b in zip(grads_new, grads_old, strict=True):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_decoder_layer_under_autocast_accepts_the_float_mask() -> None:
    layer = Mask2FormerDecoderLayer(DIM, HEADS, 48)
    query, memory = torch.randn(B, Q, DIM), torch.randn(B, S, DIM)
    mask = attention_mask(logits_with_an_empty_query(), (5, 6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(query, torch.randn(B, Q, DIM), memory, torch.randn(1, S, DIM), mask)
    assert out.shape == (B, Q, DIM) and torch.isfinite(out).all()


def old_bce_cost(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    positive, negative = F.softplus(-logits), F.softplus(logits)
    return (positive @ (targets * weights).T + negative @ ((1.0 - targets) * weights).T) / logits.shape[1]


def old_dice_cost(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    probs = logits.sigmoid()
    numerator = 2.0 * probs @ (targets * weights).T
    denominator = probs @ weights.T + (targets * weights).sum(-1)[None, :]
    return 1.0 - (numerator + 1.0) / (denominator + 1.0)


def test_costs_and_losses_equal_the_two_product_forms() -> None:
    generator = torch.Generator().manual_seed(2)
    logits = 4 * torch.randn(9, 500, generator=generator, dtype=torch.float64)
    targets = torch.rand(5, 500, generator=generator, dtype=torch.float64).round()
    weights = torch.rand(5, 500, generator=generator, dtype=torch.float64)
    ones = torch.ones_like(targets)
    for w in (weights, ones):
        torch.testing.assert_close(batch_sigmoid_bce_cost(logits, targets, w), old_bce_cost(logits, targets, w))
        torch.testing.assert_close(batch_dice_cost(logits, targets, w), old_dice_cost(logits, targets, w))
    torch.testing.assert_close(batch_sigmoid_bce_cost(logits, targets, None), old_bce_cost(logits, targets, ones))
    torch.testing.assert_close(batch_dice_cost(logits, targets, None), old_dice_cost(logits, targets, ones))
    matched = logits[:5].clone().requires_grad_()
    for loss in (sigmoid_bce_loss, dice_loss):
        new = loss(matched, targets, None, 3.0)
        old = loss(matched, targets, ones, 3.0)
        torch.testing.assert_close(new, old)
        (grad_new,) = torch.autograd.grad(new, matched)
        (grad_old,) = torch.autograd.grad(old, matched)
        torch.testing.assert_close(grad_new, grad_old)


def test_unsorted_importance_sampling_picks_the_same_points() -> None:
    """Same random draws as the sorted selection, same points; only their order (which the loss sums over) moves."""
    logits = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(4)
    unsorted = uncertain_point_coords(logits, 100, 3.0, 0.75)
    torch.manual_seed(4)
    candidates = torch.rand(3, 300, 2)
    grid = 2.0 * candidates.unsqueeze(2) - 1.0
    uncertainty = -F.grid_sample(logits, grid, mode="bilinear", align_corners=False)[:, 0, :, 0].abs()
    chosen = candidates.gather(1, uncertainty.topk(75, dim=1).indices.unsqueeze(-1).expand(-1, -1, 2))
    random = torch.rand(3, 25, 2)

    def as_sets(points: torch.Tensor) -> list[set[tuple[float, float]]]:
        return [{tuple(p) for p in row.tolist()} for row in points]

    assert as_sets(unsorted[:, :75]) == as_sets(chosen)
    assert torch.equal(unsorted[:, 75:], random)


def test_shared_point_sample_is_grid_sample_of_every_map() -> None:
    """The matcher's gather of all queries at shared points equals grid_sample (points inside, on the border and
    outside the map, zero padding), on a non-square map."""
    generator = torch.Generator().manual_seed(5)
    maps = torch.randn(7, 9, 13, generator=generator, dtype=torch.float64)
    points = torch.rand(300, 2, generator=generator, dtype=torch.float64) * 1.2 - 0.1
    points[:4] = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.5, 1.0], [1.05, -0.05]], dtype=torch.float64)
    expected = F.grid_sample(maps[None], 2.0 * points[None, None] - 1.0, mode="bilinear", align_corners=False)
    torch.testing.assert_close(shared_point_sample(maps, points), expected[0, :, 0].t())


def test_shared_point_mask_costs_equal_the_weightless_costs() -> None:
    """One sigmoid for both costs, softplus from it: the BCE and dice costs of the formulas, at logits large
    enough in both directions that σ rounds to 0 and 1."""
    generator = torch.Generator().manual_seed(6)
    logits = 6 * torch.randn(400, 9, generator=generator)  # [P, Q]
    logits[:5] = torch.tensor([40.0, -40.0, 0.0, 17.0, -17.0])[:, None]
    targets = torch.rand(4, 400, generator=generator).round()
    bce, dice = shared_point_mask_costs(logits, targets)
    torch.testing.assert_close(bce, batch_sigmoid_bce_cost(logits.t().double(), targets.double(), None).float())
    torch.testing.assert_close(dice, batch_dice_cost(logits.t().double(), targets.double(), None).float())
