"""LSeg decoder (Li et al., "Language-driven Semantic Segmentation", ICLR 2022): pixels and labels in one space.

Every pixel gets an embedding of the text dimension; its logits are the cosine similarities with the label
embeddings, times LSeg's fixed scale ``1/0.07`` (``exp(log(1/0.07))``, not learned). The head has no classifier
weights, so the number of outputs is the number of text embeddings it is given: train on one label set, predict
with another (``vltk predict --labels``).

Pixel embeddings (LSeg uses a DPT decoder on a ViT; this is a light DPT-like version over vltk's 4-level pyramid):

* "scratch": a 3x3 conv (no bias) per level, ``in_channels[i] -> width``;
* fusion, coarsest first, in DPT's order (``refinenet4`` .. ``refinenet1``): a level with an incoming path
  computes ``conv1x1(up(RCU_out(path + RCU_lateral(level))))``; the coarsest level has no incoming path and
  computes ``conv1x1(up(RCU_out(level)))``, i.e. only DPT's ``resConfUnit2`` runs there. An RCU (DPT's residual
  conv unit) is ``x + norm(conv(act(norm(conv(act(x))))))``, ReLU, convs without bias when normalised;
* the last fusion upsamples x2 (``output_stride=2``, LSeg's H/2 embeddings) and a 1x1 conv maps ``width`` to the
  text dimension;
* the logits reach the image (predict) or label (loss) size as LSeg's ``output_conv`` takes them from H/2 to
  H: bilinear with ``align_corners=True``.

Parameter layout: DPT's ``FeatureFusionBlock`` constructs both RCUs at every level, so LSeg's checkpoints carry a
``refinenet4.resConfUnit1`` that no forward ever uses; vltk builds only the units that run (``fusion.3`` has no
``lateral_unit``). Everything else maps one to one: ``scratch.N`` = ``layer{N+1}_rn``, ``fusion.N`` =
``refinenet{N+1}`` (``lateral_unit`` = ``resConfUnit1``, ``output_unit`` = ``resConfUnit2``, ``out_conv``),
``head`` = ``head1``.

Where the levels come from (``reassemble``): ``none`` (default) takes the backbone's own pyramid at strides 4..32,
so the head fits every vltk backbone; ``dpt`` is LSeg's own image path, DPT's reassemble stage
(:mod:`vltk_plugins.lseg.reassemble`, ``reassemble.N`` = LSeg's ``net.pretrained.act_postprocess{N+1}``) on the
token pyramid of the ``lseg-vit`` backbone (``pyramid: dpt``), then the same scratch/fusion/head. The default
stays ``none`` because the DPT path needs LSeg's backbone arrangement (a ViT whose tokens are handed over at the
patch stride); a converted LSeg release uses ``dpt``.

What differs from LSeg on purpose (docs/deviations.md): with ``reassemble: none`` the pyramid comes from vltk
(strides 4..32) instead of DPT's reassemble stage; the reassemble's weights train with the decoder's learning
rate (LSeg keeps ``act_postprocess`` in ``net.pretrained``, at the encoder's); upsampling inside the fusion is
resized to the lateral's size (the same as DPT's ``scale_factor=2`` when the input is a multiple of 32, and exact
for any other size), logits are computed in the model's dtype (LSeg casts the pixel embeddings to fp16 for the
product), and the loss is cross-entropy averaged over labelled pixels (PyTorch-Encoding's ``SegmentationLosses``
default), returning 0 instead of NaN for a batch without labelled pixels.

Spatial regularisation (paper section 3, ``arch_option`` 1/2, ``block_depth``): one 3x3 conv ``1 -> 1`` applied to
every label channel with the same weights (plus, for the bottleneck variant, the max over labels added back),
repeated ``num_spatial_blocks`` times with the activation between repetitions. Like LSeg's code, all repetitions
share one block, so permuting the labels permutes the outputs and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torch.nn import functional as F

from vltk.api import BuildContext, Decoder, UserError, as_label_map, coerce_options
from vltk_kernels import pixel_text_similarity
from vltk_plugins.lseg.options import TEMPERATURE, LSegOptions
from vltk_plugins.lseg.reassemble import DPTReassemble

NO_TEXT_MESSAGE = (
    "lseg needs a prompter to turn class names into text embeddings: add --prompter clip-template "
    "(or prompter: {name: clip-template} in the recipe)"
)


class LSegConfigError(UserError, ValueError):
    """A wrong ``lseg`` configuration or context: a ``ValueError`` for Python callers, a clean CLI line for users."""


def _activation(name: str) -> nn.Module:
    if name == "lrelu":
        return nn.LeakyReLU()
    if name == "tanh":
        return nn.Tanh()
    if name == "relu":
        return nn.ReLU()
    raise LSegConfigError(f"unknown activation {name!r}: expected 'lrelu', 'tanh' or 'relu'")


class ResidualConvUnit(nn.Module):
    """DPT's residual conv unit: ``x + conv(act(norm(conv(act(x)))))`` (norm after each conv when enabled)."""

    def __init__(self, width: int, norm: str) -> None:
        super().__init__()
        use_bn = norm == "bn"
        self.conv1 = nn.Conv2d(width, width, kernel_size=3, padding=1, bias=not use_bn)
        self.norm1 = nn.BatchNorm2d(width) if use_bn else nn.Identity()
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, padding=1, bias=not use_bn)
        self.norm2 = nn.BatchNorm2d(width) if use_bn else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.norm1(self.conv1(F.relu(x)))
        out = self.norm2(self.conv2(F.relu(out)))
        return x + out


