"""Mask2Former's set loss for semantic segmentation: targets, Hungarian matching, point-sampled mask losses.

Semantics follow mmdet's ``Mask2FormerHead.loss_by_feat`` with mmseg's semantic-segmentation targets:

- **Targets.** A label map ``[H, W]`` becomes one binary mask per class present in the image (mmseg's semantic
  Mask2Former convention), labelled with that class.
- **Matching** (per image, per decoder output, no gradient): on ``num_points`` uniformly random points shared by
  all queries and targets, cost = ``class_weight * -p(class)`` + ``mask_weight * mean sigmoid-BCE`` +
  ``dice_weight * (1 - naive dice, eps 1)``, solved by ``scipy.optimize.linear_sum_assignment``.
- **Losses.** Cross-entropy over all queries (unmatched ones target the extra "no object" class, weighted
  ``no_object_weight``; mean weighted by the class weights), times ``class_weight``. Mask losses on the matched
  pairs only, at ``num_points`` points per mask chosen by uncertainty (PointRend's importance sampling:
  ``oversample_ratio * num_points`` random candidates, the ``importance_sample_ratio`` fraction with the
  smallest ``|logit|`` kept, the rest uniform): sigmoid BCE summed and divided by ``num_masks * num_points``,
  naive dice (eps 1) summed and divided by ``num_masks``, where ``num_masks`` is the number of matched targets in
  the batch (at least 1, averaged over processes when distributed).

**Ignored pixels** (``ignore_index``), ``ignore_mode``:

- ``background`` (the default; mmseg's semantic targets, so Mask2Former and Rein as released): an ignored pixel is
  0 in every class mask, i.e. background for every class, which teaches every query "not here" on unlabelled
  pixels (and on the padding, which mmseg fills with 255). Every sample point weighs 1: mmdet's formulas.
- ``exclude``: ignored pixels carry no label. Every sample point gets a weight, the bilinear sample of the image's
  labelled-pixel map, so 1 inside labelled regions, 0 inside ignored ones, fractional at their boundary, and its
  target is the bilinear average of its *labelled* neighbours only. BCE terms are multiplied by the weight (the
  normaliser stays ``num_masks * num_points``, like mmseg's CE that counts ignored pixels with a loss of 0), dice
  sums become weighted sums, and the matching costs use the same weights. With no ignored pixels every weight is
  1 and everything reduces to mmdet's formulas.

**Target padding** (``target_padding``): points within half a pixel of the image edge read outside it. ``zeros``
pads the target masks with 0 as mmcv's ``point_sample`` (a pixel labelled c at the image corner gets a target of
0.25 there); ``border`` clamps to the edge. The default ``auto`` is ``zeros`` with ``background`` (mmdet) and
``border`` with ``exclude`` (vltk's earlier behaviour, reproduced exactly). Predictions are always zero-padded, as
in mmdet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torch.nn import functional as F

from vltk_kernels import ms_deform_attn


def grid_point_sample(inputs: Tensor, grid: Tensor, padding_mode: str = "zeros") -> Tensor:
    """:func:`point_sample` at ``grid_sample`` coordinates ``2·u - 1`` (``[-1, 1]``): for callers that convert once
    and sample more than one map at the same points.

    The points are laid out as one grid row ``[N, 1, P, 2]`` (not a column ``[N, P, 1, 2]``): the CPU kernel
    vectorises along rows, and the samples are the same to the bit.
    """
    return F.grid_sample(
        inputs, grid.unsqueeze(1).to(inputs.dtype), mode="bilinear", padding_mode=padding_mode, align_corners=False
    )[:, :, 0]


def point_sample(inputs: Tensor, points: Tensor, padding_mode: str = "zeros") -> Tensor:
    """Bilinear samples of ``inputs`` ``[N, C, H, W]`` at ``points`` ``[N, P, 2]`` (normalised ``(x, y)`` in
    [0, 1], ``align_corners=False``) -> ``[N, C, P]``."""
    return grid_point_sample(inputs, 2.0 * points - 1.0, padding_mode)


def shared_point_sample(maps: Tensor, points: Tensor) -> Tensor:
    """Bilinear samples of every map of ``maps`` ``[C, H, W]`` at the same ``points`` ``[P, 2]`` (normalised ``(x, y)``,
    ``align_corners=False``, zero padding, as :func:`point_sample`) -> ``[P, C]``, a point's samples contiguous.

    With the points shared, the maps are the channels of one sampling: a one-level, one-point deformable attention
    with weight 1 reads the four corner rows of the channel-last ``[H·W, C]`` maps per point (a gather of
    contiguous rows, where ``grid_sample`` computes every point's corners once per map and reads them strided).
    """
    channels, height, width = maps.shape
    # channel-last rows: free for the head's channels-last mask logits
    value = maps.permute(1, 2, 0).reshape(1, height * width, 1, channels)
    count = points.shape[0]
    locations = points.to(maps.dtype).view(1, count, 1, 1, 1, 2)
    shapes = torch.tensor([[height, width]], device=maps.device)
    weights = maps.new_ones(1, count, 1, 1, 1)
    return ms_deform_attn(value, shapes, shapes.new_zeros(1), locations, weights)[0]


#: Points per block of :func:`shared_point_mask_costs`: a block's few ``[block, Q]`` temporaries stay in a core's
#: L2 cache, where a whole ``[P, Q]`` pass (12544 x 100 floats) would stream through memory once per op.
COST_BLOCK_POINTS = 1024


def shared_point_mask_costs(point_logits: Tensor, targets: Tensor, eps: float = 1.0) -> tuple[Tensor, Tensor]:
    """The matcher's mask costs with every point weighing 1, from point logits ``[P, Q]`` (as
    :func:`shared_point_sample` returns them) and targets ``[n, P]``: :func:`batch_sigmoid_bce_cost` and
    :func:`batch_dice_cost` ``[Q, n]`` with ``weights=None``, reorganised for speed.

    One sigmoid serves both: ``softplus(x) = -log(1 - σ(x)) = x - log σ(x)``, each taken where its log's argument
    is at least 1/2 (so no precision is lost), is ``relu(x) - log max(σ, 1 - σ)``. The points are reduced in
    blocks of :data:`COST_BLOCK_POINTS` (sums down the points, contiguous along the queries; products
    ``targets @ block``), so every elementwise pass reads cached data.
    """
    num_points, num_queries = point_logits.shape
    accumulate = torch.float64 if point_logits.dtype == torch.float64 else torch.float32
    softplus_sums = point_logits.new_zeros(num_queries, dtype=accumulate)
    prob_sums = torch.zeros_like(softplus_sums)
    logit_products = point_logits.new_zeros(targets.shape[0], num_queries, dtype=accumulate)
    prob_products = torch.zeros_like(logit_products)
    for first in range(0, num_points, COST_BLOCK_POINTS):
        block = point_logits[first : first + COST_BLOCK_POINTS]
        block_targets = targets[:, first : first + COST_BLOCK_POINTS]
        probs = block.sigmoid()
        softplus_sums += block.clamp(min=0.0).sum(0)
        softplus_sums -= torch.maximum(probs, 1.0 - probs).log_().sum(0)
        prob_sums += probs.sum(0)
        logit_products.addmm_(block_targets, block)
        prob_products.addmm_(block_targets, probs)
    bce = (softplus_sums[:, None] - logit_products.t()) / num_points
    denominator = prob_sums[:, None] + targets.sum(-1)[None, :]
    return bce, 1.0 - (2.0 * prob_products.t() + eps) / (denominator + eps)


_SAME_SIZE_INTEGER = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


def uncertain_point_coords(
    mask_logits: Tensor, num_points: int, oversample_ratio: float, importance_sample_ratio: float
) -> Tensor:
    """PointRend's training-time point selection for masks ``[N, 1, h, w]`` -> coordinates ``[N, num_points, 2]``.

    Uncertainty is ``-|logit|`` at each of ``int(num_points * oversample_ratio)`` uniform candidates; the first
    ``int(importance_sample_ratio * num_points)`` returned points are the most uncertain candidates (in
    decreasing uncertainty), the rest are fresh uniform points (coverage, so confident errors still get loss).
    """
    count = mask_logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    # The candidates drawn in grid coordinates: uniform_(-1, 1) makes exactly 2·torch.rand - 1 (the same draws,
    # and 2u - 1 is exact for u = k·2⁻²⁴), without two passes over all of them; (g + 1) / 2 is exact back.
    candidates = torch.empty(count, num_sampled, 2, device=mask_logits.device).uniform_(-1.0, 1.0)
    magnitude = grid_point_sample(mask_logits, candidates)[:, 0].abs_()
    # The most uncertain are the smallest |logit|s. A non-negative float orders as its bits read as an integer, and
    # topk compares integers without its floating-point NaN checks (1.35x faster on a CPU), so the key is the
    # negated bits (a NaN logit, above +inf, counts as certain). Unsorted: the loss sums over points, so their
    # order only moves rounding, and CPU topk is 2x faster unsorted.
    uncertainty = magnitude.view(_SAME_SIZE_INTEGER[magnitude.dtype]).neg_()
    num_uncertain = int(importance_sample_ratio * num_points)
    index = uncertainty.topk(num_uncertain, dim=1, sorted=False).indices
    chosen = candidates.gather(1, index.unsqueeze(-1).expand(-1, -1, 2)).add_(1.0).div_(2.0)
    num_random = num_points - num_uncertain
    if num_random > 0:
        chosen = torch.cat([chosen, torch.rand(count, num_random, 2, device=mask_logits.device)], dim=1)
    return chosen


@dataclass
class SemanticTargets:
    """One image's targets: ``labels`` ``[n]`` (classes present), ``masks`` ``[n, H, W]`` float 0/1 (0 at ignored
    pixels) and ``valid`` ``[H, W]`` float (1 where labelled)."""

    labels: Tensor
    masks: Tensor
    valid: Tensor


def semantic_to_instances(targets: Tensor, ignore_index: int) -> list[SemanticTargets]:
    """Label maps ``[B, H, W]`` -> per image one binary mask per class present (sorted by class id)."""
    result = []
    for target in targets:
        valid = target != ignore_index
        labels = torch.unique(target[valid])
        masks = (target.unsqueeze(0) == labels.view(-1, 1, 1)).float()
        result.append(SemanticTargets(labels=labels, masks=masks, valid=valid.float()))
    return result


#: What ignored pixels mean to the mask terms: background of every class mask (mmseg) or no label at all.
IGNORE_MODES: tuple[str, ...] = ("background", "exclude")


def resolve_target_padding(ignore_mode: str, target_padding: str) -> str:
    """``grid_sample`` padding of the target masks: ``auto`` is mmdet's ``zeros`` with ``background`` and vltk's
    earlier ``border`` with ``exclude``."""
    if ignore_mode not in IGNORE_MODES:
        raise ValueError(f"ignore_mode must be one of {IGNORE_MODES}, got {ignore_mode!r}")
    if target_padding == "auto":
        return "zeros" if ignore_mode == "background" else "border"
    if target_padding not in ("zeros", "border"):
        raise ValueError(f"target_padding must be 'auto', 'zeros' or 'border', got {target_padding!r}")
    return target_padding


def sample_targets(
    target: SemanticTargets,
    index: Tensor | None,
    points: Tensor,
    *,
    ignore_mode: str = "background",
    padding: str = "zeros",
) -> tuple[Tensor, Tensor]:
    """Targets and weights ``[n, P]`` of the masks ``target.masks[index]`` (``None``: all of them, in order) at
    ``points`` ``[n or 1, P, 2]``.

    ``background``: target = bilinear sample of the 0/1 mask (ignored pixels are 0 in it), weight 1. ``exclude``:
    weight = bilinear sample of the labelled-pixel map; target = the mask's sample divided by that weight, i.e.
    the average over labelled neighbours only. ``padding`` is the ``grid_sample`` padding of both samples.
    """
    return grid_sample_targets(target, index, 2.0 * points - 1.0, ignore_mode=ignore_mode, padding=padding)


def grid_sample_targets(
    target: SemanticTargets,
    index: Tensor | None,
    grid: Tensor,
    *,
    ignore_mode: str = "background",
    padding: str = "zeros",
) -> tuple[Tensor, Tensor]:
    """:func:`sample_targets` at ``grid_sample`` coordinates ``2·u - 1``."""
    masks = target.masks if index is None else target.masks[index]
    count = masks.shape[0]
    masks = masks.unsqueeze(0) if grid.shape[0] == 1 else masks.unsqueeze(1)
    sampled = grid_point_sample(masks, grid, padding_mode=padding)  # [1, n, P] or [n, 1, P]
    sampled = sampled[0] if grid.shape[0] == 1 else sampled[:, 0]
    if ignore_mode == "background":
        return sampled, torch.ones_like(sampled)
    weight = grid_point_sample(target.valid[None, None], grid.reshape(1, -1, 2), padding_mode=padding)[0, 0]
    weight = weight.view(grid.shape[0], -1).expand(count, -1)
    sampled = torch.where(weight > 0, sampled / weight.clamp_min(1e-6), torch.zeros_like(sampled))
    return sampled.clamp(0.0, 1.0), weight


def batch_sigmoid_bce_cost(logits: Tensor, targets: Tensor, weights: Tensor | None) -> Tensor:
    """Mean weighted sigmoid BCE between every prediction ``[Q, P]`` and every target ``[n, P]`` -> ``[Q, n]``.

    ``weights`` ``[n, P]``, or None for all ones. BCE against target 1 is ``softplus(-x)``, against 0
    ``softplus(x)``, and ``softplus(-x) = softplus(x) - x``, so ``Σ_p t·softplus(-x) + (1 - t)·softplus(x)`` is
    ``Σ_p w·softplus(x) - Σ_p w·t·x``: one softplus and one GEMM fewer than the two-product form (mmdet's).
    """
    negative = F.softplus(logits)  # BCE against target 0: -log(1 - σ(x))
    if weights is None:
        cost = negative.sum(-1, keepdim=True) - logits @ targets.T
    else:
        cost = negative @ weights.T - logits @ (targets * weights).T
    return cost / logits.shape[1]


def batch_dice_cost(logits: Tensor, targets: Tensor, weights: Tensor | None, eps: float = 1.0) -> Tensor:
    """Naive dice loss ``1 - (2 Σ w p t + eps) / (Σ w p + Σ w t + eps)`` for every pair -> ``[Q, n]`` (``weights``
    None: all ones, so ``Σ w p`` is a row sum instead of a GEMM)."""
    probs = logits.sigmoid()
    weighted_targets = targets if weights is None else targets * weights
    numerator = 2.0 * (probs @ weighted_targets.T)  # the same to the bit as (2p) @ t, without a [Q, P] product
    weighted_probs = probs.sum(-1, keepdim=True) if weights is None else probs @ weights.T
    denominator = weighted_probs + weighted_targets.sum(-1)[None, :]
    return 1.0 - (numerator + eps) / (denominator + eps)


def sigmoid_bce_loss(logits: Tensor, targets: Tensor, weights: Tensor | None, num_masks: float) -> Tensor:
    """Σ w · BCE(σ(logit), t) / (num_masks · P) for matched masks ``[n, P]`` (``weights`` None: all ones)."""
    if weights is None:
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / (num_masks * logits.shape[1])
    per_point = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (per_point * weights).sum() / (num_masks * logits.shape[1])


def dice_loss(logits: Tensor, targets: Tensor, weights: Tensor | None, num_masks: float, eps: float = 1.0) -> Tensor:
    """Naive dice ``Σ_masks [1 - (2 Σ w p t + eps) / (Σ w p + Σ w t + eps)] / num_masks`` (``weights`` None: all
    ones)."""
    probs = logits.sigmoid()
    if weights is None:
        numerator = 2.0 * (probs * targets).sum(-1)
        denominator = probs.sum(-1) + targets.sum(-1)
    else:
        numerator = 2.0 * (probs * targets * weights).sum(-1)
        denominator = (probs * weights).sum(-1) + (targets * weights).sum(-1)
    return (1.0 - (numerator + eps) / (denominator + eps)).sum() / num_masks


class HungarianMatcher:
    """One-to-one assignment of queries to an image's target masks (mmdet's ``HungarianAssigner`` with
    ``ClassificationCost`` + sigmoid ``CrossEntropyLossCost`` + ``DiceCost`` on shared random points)."""

    def __init__(
        self,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        num_points: int = 12544,
        *,
        ignore_mode: str = "background",
        target_padding: str = "auto",
    ) -> None:
        self.class_weight = class_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight
        self.num_points = num_points
        self.ignore_mode = ignore_mode
        self.target_padding = resolve_target_padding(ignore_mode, target_padding)

    def sample_points(self, device: torch.device) -> Tensor:
        """``[1, num_points, 2]`` uniform points shared by every query and target of one image."""
        return torch.rand(1, self.num_points, 2, device=device)

    @torch.no_grad()
    def cost_matrix(self, class_logits: Tensor, mask_logits: Tensor, target: SemanticTargets) -> Tensor:
        """Cost ``[Q, n]`` of assigning query q (``class_logits`` ``[Q, K+1]``, ``mask_logits`` ``[Q, h, w]``) to
        target j."""
        points = self.sample_points(mask_logits.device)
        pred = shared_point_sample(mask_logits.float(), points[0])  # [P, Q]
        gt, weight = sample_targets(
            target, None, points, ignore_mode=self.ignore_mode, padding=self.target_padding
        )  # [n, P]
        if self.ignore_mode == "background":  # every weight 1
            cost_mask, cost_dice = shared_point_mask_costs(pred, gt)
        else:
            cost_mask, cost_dice = batch_sigmoid_bce_cost(pred.t(), gt, weight), batch_dice_cost(pred.t(), gt, weight)
        cost_class = -class_logits.float().softmax(-1)[:, target.labels]
        return self.class_weight * cost_class + self.mask_weight * cost_mask + self.dice_weight * cost_dice

    @torch.no_grad()
    def match(self, class_logits: Tensor, mask_logits: Tensor, target: SemanticTargets) -> tuple[Tensor, Tensor]:
        """``(query_index, target_index)`` int64 tensors, sorted by query index; empty when there is no target."""
        device = class_logits.device
        if target.labels.numel() == 0:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            return empty, empty
        cost = self.cost_matrix(class_logits, mask_logits, target)
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        return torch.as_tensor(rows, dtype=torch.long, device=device), torch.as_tensor(
            cols, dtype=torch.long, device=device
        )


class Mask2FormerCriterion:
    """Loss of one set of predictions (one decoder output) and of the deep-supervision list of them."""

    def __init__(
        self,
        num_classes: int,
        *,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        no_object_weight: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        ignore_index: int = 255,
        ignore_mode: str = "background",
        target_padding: str = "auto",
    ) -> None:
        self.num_classes = num_classes
        self.class_weight = class_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight
        self.no_object_weight = no_object_weight
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.ignore_index = ignore_index
        self.matcher = HungarianMatcher(
            class_weight, mask_weight, dice_weight, num_points, ignore_mode=ignore_mode, target_padding=target_padding
        )
        self.ignore_mode = self.matcher.ignore_mode
        self.target_padding = self.matcher.target_padding

    def sample_points(self, mask_logits: Tensor) -> Tensor:
        """Loss points ``[n, num_points, 2]`` for matched mask logits ``[n, 1, h, w]`` (importance sampling)."""
        return uncertain_point_coords(mask_logits, self.num_points, self.oversample_ratio, self.importance_sample_ratio)

    def class_weights(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        """``[1] * K + [no_object_weight]``: the cross-entropy class weights."""
        weights = torch.ones(self.num_classes + 1, device=device, dtype=dtype)
        weights[-1] = self.no_object_weight
        return weights

    def single(
        self, class_logits: Tensor, mask_logits: Tensor, targets: Sequence[SemanticTargets]
    ) -> dict[str, Tensor]:
        """``loss_cls``, ``loss_mask``, ``loss_dice`` (weighted) for ``class_logits`` ``[B, Q, K+1]`` and
        ``mask_logits`` ``[B, Q, h, w]``."""
        batch, num_queries = class_logits.shape[:2]
        matches = [self.matcher.match(class_logits[b], mask_logits[b], targets[b]) for b in range(batch)]

        labels = torch.full((batch, num_queries), self.num_classes, dtype=torch.long, device=class_logits.device)
        for b, (query_index, target_index) in enumerate(matches):
            labels[b, query_index] = targets[b].labels[target_index]
        weights = self.class_weights(class_logits.device, class_logits.dtype)
        loss_cls = F.cross_entropy(class_logits.flatten(0, 1), labels.flatten(), weight=weights)

        num_masks = float(sum(int(q.numel()) for q, _ in matches))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            total = torch.tensor([num_masks], device=class_logits.device)
            torch.distributed.all_reduce(total)
            num_masks = total.item() / torch.distributed.get_world_size()
        num_masks = max(num_masks, 1.0)

        if not any(q.numel() for q, _ in matches):
            zero = mask_logits.sum() * 0.0  # keeps the graph (and DDP) happy with no target in the batch
            return {"loss_cls": self.class_weight * loss_cls, "loss_mask": zero, "loss_dice": zero}

        pred_points, target_points, point_weights = [], [], []
        for b, (query_index, target_index) in enumerate(matches):
            if query_index.numel() == 0:
                continue
            masks = mask_logits[b, query_index].unsqueeze(1)  # [n, 1, h, w]
            with torch.no_grad():
                grid = 2.0 * self.sample_points(masks.detach().float()) - 1.0  # converted once for both samples
                gt, weight = grid_sample_targets(
                    targets[b], target_index, grid, ignore_mode=self.ignore_mode, padding=self.target_padding
                )
            pred_points.append(grid_point_sample(masks, grid)[:, 0])
            target_points.append(gt)
            point_weights.append(weight)
        pred = torch.cat(pred_points).float()
        gt = torch.cat(target_points)
        weight = None if self.ignore_mode == "background" else torch.cat(point_weights)  # all ones: skipped
        return {
            "loss_cls": self.class_weight * loss_cls,
            "loss_mask": self.mask_weight * sigmoid_bce_loss(pred, gt, weight, num_masks),
            "loss_dice": self.dice_weight * dice_loss(pred, gt, weight, num_masks),
        }

    def __call__(
        self, all_class_logits: Sequence[Tensor], all_mask_logits: Sequence[Tensor], labels: Tensor
    ) -> dict[str, Tensor]:
        """Deep supervision: the last output's terms as ``loss_cls``/``loss_mask``/``loss_dice``, earlier ones as
        ``d{i}.loss_*`` (``d0`` is the prediction before the first decoder layer), ``loss`` their sum."""
        targets = semantic_to_instances(labels, self.ignore_index)
        present = torch.cat([t.labels for t in targets])
        if present.numel() and (int(present.min()) < 0 or int(present.max()) >= self.num_classes):
            raise ValueError(
                f"labels must be class ids in [0, {self.num_classes}) or ignore_index={self.ignore_index}; found "
                f"{sorted(set(present.tolist()) - set(range(self.num_classes)))}"
            )
        losses: dict[str, Tensor] = {}
        last = len(all_class_logits) - 1
        for i, (class_logits, mask_logits) in enumerate(zip(all_class_logits, all_mask_logits, strict=True)):
            prefix = "" if i == last else f"d{i}."
            for name, value in self.single(class_logits, mask_logits, targets).items():
                losses[prefix + name] = value
        losses["loss"] = torch.stack(list(losses.values())).sum()
        return losses


__all__ = [
    "IGNORE_MODES",
    "HungarianMatcher",
    "Mask2FormerCriterion",
    "SemanticTargets",
    "batch_dice_cost",
    "batch_sigmoid_bce_cost",
    "dice_loss",
    "grid_point_sample",
    "grid_sample_targets",
    "point_sample",
    "resolve_target_padding",
    "semantic_to_instances",
    "sample_targets",
    "shared_point_mask_costs",
    "shared_point_sample",
    "sigmoid_bce_loss",
    "uncertain_point_coords",
]
