"""Mask2Former's ``ignore_mode`` and ``target_padding``: ignored pixels as background of every class mask with
zero-padded targets (mmseg/mmdet, the default) or excluded with edge-clamped targets (vltk's earlier rule),
checked on cases small enough to compute by hand, plus golden numbers of the earlier code for ``exclude``."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from vltk.context import BuildContext
from vltk_plugins.decoders.mask2former.criterion import (
    HungarianMatcher,
    Mask2FormerCriterion,
    resolve_target_padding,
    sample_targets,
    semantic_to_instances,
)
from vltk_plugins.decoders.mask2former.head import build_mask2former
from vltk_plugins.decoders.mask2former.options import Mask2FormerOptions

#: The four pixel centres of a 2x2 map as normalised (x, y), row-major: pixel i is point i.
CENTRES = torch.tensor([[[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]])
#: Top row class 0, bottom row ignored.
TOP_ROW = torch.tensor([[[0, 0], [255, 255]]])
#: Two queries with equal class scores: q0 covers exactly the labelled row, q1 is sure of every pixel.
MASKS = torch.tensor([[[2.0, 2.0], [-2.0, -2.0]], [[3.0, 3.0], [3.0, 3.0]]])
CLASSES = torch.zeros(2, 2)


def bce(logit: float, target: float) -> float:
    """Sigmoid binary cross-entropy, written as max(x, 0) - x t + log(1 + e^-|x|)."""
    return max(logit, 0.0) - logit * target + math.log1p(math.exp(-abs(logit)))


def dice(logits: list[float], targets: list[float], weights: list[float]) -> float:
    probabilities = [1.0 / (1.0 + math.exp(-x)) for x in logits]
    overlap = sum(w * p * t for p, t, w in zip(probabilities, targets, weights, strict=True))
    sizes = sum(w * p for p, w in zip(probabilities, weights, strict=True)) + sum(
        w * t for t, w in zip(targets, weights, strict=True)
    )
    return 1.0 - (2.0 * overlap + 1.0) / (sizes + 1.0)


def hand_cost(logits: list[float], targets: list[float], weights: list[float]) -> float:
    """Mask part of the matching cost (the class part is equal for both queries): 5 mean BCE + 5 dice."""
    mean_bce = sum(w * bce(x, t) for x, t, w in zip(logits, targets, weights, strict=True)) / len(logits)
    return 5.0 * mean_bce + 5.0 * dice(logits, targets, weights)


def centres_criterion(**options: object) -> Mask2FormerCriterion:
    criterion = Mask2FormerCriterion(num_classes=1, num_points=4, **options)
    criterion.matcher.sample_points = lambda device: CENTRES  # type: ignore[method-assign]
    criterion.sample_points = lambda logits: CENTRES.expand(logits.shape[0], -1, -1)  # type: ignore[method-assign]
    return criterion


# ------------------------------------------------------------------------------------------------ sampled targets


def test_targets_and_weights_of_each_mode_at_centres_boundaries_and_corners() -> None:
    (target,) = semantic_to_instances(torch.tensor([[[2, 255], [2, 255]]]), ignore_index=255)
    # labelled centre, ignored centre, labelled/ignored boundary, the image's top-left corner
    points = torch.tensor([[[0.25, 0.25], [0.75, 0.75], [0.5, 0.25], [0.0, 0.0]]])
    index = torch.tensor([0])
    gt, weight = sample_targets(target, index, points)  # the defaults: background, zeros
    torch.testing.assert_close(gt, torch.tensor([[1.0, 0.0, 0.5, 0.25]]))  # ignored = background; corner fades
    torch.testing.assert_close(weight, torch.ones(1, 4))
    gt, weight = sample_targets(target, index, points, ignore_mode="background", padding="border")
    torch.testing.assert_close(gt, torch.tensor([[1.0, 0.0, 0.5, 1.0]]))
    gt, weight = sample_targets(target, index, points, ignore_mode="exclude", padding="border")
    torch.testing.assert_close(gt, torch.tensor([[1.0, 0.0, 1.0, 1.0]]))  # labelled neighbours only
    torch.testing.assert_close(weight, torch.tensor([[1.0, 0.0, 0.5, 1.0]]))
    gt, weight = sample_targets(target, index, points, ignore_mode="exclude", padding="zeros")
    torch.testing.assert_close(gt, torch.tensor([[1.0, 0.0, 1.0, 1.0]]))
    torch.testing.assert_close(weight, torch.tensor([[1.0, 0.0, 0.5, 0.25]]))  # outside the image: unlabelled


def test_auto_padding_follows_the_mode_and_bad_values_fail() -> None:
    assert resolve_target_padding("background", "auto") == "zeros"
    assert resolve_target_padding("exclude", "auto") == "border"
    assert resolve_target_padding("exclude", "zeros") == "zeros"
    with pytest.raises(ValueError, match="ignore_mode"):
        resolve_target_padding("drop", "auto")
    with pytest.raises(ValueError, match="target_padding"):
        resolve_target_padding("background", "reflection")


# ------------------------------------------------------------------------------------------------ matching


@pytest.mark.parametrize(
    ("mode", "weights", "expected_query"),
    [("background", [1.0, 1.0, 1.0, 1.0], 0), ("exclude", [1.0, 1.0, 0.0, 0.0], 1)],
)
def test_the_hungarian_match_depends_on_the_mode(mode: str, weights: list[float], expected_query: int) -> None:
    """Background: q1's confident "class 0" on the ignored row costs it the match. Exclude: that row does not
    count, and q1 is the surer of the two on the labelled row."""
    (target,) = semantic_to_instances(TOP_ROW, 255)
    matcher = HungarianMatcher(num_points=4, ignore_mode=mode)
    matcher.sample_points = lambda device: CENTRES  # type: ignore[method-assign]
    truth = [1.0, 1.0, 0.0, 0.0]
    expected = torch.tensor([[hand_cost(MASKS[q].flatten().tolist(), truth, weights)] for q in range(2)])
    cost = matcher.cost_matrix(CLASSES, MASKS, target)
    torch.testing.assert_close(cost - cost.new_tensor(-2.0 * 0.5), expected)  # class cost -2 * p = -1 for both
    queries, matched = matcher.match(CLASSES, MASKS, target)
    assert queries.tolist() == [expected_query] and matched.tolist() == [0]


# ------------------------------------------------------------------------------------------------ losses


@pytest.mark.parametrize("mode", ["background", "exclude"])
def test_mask_and_dice_loss_on_a_target_with_ignored_pixels(mode: str) -> None:
    criterion = centres_criterion(ignore_mode=mode)
    losses = criterion.single(CLASSES[None], MASKS[None], semantic_to_instances(TOP_ROW, 255))
    query = 0 if mode == "background" else 1  # the match of the test above
    logits, truth = MASKS[query].flatten().tolist(), [1.0, 1.0, 0.0, 0.0]
    weights = [1.0] * 4 if mode == "background" else [1.0, 1.0, 0.0, 0.0]
    # BCE summed over points, divided by num_masks (1) x num_points (4) -- ignored points count as 0 in exclude
    expected_mask = 5.0 * sum(w * bce(x, t) for x, t, w in zip(logits, truth, weights, strict=True)) / 4
    expected_dice = 5.0 * dice(logits, truth, weights)
    assert losses["loss_mask"].item() == pytest.approx(expected_mask, rel=1e-5)
    assert losses["loss_dice"].item() == pytest.approx(expected_dice, rel=1e-5)
    if mode == "background":  # the numbers themselves, so the formula above cannot drift with the code
        assert losses["loss_mask"].item() == pytest.approx(5.0 * (2 * bce(2.0, 1.0) + 2 * bce(-2.0, 0.0)) / 4)


def test_background_mode_uses_every_pixel_of_the_masks() -> None:
    """Same predictions, same matched query: the ignored row adds loss in background mode only."""
    criterion = {mode: centres_criterion(ignore_mode=mode) for mode in ("background", "exclude")}
    masks = MASKS[:1][None]  # one query: the match is forced
    targets = semantic_to_instances(TOP_ROW, 255)
    loss = {mode: c.single(CLASSES[:1][None], masks, targets)["loss_mask"].item() for mode, c in criterion.items()}
    assert loss["background"] == pytest.approx(5.0 * (2 * bce(2.0, 1.0) + 2 * bce(-2.0, 0.0)) / 4)
    assert loss["exclude"] == pytest.approx(5.0 * 2 * bce(2.0, 1.0) / 4)


# ------------------------------------------------------------------------------------------------ earlier numbers


def golden_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A deterministic case with ignored pixels, classes touching the edges and points up to 0.02 from them."""
    labels = torch.tensor([[[1, 1, 255, 3], [1, 1, 255, 3], [0, 0, 255, 3], [0, 0, 0, 3]]])
    x = torch.tensor([0.02, 0.11, 0.37, 0.5, 0.63, 0.88, 0.99])
    points = torch.stack(torch.meshgrid(x, x, indexing="xy"), dim=-1).reshape(1, -1, 2)
    grid = torch.arange(5 * 16, dtype=torch.float32).view(5, 4, 4)
    mask_logits = (3 * torch.sin(0.7 * grid + 0.3) + torch.cos(1.3 * grid)).view(1, 5, 4, 4)
    class_logits = torch.cos(torch.arange(25, dtype=torch.float32) * 0.9).view(1, 5, 5)
    return labels, points, mask_logits, class_logits