class FusionBlock(nn.Module):
    """DPT ``FeatureFusionBlock``: add the refined lateral to the incoming path, refine, resize, 1x1 conv.

    ``has_path=False`` is the coarsest level: nothing comes in, the level itself goes straight into the output
    unit (DPT calls ``refinenet4`` with one input), so the block has no lateral unit at all.
    """

    def __init__(self, width: int, norm: str, *, has_path: bool = True) -> None:
        super().__init__()
        self.lateral_unit = ResidualConvUnit(width, norm) if has_path else None
        self.output_unit = ResidualConvUnit(width, norm)
        self.out_conv = nn.Conv2d(width, width, kernel_size=1)

    def forward(self, lateral: Tensor, path: Tensor | None, size: tuple[int, int]) -> Tensor:
        """``path`` comes from the coarser level, already at ``lateral``'s size (None exactly for the coarsest
        level); the result is resized to ``size`` (the next finer level's size, or the output size)."""
        if (path is None) != (self.lateral_unit is None):
            raise ValueError("lseg fusion: only the coarsest level (the block without a lateral unit) has no path")
        x = lateral if self.lateral_unit is None else path + self.lateral_unit(lateral)
        x = self.output_unit(x)
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class SpatialRegularization(nn.Module):
    """LSeg's label-equivariant block: one shared 3x3 conv over every label channel (+ max over labels)."""

    def __init__(self, kind: str, activation: str) -> None:
        super().__init__()
        if kind not in ("bottleneck", "depthwise"):
            raise LSegConfigError(f"unknown spatial_block {kind!r}: expected 'bottleneck' or 'depthwise'")
        self.kind = kind
        self.conv = nn.Conv2d(1, 1, kernel_size=3, padding=1)
        self.activation = _activation(activation)

    def forward(self, logits: Tensor, activate: bool = True) -> Tensor:
        batch, labels, height, width = logits.shape
        out = self.conv(logits.reshape(batch * labels, 1, height, width)).reshape(batch, labels, height, width)
        if self.kind == "bottleneck":
            out = out + logits.max(dim=1, keepdim=True).values
        return self.activation(out) if activate else out


