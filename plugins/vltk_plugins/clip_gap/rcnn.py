"""The ``clip-faster-rcnn`` decoder: CLIP the Gap's C4 Faster R-CNN rebuilt from torchvision parts.

detectron2 (which the released code needs, at 0.6, not on PyPI) is replaced by torchvision's
``RegionProposalNetwork``, ``RoIHeads`` sampling/box coding/post-processing and ``roi_align``:

1. RPN on the stage-a map (stride 16; 15 anchors per location, detectron2's C4 defaults, pre-NMS top-n
   12000/6000 and smooth-L1 beta 0 set explicitly — torchvision's defaults are 2000/1000 and 1/9).
2. RoIAlign **aligned** (detectron2's ROIAlignV2), 14x14, scale 1/16 -> ``[R, C_a, 14, 14]``. torchvision's
   ``MultiScaleRoIAlign`` has no ``aligned`` switch, hence a direct ``roi_align`` call.
3. The backbone's ``stage_b`` (CLIP layer4) -> ``[R, C_b, 7, 7]``, then two branches:
   (a) ``pool`` (CLIP's attention pool) -> ``F_r [R, D]`` -> ``gamma * cos(F_r, Q_k)`` with the prompter's class
   text embeddings Q ``[K, D]`` (gamma = 100, fixed), and a **constant-zero background logit at index 0**
   (torchvision's background index; the released code appends it last, detectron2's convention) -> ``[R, K+1]``;
   (b) spatial mean ``[R, C_b]`` -> ``Linear(C_b, 4 (K+1))`` class-specific deltas (torchvision layout, a slot
   for the background), box weights (10, 10, 5, 5).
4. Losses: RPN objectness BCE + RPN box smooth-L1, RoI cross-entropy on the text logits (the paper's
   L_clip-t) + box smooth-L1, all weight 1; the total is ``"loss"``.

The decoder owns no backbone weights: ``stage_b`` and ``pool`` are the backbone's and are passed in at call time,
so they appear once in the model's state dict and train with the backbone's ``trainable`` setting.
Labels in and out are 0-based class indices (the decoder shifts by one for torchvision internally).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import roi_align

from vltk.api import BuildContext, DetectionDecoder, UserError, coerce_options
from vltk_plugins.clip_gap.options import ClipFasterRCNNOptions


class _RPN(RegionProposalNetwork):
    """torchvision's RPN with the smooth-L1 beta as a setting (detectron2 uses 0, i.e. L1)."""

    def __init__(self, *args: Any, smooth_l1_beta: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.smooth_l1_beta = float(smooth_l1_beta)

    def compute_loss(
        self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: list[Tensor], regression_targets: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        positive, negative = self.fg_bg_sampler(labels)
        positive_index = torch.where(torch.cat(positive, dim=0))[0]
        negative_index = torch.where(torch.cat(negative, dim=0))[0]
        sampled = torch.cat([positive_index, negative_index], dim=0)
        labels_all = torch.cat(labels, dim=0)
        targets = torch.cat(regression_targets, dim=0)
        box_loss = F.smooth_l1_loss(
            pred_bbox_deltas[positive_index], targets[positive_index], beta=self.smooth_l1_beta, reduction="sum"
        ) / max(sampled.numel(), 1)
        objectness_loss = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], labels_all[sampled])
        return objectness_loss, box_loss


class TextClassifier(nn.Module):
    """``gamma * cos(F_r, Q_k)`` for the K classes, background logit prepended at index 0.

    ``background="zero"``: a constant 0 (no parameter). ``"learned"``: cosine with a learnable embedding.
    """

    def __init__(self, text_dim: int, logit_scale: float = 100.0, background: str = "zero") -> None:
        super().__init__()
        self.logit_scale = float(logit_scale)
        self.background = background
        self.background_embedding = nn.Parameter(torch.randn(text_dim) * 0.02) if background == "learned" else None

    def forward(self, region_embeddings: Tensor, text_embeddings: Tensor) -> Tensor:
        regions = F.normalize(region_embeddings.float(), dim=-1)
        texts = F.normalize(text_embeddings.float(), dim=-1)
        logits = self.logit_scale * regions @ texts.t()
        if self.background_embedding is None:
            background = logits.new_zeros(logits.shape[0], 1)
        else:
            background = self.logit_scale * regions @ F.normalize(self.background_embedding.float(), dim=0)[:, None]
        return torch.cat([background, logits], dim=1)