#: What the criterion computed for :func:`golden_case` before ``ignore_mode`` existed (commit 31f337f).
EARLIER_COST = [
    6.080671787261963, 4.953814506530762, 7.325058460235596, 5.457610130310059, 8.19267463684082,
    7.164395332336426, 6.2431793212890625, 7.944002151489258, 4.933169364929199, 7.016881942749023,
    5.524829864501953, 6.69134521484375, 6.147018909454346, 5.156181335449219, 7.43156623840332,
]  # fmt: skip
EARLIER_LOSSES = {"loss_cls": 3.2128114700317383, "loss_mask": 3.1196694374084473, "loss_dice": 2.4663033485412598}


@pytest.mark.parametrize(("options", "same"), [({"ignore_mode": "exclude"}, True), ({}, False)])
def test_exclude_reproduces_the_earlier_numbers(options: dict[str, str], same: bool) -> None:
    """Equal to float32 rounding: the last bit depends on the thread count (reduction order), so not ``equal``."""
    labels, points, mask_logits, class_logits = golden_case()
    criterion = Mask2FormerCriterion(num_classes=4, num_points=points.shape[1], **options)
    criterion.matcher.sample_points = lambda device: points  # type: ignore[method-assign]
    criterion.sample_points = lambda logits: points.expand(logits.shape[0], -1, -1)  # type: ignore[method-assign]
    targets = semantic_to_instances(labels, 255)
    cost = criterion.matcher.cost_matrix(class_logits[0], mask_logits[0], targets[0]).flatten()
    losses = criterion.single(class_logits, mask_logits, targets)
    queries, matched = criterion.matcher.match(class_logits[0], mask_logits[0], targets[0])
    if same:
        torch.testing.assert_close(cost, torch.tensor(EARLIER_COST), rtol=1e-6, atol=1e-6)
        assert {name: value.item() for name, value in losses.items()} == pytest.approx(EARLIER_LOSSES, rel=1e-6)
        assert (queries.tolist(), matched.tolist()) == ([0, 1, 2], [1, 0, 2])
    else:  # the default (background, zero padding) is a different objective on this case
        assert not torch.allclose(cost, torch.tensor(EARLIER_COST))
        assert losses["loss_mask"].item() != pytest.approx(EARLIER_LOSSES["loss_mask"], rel=1e-3)


