"""Semantic FPN decoder (Kirillov et al., 2019) with mmsegmentation's ``FPN`` neck + ``FPNHead`` semantics.

This is the "SemFPN" head of Rein's Table 9 and the decoder of DenseCLIP's segmentation experiments. Both used
mmseg, so the layers, initialisation, resizing modes and loss reduction follow mmseg exactly; checkpoints'
numbers of parameters match (the FPNHead alone is 1,626,259 parameters with 19 classes and head width 128: the
paper's "1.63M"; the neck adds 3,409,920 for four 1024-channel inputs).

Neck: lateral 1x1 convs ``in_channels[i] -> channels`` (bias, no norm), a top-down pathway (nearest resize of the
coarser lateral to the finer one's size, added), then a 3x3 conv per level. Head: for the level with stride ``s``,
``max(1, log2(s / 4))`` blocks of 3x3 conv (no bias) + norm + ReLU, each block but level 0's followed by a x2
bilinear upsample; the four maps are summed (resized to level 0's size when odd sizes made them differ), then
Dropout2d and a 1x1 classifier give logits at stride 4.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from vltk.api import BuildContext, Decoder, UserError, coerce_options, logits_at_label_size
from vltk_plugins.decoders.fpn.options import GN_GROUPS, FPNOptions

DEFAULT_FEATURE_STRIDES: tuple[int, ...] = (4, 8, 16, 32)


class FPNConfigError(UserError, ValueError):
    """A wrong ``fpn`` configuration or context: a ``ValueError`` for Python callers, a clean CLI line for users."""


def _norm_layer(norm: str, num_channels: int) -> nn.Module:
    """BatchNorm / GroupNorm(32). ``syncbn`` builds BatchNorm2d too and the decoder says ``sync_bn``.

    vltk's trainer turns the BatchNorm layers of a decoder with ``sync_bn`` into ``nn.SyncBatchNorm`` when it
    trains on several CUDA ranks (``nn.SyncBatchNorm.convert_sync_batchnorm``); a single process has the whole
    batch, so a recipe written for SyncBN works there unchanged.
    """
    if norm in ("bn", "syncbn"):
        return nn.BatchNorm2d(num_channels)
    if norm == "gn":
        if num_channels % GN_GROUPS:
            raise FPNConfigError(f"norm='gn' needs channels divisible by {GN_GROUPS}, got {num_channels}")
        return nn.GroupNorm(GN_GROUPS, num_channels)
    raise FPNConfigError(f"unknown norm {norm!r}: expected 'bn', 'gn' or 'syncbn'")


class _ConvNormReLU(nn.Sequential):
    """mmcv ``ConvModule(3x3, norm, ReLU)``: the conv has no bias because the norm's shift replaces it."""

    def __init__(self, in_channels: int, out_channels: int, norm: str) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            _norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class _Upsample2x(nn.Module):
    """x2 bilinear upsampling with ``align_corners=False`` (mmseg's ``Upsample`` inside FPNHead's scale heads)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class SemanticFPN(Decoder):
    """FPN neck + FPN head over a 4-level pyramid; outputs ``seg_logits`` at stride 4 and owns a CE loss.

    ``queries`` and ``text_embeddings`` are accepted (the pipeline may hand them to every decoder) and ignored:
    Semantic FPN is a closed-set pixel classifier. Language-guided variants (DenseCLIP's score-map concatenation)
    enter through wider ``in_channels`` rather than through this module.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        *,
        channels: int = 256,
        head_channels: int = 128,
        dropout: float = 0.1,
        norm: str = "bn",
        loss_weight: float = 1.0,
        class_weight: Sequence[float] | None = None,
        ignore_index: int = 255,
        feature_strides: Sequence[int] = DEFAULT_FEATURE_STRIDES,
    ) -> None:
        super().__init__()
        in_channels = [int(c) for c in in_channels]
        feature_strides = [int(s) for s in feature_strides]
        if len(in_channels) != len(feature_strides):
            raise FPNConfigError(
                f"fpn needs one input width per pyramid level: got in_channels={in_channels} for "
                f"feature_strides={feature_strides}"
            )
        if any(c <= 0 for c in in_channels):
            raise FPNConfigError(f"in_channels must be positive, got {in_channels}")
        if num_classes <= 0:
            raise FPNConfigError(f"num_classes must be positive, got {num_classes}")
        if sorted(feature_strides) != feature_strides or any(
            s % feature_strides[0] or (s // feature_strides[0]) & (s // feature_strides[0] - 1) for s in feature_strides
        ):
            raise FPNConfigError(
                f"feature_strides must increase by powers of two from the finest level, got {feature_strides}"
            )
        if class_weight is not None and len(class_weight) != num_classes:
            raise FPNConfigError(
                f"class_weight has {len(class_weight)} entries but there are {num_classes} classes: give one "
                "weight per class, or none"
            )

        self.in_channels = in_channels
        self.num_classes = int(num_classes)
        self.channels = int(channels)
        self.head_channels = int(head_channels)
        self.feature_strides = tuple(feature_strides)
        self.loss_weight = float(loss_weight)
        self.ignore_index = int(ignore_index)
        #: asks the trainer for SyncBatchNorm over the ranks of a data-parallel run (``norm=syncbn``)
        self.sync_bn = norm == "syncbn"

        # Neck (mmseg FPN with num_outs == number of inputs, no extra convs, no norm, no activation).
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, channels, kernel_size=1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(nn.Conv2d(channels, channels, kernel_size=3, padding=1) for _ in in_channels)

        # Head (mmseg FPNHead): level i gets max(1, log2(stride_i / stride_0)) conv blocks.
        self.scale_heads = nn.ModuleList()
        for stride in feature_strides:
            num_blocks = max(1, int(math.log2(stride // feature_strides[0])))
            layers: list[nn.Module] = []
            for k in range(num_blocks):
                layers.append(_ConvNormReLU(channels if k == 0 else head_channels, head_channels, norm))
                if stride != feature_strides[0]:
                    layers.append(_Upsample2x())
            self.scale_heads.append(nn.Sequential(*layers))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(head_channels, num_classes, kernel_size=1)

        weight = None if class_weight is None else torch.tensor([float(w) for w in class_weight])
        # Not persistent: it is configuration (rebuilt from options), not learned state.
        self.register_buffer("class_weight", weight, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """mmseg's initialisation, so training from scratch behaves like the reference runs.

        Neck convs: Xavier-uniform, zero bias (FPN ``init_cfg``). Head convs: Kaiming-normal, fan_out, ReLU gain
        (mmcv ``ConvModule``); norms weight 1 bias 0. Classifier: N(0, 0.01), zero bias, so initial logits are
        near zero and the first loss is close to log(num_classes).
        """
        for conv in [*self.lateral_convs, *self.fpn_convs]:
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)
        for module in self.scale_heads.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm, nn.SyncBatchNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.conv_seg.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def neck(self, features: Sequence[Tensor]) -> list[Tensor]:
        """FPN neck: the 4 maps, each ``channels`` wide, at the input resolutions."""
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, features, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            # Sized (not x2) nearest resize, as mmseg does by default: exact for odd sizes too.
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest"
            )
        return [conv(x) for conv, x in zip(self.fpn_convs, laterals, strict=True)]

    def forward(
        self,
        features: list[Tensor],
        queries: Tensor | None = None,
        text_embeddings: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Return ``{"seg_logits": [B, num_classes, H/4, W/4]}`` (the size of the finest input map)."""
        if len(features) != len(self.in_channels):
            raise ValueError(
                f"fpn expects {len(self.in_channels)} feature maps (strides {list(self.feature_strides)}), "
                f"got {len(features)}"
            )
        pyramid = self.neck(features)
        output = self.scale_heads[0](pyramid[0])
        for head, x in zip(self.scale_heads[1:], pyramid[1:], strict=True):
            y = head(x)
            if y.shape[-2:] != output.shape[-2:]:
                y = F.interpolate(y, size=output.shape[-2:], mode="bilinear", align_corners=False)
            output = output + y
        return {"seg_logits": self.conv_seg(self.dropout(output))}

    def loss(self, outputs: dict[str, Tensor], targets: Tensor) -> dict[str, Tensor]:
        """Cross-entropy at the label resolution, averaged over **all** pixels (mmseg's ``avg_non_ignore=False``).

        Logits are upsampled bilinearly (``align_corners=False``) to ``targets``' size. Ignored pixels count in
        the denominator with a loss of 0, as in mmseg (and so in DenseCLIP and Rein): a fully ignored batch gives
        a loss of exactly 0 with zero gradients, never NaN. ``class_weight`` scales each pixel's term and is not
        renormalised (again mmseg's behaviour, unlike ``F.cross_entropy(reduction="mean")``).
        """
        logits = outputs["seg_logits"]
        logits, targets = logits_at_label_size(logits, targets)
        weight = self.class_weight
        if weight is not None:
            weight = weight.to(dtype=logits.dtype)
        per_pixel = F.cross_entropy(
            logits, targets.long(), weight=weight, ignore_index=self.ignore_index, reduction="none"
        )
        loss_ce = self.loss_weight * per_pixel.mean()
        return {"loss": loss_ce, "loss_ce": loss_ce}


def build_fpn(options: FPNOptions | None, context: BuildContext) -> SemanticFPN:
    """Factory registered as decoder ``fpn``: options from the run config, sizes from the build context.

    Context used: ``in_channels`` (4 widths, strides 4/8/16/32), ``num_classes``, ``ignore_index``.
    """
    options = coerce_options(options, FPNOptions, "fpn")
    context.require("in_channels", "num_classes", component="decoder 'fpn'")
    in_channels = list(context.in_channels)
    if len(in_channels) != len(DEFAULT_FEATURE_STRIDES):
        raise FPNConfigError(f"decoder 'fpn' needs 4 pyramid widths (strides 4/8/16/32), got in_channels={in_channels}")
    class_weight = options.class_weight
    if class_weight is not None and len(class_weight) != context.num_classes:
        raise FPNConfigError(
            f"decoder.class_weight has {len(class_weight)} entries but num_classes={context.num_classes}: "
            "give exactly one weight per class"
        )
    return SemanticFPN(
        in_channels,
        context.num_classes,
        channels=options.channels,
        head_channels=options.head_channels,
        dropout=options.dropout,
        norm=options.norm,
        loss_weight=options.loss_weight,
        class_weight=class_weight,
        ignore_index=context.ignore_index,
    )


__all__ = ["DEFAULT_FEATURE_STRIDES", "FPNConfigError", "SemanticFPN", "build_fpn"]