class ClipFasterRCNN(DetectionDecoder):
    """RPN + text-classified RoI head over a split backbone (``stage_b``, ``pool`` given to :meth:`forward`)."""

    def __init__(
        self, options: ClipFasterRCNNOptions, *, num_classes: int, in_channels: int, box_channels: int, text_dim: int
    ) -> None:
        super().__init__()
        self.options = options
        self.num_classes = int(num_classes)
        self.stride = 16
        o = options
        num_anchors = len(o.anchor_sizes) * len(o.aspect_ratios)
        anchors = AnchorGenerator((tuple(o.anchor_sizes),), (tuple(o.aspect_ratios),))
        self.rpn = _RPN(
            anchors,
            RPNHead(in_channels, num_anchors),
            o.rpn_fg_iou,
            o.rpn_bg_iou,
            o.rpn_batch_size_per_image,
            o.rpn_positive_fraction,
            {"training": o.rpn_pre_nms_top_n_train, "testing": o.rpn_pre_nms_top_n_test},
            {"training": o.rpn_post_nms_top_n_train, "testing": o.rpn_post_nms_top_n_test},
            o.rpn_nms_thresh,
            smooth_l1_beta=o.rpn_smooth_l1_beta,
        )
        # Only the sampling, box coding and post-processing of RoIHeads are used; pooling and the heads are ours.
        self.roi_heads = RoIHeads(
            None,
            None,
            None,
            o.box_fg_iou,
            o.box_bg_iou,
            o.box_batch_size_per_image,
            o.box_positive_fraction,
            tuple(o.bbox_reg_weights),
            o.score_thresh,
            o.nms_thresh,
            o.detections_per_img,
        )
        self.classifier = TextClassifier(text_dim, o.logit_scale, o.background)
        box_outputs = 4 if o.class_agnostic_box else 4 * (self.num_classes + 1)
        self.bbox_pred = nn.Linear(box_channels, box_outputs)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)  # detectron2's FastRCNNOutputLayers init
        nn.init.zeros_(self.bbox_pred.bias)

    # ------------------------------------------------------------------------------------------------ pieces
    def roi_features(self, features: Tensor, proposals: Sequence[Tensor]) -> Tensor:
        """RoIAlign (aligned) of every proposal: ``[R, C_a, roi_size, roi_size]``."""
        o = self.options
        return roi_align(
            features,
            [boxes.to(features.dtype) for boxes in proposals],
            output_size=(o.roi_size, o.roi_size),
            spatial_scale=1.0 / self.stride,
            sampling_ratio=o.sampling_ratio,
            aligned=o.aligned,
        )

    def box_head(self, roi_features: Tensor, backbone: Any, text_embeddings: Tensor) -> tuple[Tensor, Tensor]:
        """``(class logits [R, K+1], box deltas [R, 4(K+1)])`` from pooled RoI features."""
        x = backbone.stage_b(roi_features)
        logits = self.classifier(backbone.pool(x), text_embeddings)
        deltas = self.bbox_pred(x.mean(dim=(2, 3)))
        if self.options.class_agnostic_box:
            deltas = deltas.repeat(1, self.num_classes + 1)
        return logits, deltas

    def _box_loss(
        self, logits: Tensor, deltas: Tensor, labels: list[Tensor], targets: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """torchvision's fastrcnn_loss with the smooth-L1 beta as a setting (normalised by the sampled RoIs)."""
        labels_all = torch.cat(labels, dim=0)
        targets_all = torch.cat(targets, dim=0)
        classification = F.cross_entropy(logits, labels_all)
        positive = torch.where(labels_all > 0)[0]
        per_class = deltas.reshape(deltas.shape[0], -1, 4)
        box = F.smooth_l1_loss(
            per_class[positive, labels_all[positive]],
            targets_all[positive],
            beta=self.options.box_smooth_l1_beta,
            reduction="sum",
        ) / max(labels_all.numel(), 1)
        return classification, box

    # ------------------------------------------------------------------------------------------------ forward
    def forward(
        self,
        features: Tensor,
        image_sizes: Sequence[tuple[int, int]],
        *,
        backbone: Any,
        text_embeddings: Tensor,
        targets: Sequence[dict[str, Tensor]] | None = None,
        padded_size: tuple[int, int] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Detections (eval) or losses (training) from the stage-a map ``[B, C_a, H/16, W/16]``.

        ``image_sizes``: the unpadded ``(h, w)`` of every image; ``padded_size``: the batch tensor's size (defaults
        to 16x the feature size). ``targets`` (training): per image ``boxes [N, 4]`` and 0-based ``labels [N]``.
        Returns ``(detections, losses)``: detections have ``boxes``, ``scores`` and 0-based ``labels``.
        """
        if text_embeddings is None or text_embeddings.ndim != 2 or text_embeddings.shape[0] != self.num_classes:
            shape = None if text_embeddings is None else tuple(text_embeddings.shape)
            raise UserError(
                f"clip-faster-rcnn needs class text embeddings [K={self.num_classes}, D] from a prompter "
                f"(e.g. clip-template), got {shape}"
            )
        if padded_size is None:
            padded_size = (features.shape[-2] * self.stride, features.shape[-1] * self.stride)
        dummy = features.new_empty(features.shape[0], 0, *padded_size)  # ImageList only needs sizes here
        images = ImageList(dummy, [tuple(int(v) for v in size) for size in image_sizes])
        shifted = None
        if self.training:
            if targets is None:
                raise ValueError("clip-faster-rcnn: targets are required in training mode")
            shifted = [{"boxes": t["boxes"].to(features.dtype), "labels": t["labels"].long() + 1} for t in targets]
        proposals, rpn_losses = self.rpn(images, {"0": features}, shifted)
        heads = self.roi_heads
        if self.training:
            proposals, _, labels, regression_targets = heads.select_training_samples(proposals, shifted)
            logits, deltas = self.box_head(self.roi_features(features, proposals), backbone, text_embeddings)
            loss_classifier, loss_box_reg = self._box_loss(logits, deltas, labels, regression_targets)
            losses = {**rpn_losses, "loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
            losses["loss"] = sum(losses.values())
            return [], losses
        logits, deltas = self.box_head(self.roi_features(features, proposals), backbone, text_embeddings)
        boxes, scores, labels = heads.postprocess_detections(logits, deltas, proposals, images.image_sizes)
        detections = [
            {"boxes": b, "scores": s, "labels": label - 1} for b, s, label in zip(boxes, scores, labels, strict=True)
        ]
        return detections, {}


def build_clip_faster_rcnn(
    options: ClipFasterRCNNOptions | dict[str, Any] | None, context: BuildContext
) -> ClipFasterRCNN:
    """Factory of the ``clip-faster-rcnn`` decoder: ``num_classes``, ``text_dim`` and the split facts
    ``channels_a``/``channels_b``/``stride_a`` (of a backbone split into stage_a/stage_b/pool) from the context.
    The pipeline has already checked that this is a detection run on a split backbone."""
    options = coerce_options(options, ClipFasterRCNNOptions, "clip-faster-rcnn")
    context.require(
        "num_classes",
        "channels_a",
        "channels_b",
        "text_dim",
        component="decoder 'clip-faster-rcnn'",
        hint="it needs task=detection and a backbone split into stage_a/stage_b/pool (e.g. clip-resnet)",
    )
    if (context.stride_a or 16) != 16:
        raise UserError("clip-faster-rcnn expects a stage-a stride of 16 (the C4 layout)")
    return ClipFasterRCNN(
        options,
        num_classes=context.num_classes,
        in_channels=context.channels_a,
        box_channels=context.channels_b,
        text_dim=context.text_dim,
    )


__all__ = ["ClipFasterRCNN", "TextClassifier", "build_clip_faster_rcnn"]
