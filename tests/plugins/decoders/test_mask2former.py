"""Tests of the mask2former decoder: matching, point sampling, each loss term by hand, shapes, parameter counts,
Rein's query link (no query_embed, gradients into the tokens), training, options."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import pytest
import torch
from pydantic import ValidationError
from torch.nn import functional as F

import vltk
import vltk_kernels
from vltk.context import BuildContext
from vltk.errors import UserError
from vltk.interfaces import Decoder
from vltk_kernels import use_backend
from vltk_plugins.decoders.mask2former import pixel_decoder as pixel_decoder_module
from vltk_plugins.decoders.mask2former.criterion import (
    HungarianMatcher,
    Mask2FormerCriterion,
    point_sample,
    sample_targets,
    semantic_to_instances,
    uncertain_point_coords,
)
from vltk_plugins.decoders.mask2former.head import (
    Mask2Former,
    Mask2FormerConfigError,
    attention_mask,
    build_mask2former,
)
from vltk_plugins.decoders.mask2former.options import Mask2FormerOptions

STRIDES = (4, 8, 16, 32)
TINY = {
    "hidden_dim": 64,
    "num_heads": 4,
    "enc_layers": 1,
    "enc_ffn": 64,
    "dec_layers": 3,
    "dec_ffn": 64,
    "num_queries": 6,
    "num_points": 256,
}


@pytest.fixture(autouse=True)
def fast_cpu() -> object:
    """Reference kernels (the Triton interpreter is tested in tests/kernels and far too slow for whole models) and
    one thread: these models are tiny, and two threads fight over a shared CI core. Both restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with use_backend("torch"):
        yield
    torch.set_num_threads(threads)


def pyramid(batch: int, in_channels: list[int], height: int, width: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, c, math.ceil(height / s), math.ceil(width / s), generator=generator)
        for c, s in zip(in_channels, STRIDES, strict=True)
    ]


def tiny(**overrides: object) -> Mask2Former:
    context = {"in_channels": [16, 24, 32, 40], "num_classes": 4}
    context.update({k: overrides.pop(k) for k in list(overrides) if k in ("in_channels", "num_classes", "query_dims")})
    return build_mask2former(Mask2FormerOptions(**{**TINY, **overrides}), BuildContext(**context))


# ------------------------------------------------------------------------------------------------ targets / points


def test_semantic_targets_one_mask_per_present_class_ignoring_255() -> None:
    labels = torch.tensor([[[3, 3, 1], [255, 1, 1]], [[255, 255, 255], [255, 255, 255]]])
    first, empty = semantic_to_instances(labels, ignore_index=255)
    assert first.labels.tolist() == [1, 3]
    assert first.masks.tolist() == [[[0, 0, 1], [0, 1, 1]], [[1, 1, 0], [0, 0, 0]]]
    assert first.valid.tolist() == [[1, 1, 1], [0, 1, 1]]
    assert empty.labels.numel() == 0 and empty.masks.shape == (0, 2, 3)


def test_point_sample_reads_pixel_centres_exactly() -> None:
    image = torch.arange(12.0).view(1, 1, 3, 4)
    points = torch.tensor([[[0.5 / 4, 0.5 / 3], [3.5 / 4, 2.5 / 3], [2.0 / 4, 1.5 / 3]]])
    # last point lies halfway between pixels (1, 1) and (1, 2)
    torch.testing.assert_close(point_sample(image, points).flatten(), torch.tensor([0.0, 11.0, 5.5]))


def test_importance_sampled_points_are_the_most_uncertain_ones() -> None:
    """Logits are 0 (maximally uncertain) in the band x in [0.25, 0.75) and ±10 elsewhere."""
    torch.manual_seed(0)
    logits = torch.full((2, 1, 32, 64), 10.0)
    logits[1] *= -1
    logits[..., 16:48] = 0.0
    num_points, ratio = 200, 0.75
    points = uncertain_point_coords(logits, num_points, oversample_ratio=3.0, importance_sample_ratio=ratio)
    assert points.shape == (2, num_points, 2)
    assert ((points >= 0) & (points <= 1)).all()
    uncertain = points[:, : int(ratio * num_points)]
    # exactly-zero logits need both bilinear neighbours inside the band: x*64 - 0.5 in [16, 47]
    assert ((uncertain[..., 0] >= 16.5 / 64) & (uncertain[..., 0] <= 47.5 / 64)).all()
    # the remaining quarter is uniform: some of it falls outside the band
    rest = points[:, int(ratio * num_points) :, 0]
    assert ((rest < 0.25) | (rest > 0.75)).any()
    uniform = uncertain_point_coords(logits, num_points, oversample_ratio=3.0, importance_sample_ratio=0.0)
    assert ((uniform[..., 0] < 0.25) | (uniform[..., 0] > 0.75)).float().mean() > 0.3