class LSegDecoder(Decoder):
    """Pixel embeddings in the text space; logits = cosine(pixel, label) / 0.07; cross-entropy over the labels."""

    #: The number of outputs follows the text embeddings (``vltk predict --labels`` relies on this).
    open_vocabulary = True
    #: LSeg's fixed logit scale 1/0.07.
    logit_scale = 1.0 / TEMPERATURE

    def __init__(
        self,
        in_channels: Sequence[int],
        text_dim: int,
        *,
        width: int = 256,
        norm: str = "bn",
        output_stride: int = 2,
        num_spatial_blocks: int = 0,
        spatial_block: str = "bottleneck",
        activation: str = "lrelu",
        loss_weight: float = 1.0,
        ignore_index: int = 255,
        reassemble: DPTReassemble | None = None,
        reassemble_widths: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        in_channels = [int(c) for c in (reassemble_widths if reassemble is not None else in_channels)]
        if len(in_channels) != 4 or any(c <= 0 for c in in_channels):
            raise LSegConfigError(f"lseg needs 4 positive pyramid widths (strides 4/8/16/32), got {in_channels}")
        if text_dim <= 0:
            raise LSegConfigError(f"lseg needs a positive text dimension, got {text_dim}")
        # output_stride, num_spatial_blocks and norm are validated once, by LSegOptions (see vltk.config.resolve)
        self.in_channels = in_channels
        self.text_dim = int(text_dim)
        self.output_stride = int(output_stride)
        self.num_spatial_blocks = int(num_spatial_blocks)
        self.loss_weight = float(loss_weight)
        self.ignore_index = int(ignore_index)
        #: DPT's reassemble stage (``reassemble: dpt``), None when the backbone's pyramid is used as it is.
        self.reassemble = reassemble
        self.scratch = nn.ModuleList(nn.Conv2d(c, width, kernel_size=3, padding=1, bias=False) for c in in_channels)
        coarsest = len(in_channels) - 1
        self.fusion = nn.ModuleList(FusionBlock(width, norm, has_path=i < coarsest) for i in range(len(in_channels)))
        self.head = nn.Conv2d(width, self.text_dim, kernel_size=1)
        self.spatial = SpatialRegularization(spatial_block, activation) if num_spatial_blocks else None

    def pixel_embeddings(self, features: Sequence[Tensor]) -> Tensor:
        """``[B, text_dim, H/output_stride, W/output_stride]`` (not normalised)."""
        if len(features) != len(self.scratch):
            raise ValueError(f"lseg expects {len(self.scratch)} feature maps (strides 4/8/16/32), got {len(features)}")
        if self.reassemble is not None:
            features = self.reassemble(features)
        laterals = [conv(x) for conv, x in zip(self.scratch, features, strict=True)]
        finest = laterals[0].shape[-2:]
        factor = 4 // self.output_stride
        output_size = (finest[0] * factor, finest[1] * factor)
        path: Tensor | None = None
        for level in range(len(laterals) - 1, -1, -1):
            size = laterals[level - 1].shape[-2:] if level > 0 else output_size
            path = self.fusion[level](laterals[level], path, tuple(size))
        assert path is not None
        return self.head(path)

    def forward(
        self,
        features: list[Tensor],
        queries: Tensor | None = None,
        text_embeddings: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """``{"seg_logits": [B, K, H/s, W/s], "pixel_embeddings": [B, text_dim, H/s, W/s]}`` for K text embeddings
        ``[K, text_dim]`` (shared) or ``[B, K, text_dim]`` (per image)."""
        if text_embeddings is None:
            raise UserError(NO_TEXT_MESSAGE)
        if text_embeddings.dim() not in (2, 3) or text_embeddings.shape[-1] != self.text_dim:
            raise LSegConfigError(
                f"lseg was built for {self.text_dim}-d text embeddings but got shape {tuple(text_embeddings.shape)}; "
                "the prompter must use the backbone's text tower"
            )
        pixels = self.pixel_embeddings(features)
        logits = pixel_text_similarity(pixels, text_embeddings.to(pixels.dtype), temperature=TEMPERATURE)
        if self.spatial is not None:
            for repeat in range(self.num_spatial_blocks):
                logits = self.spatial(logits, activate=repeat < self.num_spatial_blocks - 1)
        return {"seg_logits": logits, "pixel_embeddings": pixels}

    @staticmethod
    def upsample(logits: Tensor, size: tuple[int, int]) -> Tensor:
        """Logits at ``size``: LSeg's ``output_conv`` (``Interpolate(scale_factor=2, bilinear, align_corners=True)``
        from H/2 to H), written with the target size so that any other ratio resizes the same way."""
        if tuple(logits.shape[-2:]) == tuple(size):
            return logits
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=True)

    def predict(self, outputs: dict[str, Tensor], image_size: tuple[int, int]) -> Tensor:
        """Per-label scores at the input resolution, upsampled as LSeg's ``output_conv`` does."""
        return self.upsample(outputs["seg_logits"], image_size)

    def loss(self, outputs: dict[str, Tensor], targets: Tensor) -> dict[str, Tensor]:
        """Per-pixel softmax cross-entropy over the label set, averaged over labelled pixels (0 when none), on the
        logits at the labels' size (LSeg's criterion sees ``output_conv``'s full-resolution output)."""
        targets = as_label_map(targets)
        logits = self.upsample(outputs["seg_logits"], tuple(targets.shape[-2:]))
        targets = targets.long()
        labelled = targets != self.ignore_index
        if bool(((targets < 0) | (targets >= logits.shape[1]))[labelled].any()):
            raise ValueError(
                f"targets hold class indices outside 0..{logits.shape[1] - 1} (the text embeddings give "
                f"{logits.shape[1]} labels)"
            )
        per_pixel = F.cross_entropy(logits, targets, ignore_index=self.ignore_index, reduction="none")
        loss_ce = self.loss_weight * per_pixel.sum() / labelled.sum().clamp(min=1)
        return {"loss": loss_ce, "loss_ce": loss_ce}

    def extra_repr(self) -> str:
        return (
            f"text_dim={self.text_dim}, output_stride={self.output_stride}, "
            f"num_spatial_blocks={self.num_spatial_blocks}, logit_scale=1/{TEMPERATURE}"
        )


def build_lseg(options: LSegOptions | None, context: BuildContext) -> LSegDecoder:
    """Factory registered as decoder ``lseg``.

    Context used: ``in_channels`` (4 widths), ``text_dim`` (the width of the backbone's text space, which the
    prompter's embeddings have) and ``ignore_index``. ``num_classes`` is not used: the number of outputs follows
    the text embeddings.
    """
    options = coerce_options(options, LSegOptions, "lseg")
    if context.text_dim is None:
        raise LSegConfigError(
            "decoder 'lseg' needs a vision-language backbone with a text space (text_dim), e.g. --backbone eva02 or "
            "clip-vit; the backbone in this run is vision-only"
        )
    context.require("in_channels", component="decoder 'lseg'")
    reassemble = _reassemble(options, context)
    return LSegDecoder(
        list(context.in_channels),
        context.text_dim,
        width=options.width,
        norm=options.norm,
        output_stride=options.output_stride,
        num_spatial_blocks=options.num_spatial_blocks,
        spatial_block=options.spatial_block,
        activation=options.activation,
        loss_weight=options.loss_weight,
        ignore_index=context.ignore_index,
        reassemble=reassemble,
        reassemble_widths=options.reassemble_widths,
    )


def _reassemble(options: LSegOptions, context: BuildContext) -> DPTReassemble | None:
    """DPT's reassemble for ``reassemble: dpt`` on a token pyramid; a pyramid/option mismatch is one clear error."""
    strides = tuple(context.strides or (4, 8, 16, 32))
    token_pyramid = strides != (4, 8, 16, 32)
    if options.reassemble == "none":
        if token_pyramid:
            raise LSegConfigError(
                f"decoder 'lseg': the backbone hands over a DPT token pyramid (strides {list(strides)}); set "
                "decoder.reassemble=dpt, or backbone.pyramid=resize for the plain pyramid"
            )
        return None
    context.require("embed_dim", "patch_size", component="decoder 'lseg' (reassemble=dpt)")
    embed_dim, patch = int(context.embed_dim), int(context.patch_size)
    if strides != (patch,) * 4 or list(context.in_channels) != [2 * embed_dim] * 4:
        raise LSegConfigError(
            "decoder.reassemble=dpt needs the backbone's DPT token pyramid (4 maps of [patch | cls] tokens at the "
            f"patch stride), got strides {list(strides)} and widths {list(context.in_channels)}; use --backbone "
            "lseg-vit backbone.pyramid=dpt, or decoder.reassemble=none"
        )
    return DPTReassemble(embed_dim, patch, options.reassemble_widths, options.readout)


__all__ = ["NO_TEXT_MESSAGE", "FusionBlock", "LSegConfigError", "LSegDecoder", "ResidualConvUnit", "build_lseg"]
