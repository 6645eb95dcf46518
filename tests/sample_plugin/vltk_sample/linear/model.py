"""The ``linear`` decoder: per-pixel linear classification of one pyramid level, upsampled to the labels.

This is the head linear-probe evaluations put on a frozen backbone (DINOv2's "linear" segmentation protocol:
BatchNorm and a 1x1 conv on the patch features, bilinear upsampling, cross-entropy). Having no capacity of its
own, it measures how linearly separable the backbone's features are, rather than how much a decoder can fix.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from vltk.api import BuildContext, Decoder, UserError, logits_at_label_size
from vltk_sample.linear.options import LinearHeadOptions


class LinearHead(Decoder):
    """Optional BatchNorm + 1x1 conv on pyramid level ``level``; ``seg_logits`` come at that level's stride."""

    def __init__(
        self, in_channels: int, num_classes: int, *, level: int, batch_norm: bool = True, ignore_index: int = 255
    ) -> None:
        super().__init__()
        self.level = level
        self.ignore_index = ignore_index
        self.norm = nn.BatchNorm2d(in_channels) if batch_norm else nn.Identity()
        self.classifier = nn.Conv2d(in_channels, num_classes, kernel_size=1)
        # small initial logits: the first loss is close to log(num_classes), as in the linear-probe heads
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(
        self, features: list[Tensor], queries: Tensor | None = None, text_embeddings: Tensor | None = None
    ) -> dict[str, Tensor]:
        """``{"seg_logits": [B, K, h, w]}`` from level ``level``; queries and text embeddings are not used."""
        return {"seg_logits": self.classifier(self.norm(features[self.level]))}

    def loss(self, outputs: dict[str, Tensor], targets: Tensor) -> dict[str, Tensor]:
        """Cross-entropy at the label size, averaged over labelled pixels (0, never NaN, when none is labelled)."""
        logits, labels = logits_at_label_size(outputs["seg_logits"], targets)
        per_pixel = F.cross_entropy(logits, labels, ignore_index=self.ignore_index, reduction="none")
        labelled = (labels != self.ignore_index).sum().clamp(min=1)
        loss = per_pixel.sum() / labelled.to(per_pixel.dtype)
        return {"loss": loss, "loss_ce": loss}


def build_linear_head(options: LinearHeadOptions, context: BuildContext) -> LinearHead:
    """Factory registered as decoder ``linear``: ``options`` come validated, the sizes from the build context."""
    component = "decoder 'linear'"
    context.require("in_channels", "num_classes", component=component)
    if options.stride not in context.strides:
        raise UserError(
            f"{component} has no pyramid level at stride {options.stride} (levels: {list(context.strides)}); "
            f"set decoder.stride to one of them"
        )
    level = context.strides.index(options.stride)
    return LinearHead(
        context.in_channels[level],
        int(context.num_classes),
        level=level,
        batch_norm=options.batch_norm,
        ignore_index=context.ignore_index,
    )


__all__ = ["LinearHead", "build_linear_head"]