def test_ignored_pixels_get_zero_weight_and_do_not_dilute_targets() -> None:
    """ignore_mode=exclude (both modes by hand: test_mask2former_ignore.py)."""
    labels = torch.tensor([[[2, 255], [2, 255]]])
    (target,) = semantic_to_instances(labels, ignore_index=255)
    points = torch.tensor([[[0.25, 0.25], [0.75, 0.75], [0.5, 0.25]]])  # labelled centre, ignored centre, boundary
    gt, weight = sample_targets(target, torch.tensor([0]), points, ignore_mode="exclude", padding="border")
    torch.testing.assert_close(weight, torch.tensor([[1.0, 0.0, 0.5]]))
    # the boundary point averages its labelled neighbours only: target 1, not 0.5
    torch.testing.assert_close(gt, torch.tensor([[1.0, 0.0, 1.0]]))


# ------------------------------------------------------------------------------------------------ matching


def test_matcher_finds_the_optimum_where_greedy_fails() -> None:
    """Class costs only: each target's favourite query is q0, but the optimum gives q0 to target B."""
    probabilities = torch.tensor([[0.45, 0.40, 0.15], [0.25, 0.05, 0.70], [0.30, 0.01, 0.69]])
    labels = torch.tensor([[[0, 1], [0, 1]]])  # class A = 0, class B = 1
    (target,) = semantic_to_instances(labels, 255)
    matcher = HungarianMatcher(class_weight=1.0, mask_weight=0.0, dice_weight=0.0, num_points=16)
    cost = matcher.cost_matrix(probabilities.log(), torch.zeros(3, 2, 2), target)
    torch.testing.assert_close(cost, -probabilities[:, :2])
    queries, targets = matcher.match(probabilities.log(), torch.zeros(3, 2, 2), target)
    assert dict(zip(queries.tolist(), targets.tolist(), strict=True)) == {0: 1, 2: 0}


def test_matcher_assigns_by_mask_overlap() -> None:
    torch.manual_seed(0)
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    labels[..., :8] = 2  # left half class 2, right half class 0 -> targets ordered [class 0, class 2]
    masks = torch.full((3, 8, 8), -6.0)
    masks[0, :, 4:] = 6.0  # q0: right half
    masks[1, :, :4] = 6.0  # q1: left half
    masks[2] = 0.1  # q2: unsure everywhere
    (target,) = semantic_to_instances(labels, 255)
    queries, targets = HungarianMatcher(num_points=512).match(torch.zeros(3, 4), masks, target)
    assert queries.tolist() == [0, 1] and targets.tolist() == [0, 1]


# ------------------------------------------------------------------------------------------------ losses by hand