# ------------------------------------------------------------------------------------------------ options


def test_options_reach_the_criterion() -> None:
    options = Mask2FormerOptions()
    assert (options.ignore_mode, options.target_padding) == ("background", "auto")
    context = BuildContext(in_channels=[16, 24, 32, 40], num_classes=3)
    tiny = {"hidden_dim": 64, "num_heads": 4, "enc_layers": 1, "dec_layers": 1, "num_queries": 4}
    default = build_mask2former(Mask2FormerOptions(**tiny), context).criterion
    assert (default.ignore_mode, default.target_padding) == ("background", "zeros")
    assert (default.matcher.ignore_mode, default.matcher.target_padding) == ("background", "zeros")
    earlier = build_mask2former(Mask2FormerOptions(**tiny, ignore_mode="exclude"), context).criterion
    assert (earlier.ignore_mode, earlier.target_padding) == ("exclude", "border")
    mixed = build_mask2former(Mask2FormerOptions(**tiny, ignore_mode="exclude", target_padding="zeros"), context)
    assert mixed.criterion.matcher.target_padding == "zeros"
    with pytest.raises(ValidationError):
        Mask2FormerOptions(ignore_mode="drop")
    with pytest.raises(ValidationError):
        Mask2FormerOptions(target_padding="reflect")