PIXEL_CENTRES = torch.tensor([[[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]])  # (x, y), row-major


class FixedPointsCriterion(Mask2FormerCriterion):
    """Samples the four pixel centres of a 2x2 map everywhere, so every term can be computed by hand."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(num_classes=2, num_points=4, **kwargs)
        self.matcher.sample_points = lambda device: PIXEL_CENTRES  # type: ignore[method-assign]

    def sample_points(self, mask_logits: torch.Tensor) -> torch.Tensor:
        return PIXEL_CENTRES.expand(mask_logits.shape[0], -1, -1)


def _bce(x: float, t: float) -> float:
    return -(t * math.log(1 / (1 + math.exp(-x))) + (1 - t) * math.log(1 - 1 / (1 + math.exp(-x))))


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _dice(logits: list[float], targets: list[float], weights: list[float]) -> float:
    p = [_sigmoid(x) for x in logits]
    inter = sum(w * a * b for w, a, b in zip(weights, p, targets, strict=True))
    total = sum(w * a for w, a in zip(weights, p, strict=True)) + sum(
        w * b for w, b in zip(weights, targets, strict=True)
    )
    return 1 - (2 * inter + 1) / (total + 1)


def test_each_loss_term_and_the_matching_by_hand() -> None:
    labels = torch.tensor([[[0, 1], [1, 255]]])  # class 0: pixel 0; class 1: pixels 1, 2; pixel 3 ignored
    t0, t1, valid = [1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0]
    mask_rows = [[3.0, -2.0, -1.0, 0.5], [0.2, 0.1, -0.3, 0.4], [-2.0, 2.5, 1.5, -4.0]]
    class_rows = [[2.0, -1.0, 0.0], [0.1, 0.2, 0.3], [-1.0, 1.5, 0.2]]
    class_logits = torch.tensor([class_rows])
    mask_logits = torch.tensor([mask_rows]).view(1, 3, 2, 2)
    criterion = FixedPointsCriterion(ignore_mode="exclude")  # ignored pixel 3 has weight 0
    targets = semantic_to_instances(labels, 255)

    # Matching: brute force over every injective assignment of the 2 targets to the 3 queries.
    def pair_cost(q: int, t: list[float], cls: int) -> float:
        probs = torch.tensor(class_rows[q]).softmax(-1)
        bce = sum(w * _bce(x, y) for w, x, y in zip(valid, mask_rows[q], t, strict=True)) / 4
        return -2 * probs[cls].item() + 5 * bce + 5 * _dice(mask_rows[q], t, valid)

    expected_cost = torch.tensor([[pair_cost(q, t0, 0), pair_cost(q, t1, 1)] for q in range(3)])
    torch.testing.assert_close(
        criterion.matcher.cost_matrix(class_logits[0], mask_logits[0], targets[0]), expected_cost
    )
    best = min(itertools.permutations(range(3), 2), key=lambda qs: sum(expected_cost[q, j] for j, q in enumerate(qs)))
    assert best == (0, 2)  # q0 <-> class 0, q2 <-> class 1
    queries, matched = criterion.matcher.match(class_logits[0], mask_logits[0], targets[0])
    assert queries.tolist() == [0, 2] and matched.tolist() == [0, 1]

    losses = criterion.single(class_logits, mask_logits, targets)
    ce = [-torch.tensor(class_rows[q]).log_softmax(-1)[y].item() for q, y in zip(range(3), [0, 2, 1], strict=True)]
    expected_cls = 2.0 * (ce[0] + 0.1 * ce[1] + ce[2]) / (1 + 0.1 + 1)
    bce_sum = sum(w * _bce(x, y) for w, x, y in zip(valid, mask_rows[0], t0, strict=True)) + sum(
        w * _bce(x, y) for w, x, y in zip(valid, mask_rows[2], t1, strict=True)
    )
    expected_mask = 5.0 * bce_sum / (2 * 4)
    expected_dice = 5.0 * (_dice(mask_rows[0], t0, valid) + _dice(mask_rows[2], t1, valid)) / 2
    assert losses["loss_cls"].item() == pytest.approx(expected_cls, rel=1e-5)
    assert losses["loss_mask"].item() == pytest.approx(expected_mask, rel=1e-5)
    assert losses["loss_dice"].item() == pytest.approx(expected_dice, rel=1e-5)


def test_batch_without_any_target_gives_no_object_loss_and_zero_mask_loss() -> None:
    criterion = FixedPointsCriterion()
    class_logits = torch.randn(2, 3, 3, requires_grad=True)
    mask_logits = torch.randn(2, 3, 2, 2, requires_grad=True)
    labels = torch.full((2, 2, 2), 255)
    losses = criterion.single(class_logits, mask_logits, semantic_to_instances(labels, 255))
    expected = 2.0 * F.cross_entropy(class_logits.flatten(0, 1), torch.full((6,), 2))
    torch.testing.assert_close(losses["loss_cls"], expected)
    assert losses["loss_mask"].item() == 0.0 and losses["loss_dice"].item() == 0.0
    sum(losses.values()).backward()
    assert mask_logits.grad is not None and torch.isfinite(class_logits.grad).all()


def test_deep_supervision_names_and_total() -> None:
    torch.manual_seed(0)
    model = tiny().train()
    outputs = model(pyramid(2, model.in_channels, 64, 64))
    losses = model.loss(outputs, torch.randint(0, 4, (2, 64, 64)))
    terms = ("loss_cls", "loss_mask", "loss_dice")
    expected = {f"d{i}.{t}" for i in range(3) for t in terms} | set(terms) | {"loss"}
    assert set(losses) == expected
    torch.testing.assert_close(losses["loss"], sum(v for k, v in losses.items() if k != "loss"))
    with pytest.raises(ValueError, match=r"class ids in \[0, 4\).*\[7\]"):
        model.loss(outputs, torch.full((2, 64, 64), 7))
    last_only = tiny(deep_supervision=False)
    assert set(last_only.loss(outputs, torch.randint(0, 4, (2, 64, 64)))) == set(terms) | {"loss"}


# ------------------------------------------------------------------------------------------------ forward


def test_attention_mask_hides_low_probability_pixels_and_unmasks_empty_rows() -> None:
    logits = torch.tensor([[[[5.0, -5.0], [-5.0, 5.0]], [[-5.0, -5.0], [-5.0, -5.0]]]])  # [1, 2, 2, 2]
    mask = attention_mask(logits, (2, 2))
    assert mask.shape == (1, 1, 2, 4)  # [B, 1, Q, S]: one mask broadcast over every head
    assert mask[0, 0, 0].tolist() == [0.0, float("-inf"), float("-inf"), 0.0]
    assert (mask[0, 0, 1] == 0).all().item()  # query 1 predicts nothing: it may look everywhere


@pytest.mark.parametrize(("height", "width"), [(64, 64), (70, 100)])
def test_output_shapes_stock(height: int, width: int) -> None:
    model = tiny().eval()
    outputs = model(pyramid(2, model.in_channels, height, width))
    h4, w4 = math.ceil(height / 4), math.ceil(width / 4)
    assert outputs["seg_logits"].shape == (2, 4, h4, w4)
    assert outputs["mask_cls"].shape == (2, 6, 5)
    assert outputs["mask_pred"].shape == (2, 6, h4, w4)
    assert len(outputs["all_mask_cls"]) == len(outputs["all_mask_pred"]) == 3 + 1
    assert outputs["all_mask_pred"][-1] is outputs["mask_pred"]
    expected = torch.einsum("bqk,bqhw->bkhw", outputs["mask_cls"].softmax(-1)[..., :-1], outputs["mask_pred"].sigmoid())
    torch.testing.assert_close(outputs["seg_logits"], expected)
    scores = model.predict(outputs, (height, width))
    assert scores.shape == (2, 4, height, width)
    # mmseg's order: upsample the mask logits, then sigmoid
    up = F.interpolate(outputs["mask_pred"], size=(height, width), mode="bilinear", align_corners=False)
    manual = torch.einsum("bqk,bqhw->bkhw", outputs["mask_cls"].softmax(-1)[..., :-1], up.sigmoid())
    torch.testing.assert_close(scores, manual)


def test_pixel_decoder_samples_through_the_kernel_op(monkeypatch: pytest.MonkeyPatch) -> None:
    """The encoder calls ``vltk_kernels.ms_deform_attn`` (so a fused backend plugs in), once per layer."""
    assert pixel_decoder_module.ms_deform_attn is vltk_kernels.ms_deform_attn
    calls = []

    def counting(*args: torch.Tensor) -> torch.Tensor:
        calls.append(args[0].shape)
        return vltk_kernels.ms_deform_attn(*args)

    monkeypatch.setattr(pixel_decoder_module, "ms_deform_attn", counting)
    model = tiny(enc_layers=2).eval()
    model(pyramid(1, model.in_channels, 64, 96))
    # value [B, S, heads, hidden / heads] over the stride-32/16/8 levels: 2x3 + 4x6 + 8x12 positions
    assert calls == [torch.Size([1, 6 + 24 + 96, 4, 16])] * 2


@torch.no_grad()
def test_triton_backend_of_the_op_gives_the_same_pixel_decoder_output() -> None:
    """Under TRITON_INTERPRET=1 (tests/conftest.py) ``auto`` runs the Triton kernel on CPU tensors."""
    torch.manual_seed(0)
    model = tiny().eval()
    features = pyramid(1, model.in_channels, 32, 32)
    reference = model.pixel_decoder(features)
    with use_backend("auto"):
        dispatched = model.pixel_decoder(features)
    torch.testing.assert_close(dispatched[0], reference[0], atol=1e-5, rtol=1e-5)
    for a, b in zip(dispatched[1], reference[1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_is_a_decoder_and_accepts_text_embeddings() -> None:
    model = tiny().eval()
    assert isinstance(model, Decoder) and model.ignore_index == 255
    features = pyramid(1, model.in_channels, 64, 64)
    torch.testing.assert_close(
        model(features)["seg_logits"], model(features, text_embeddings=torch.randn(4, 8))["seg_logits"]
    )
    with pytest.raises(ValueError, match="4 feature maps"):
        model(features[:3])


def _expected_params(in_ch: int, classes: int, queries: int | None, query_dims: int | None = None) -> int:
    """Closed form for hidden C=256, 8 heads, 3 levels, 4 points, 6 encoder layers (FFN 1024), 9 decoder layers
    (FFN 2048). ``queries`` None means Rein's link (querys2feat instead of query_feat + query_embed)."""
    c, heads, levels, points = 256, 8, 3, 4
    samples = heads * levels * points
    encoder_layer = (c * 2 * samples + 2 * samples) + (c * samples + samples) + 2 * (c * c + c)
    encoder_layer += (c * 1024 + 1024 + 1024 * c + c) + 2 * 2 * c
    pixel = 3 * (in_ch * c + c + 2 * c) + levels * c + 6 * encoder_layer
    pixel += (in_ch * c + 2 * c) + (9 * c * c + 2 * c) + (c * c + c)
    decoder_layer = 2 * (4 * c * c + 4 * c) + (c * 2048 + 2048 + 2048 * c + c) + 3 * 2 * c
    transformer = 9 * decoder_layer + 2 * c
    head = levels * c + (c * (classes + 1) + classes + 1) + 3 * (c * c + c)
    head += 2 * queries * c if queries is not None else (query_dims or c) * c + c
    return pixel + transformer + head


@pytest.mark.parametrize(("query_dims", "expected"), [(None, 20_565_204), (256, 20_579_796)])
def test_head_parameter_count_is_the_papers_20_6m(query_dims: int | None, expected: int) -> None:
    model = build_mask2former(None, BuildContext(in_channels=[1024] * 4, num_classes=19, query_dims=query_dims))
    count = sum(p.numel() for p in model.parameters())
    assert count == expected
    assert count == _expected_params(1024, 19, None if query_dims else 100, query_dims)
    assert abs(count - 20.6e6) / 20.6e6 < 0.01


# ------------------------------------------------------------------------------------------------ Rein's query link


def test_rein_link_replaces_learned_queries_and_trains_the_tokens() -> None:
    torch.manual_seed(0)
    rein = vltk.create(
        "adapter", "rein", embed_dim=32, num_layers=2, patch_size=16, token_length=7, query_dims=64,
        link_token_to_query=True,
    )  # fmt: skip
    model = tiny(query_dims=rein.query_dims).train()
    assert not hasattr(model, "query_embed") and not hasattr(model, "query_feat")
    assert not any("query_embed" in name or "query_feat" in name for name in model.state_dict())
    assert model.querys2feat.in_features == 64
    outputs = model(pyramid(2, model.in_channels, 64, 64), queries=rein.queries())
    assert outputs["mask_cls"].shape == (2, 7, 5)  # number of queries = token_length
    model.loss(outputs, torch.randint(0, 4, (2, 64, 64)))["loss"].backward()
    for name in ("learnable_tokens_a", "learnable_tokens_b", "transform.weight", "merge.weight"):
        grad = rein.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_rein_queries_change_the_prediction() -> None:
    torch.manual_seed(0)
    model = tiny(query_dims=64).eval()
    features = pyramid(1, model.in_channels, 64, 64)
    queries = torch.randn(5, 64)
    a = model(features, queries=queries)["seg_logits"]
    b = model(features, queries=queries.expand(1, -1, -1))["seg_logits"]
    c = model(features, queries=queries * 2)["seg_logits"]
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_query_link_errors() -> None:
    with pytest.raises(UserError, match=r"256.*decoder.hidden_dim=64.*adapter.query_dims=64.*decoder.hidden_dim=256"):
        tiny(query_dims=256)
    linked = tiny(query_dims=64)
    features = pyramid(1, linked.in_channels, 64, 64)
    with pytest.raises(ValueError, match="got no queries"):
        linked(features)
    with pytest.raises(ValueError, match=r"\[m, 64\]"):
        linked(features, queries=torch.randn(5, 32))
    with pytest.raises(ValueError, match="without the adapter-query link"):
        tiny()(features, queries=torch.randn(5, 64))


def test_pipeline_with_rein_builds_linked_decoder() -> None:
    config = {
        "backbone": {"name": "eva02", "variant": "tiny"},
        "adapter": {"name": "rein", "token_length": 5, "query_dims": 64},
        "decoder": {"name": "mask2former", **TINY},
        "dataset": {"name": "synthetic", "size": 64},
    }
    model = vltk.build_model(config)
    assert model.decoder.links_queries and not hasattr(model.decoder, "query_embed")
    images, labels = torch.rand(1, 3, 64, 64), torch.randint(0, 19, (1, 64, 64))
    model.loss(images, labels)["loss"].backward()
    assert model.adapter.learnable_tokens_a.grad.abs().sum() > 0
    frozen = vltk.build_model({**config, "adapter": {"name": "frozen"}})
    assert not frozen.decoder.links_queries and frozen.decoder.query_embed.num_embeddings == 6
    assert torch.isfinite(frozen.loss(images, labels)["loss"])
    with pytest.raises(UserError, match="adapter.query_dims"):
        vltk.build_model({**config, "adapter": {"name": "rein", "query_dims": 256}})


# ------------------------------------------------------------------------------------------------ training


def test_a_few_steps_lower_the_loss_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    model = tiny().train()
    features = pyramid(2, model.in_channels, 64, 64)
    # Blocky labels (16x16 cells) with a strip of ignored pixels.
    cells = torch.randint(0, 4, (2, 4, 4), generator=torch.Generator().manual_seed(2))
    targets = cells.repeat_interleave(16, dim=1).repeat_interleave(16, dim=2)
    targets[:, :8] = 255
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(40):
        loss = model.loss(model(features), targets)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < 0.5 * losses[0]
    # The semantic inference path turns the memorised masks into the right labels.
    predicted = model.eval().predict(model(features), (64, 64)).argmax(1)
    valid = targets != 255
    assert (predicted[valid] == targets[valid]).float().mean() > 0.9


# ------------------------------------------------------------------------------------------------ options


def test_options_defaults_and_validation() -> None:
    options = Mask2FormerOptions()
    assert (options.hidden_dim, options.num_queries, options.num_heads) == (256, 100, 8)
    assert (options.enc_layers, options.enc_ffn, options.enc_points) == (6, 1024, 4)
    assert (options.dec_layers, options.dec_ffn) == (9, 2048)
    assert (options.num_points, options.oversample_ratio, options.importance_sample_ratio) == (12544, 3.0, 0.75)
    assert (options.class_weight, options.mask_weight, options.dice_weight, options.no_object_weight) == (
        2.0,
        5.0,
        5.0,
        0.1,
    )
    assert Mask2FormerOptions.model_validate(options.model_dump()) == options  # idempotent validation
    with pytest.raises(ValidationError, match="divisible by num_heads"):
        Mask2FormerOptions(hidden_dim=96, num_heads=5)
    with pytest.raises(ValidationError, match="divisible by 32"):
        Mask2FormerOptions(hidden_dim=48, num_heads=8)
    with pytest.raises(ValidationError):
        Mask2FormerOptions(importance_sample_ratio=1.5)
    with pytest.raises(ValidationError):
        Mask2FormerOptions(hiden_dim=64)
    for name, field in Mask2FormerOptions.model_fields.items():
        assert field.description, name


def test_missing_context_is_a_clear_error() -> None:
    with pytest.raises(UserError, match="decoder 'mask2former' needs num_classes"):
        build_mask2former(TINY, BuildContext(in_channels=[8] * 4))
    with pytest.raises(UserError, match="decoder 'mask2former' needs in_channels"):
        build_mask2former(TINY, BuildContext(num_classes=3))
    with pytest.raises(Mask2FormerConfigError, match="4 positive pyramid widths"):
        build_mask2former(TINY, BuildContext(in_channels=[8] * 3, num_classes=3))
    model = build_mask2former(
        TINY, BuildContext(embed_dim=24, num_classes=3, query_dims=None, text_dim=512, ignore_index=-1)
    )
    assert model.in_channels == [24] * 4 and model.ignore_index == -1


def test_options_module_does_not_import_torch() -> None:
    code = "import sys; import vltk_plugins.decoders.mask2former.options; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
