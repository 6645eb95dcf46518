"""The ``clip-contrastive`` head: contrastive image-text pretraining of a backbone's open_clip towers.

It is the ``decoder`` of ``task: pretrain`` (:class:`vltk.models.pretrainer.ImageTextPretrainer`'s head contract)
and owns the objectives, all computed from one forward of the backbone's ``embed`` (global and per-patch
embeddings in the joint space):

* **contrastive**: open_clip's ``ClipLoss`` or ``SigLipLoss`` between global image embeddings and caption
  embeddings (open_clip's tokenizer and text tower, which this head registers as its own submodule and trains,
  as the backbone's docstring says a text-training component must).
* **patch-word alignment** (``align_weight``): FILIP's token-wise max similarity, reduced to class words: for
  each countable object class, the maximum over patches of the patch-word cosine, scaled, is the logit that the
  scene shows that class (binary cross-entropy against what the caption says). Contrastive captions alone give
  dense features no better than random for a linear probe (measured on this project); this term makes the
  patch embeddings themselves carry the objects.
* **masked image modelling** (``mim_weight``): SimMIM with pixel targets: patches blanked in the input, a linear
  layer predicts their per-patch-normalised pixels from the patch embeddings, L1 on the masked patches.

``foundation_state`` is the backbone's state dict, which is exactly an open_clip checkpoint (image tower, text
tower, ``logit_scale``): ``open_clip.pt`` loads into the same backbone through ``backbone.pretrained=FILE``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from vltk.api import BuildContext, UserError
from vltk_plugins.datasets.synthetic.captioned import OBJECT_CLASSES
from vltk_plugins.datasets.synthetic.captions import THINGS
from vltk_plugins.decoders.clip_contrastive.options import ClipContrastiveOptions


class ClipContrastiveHead(nn.Module):
    """The objectives of image-text pretraining; see the module docstring."""

    def __init__(self, backbone: nn.Module, options: ClipContrastiveOptions) -> None:
        super().__init__()
        import open_clip.loss

        self.options = options
        self.text = backbone.text_tower()  # registered here: trained by this head
        self.text.requires_grad_(True)
        clip = backbone.open_clip_model()
        self.logit_scale = clip.logit_scale  # the open_clip model's own parameter, saved with the foundation
        self.logit_scale.requires_grad_(True)
        self.tokenize = backbone.tokenizer()
        self.patch_size = int(backbone.patch_size)
        dims = int(backbone.text_dim)
        if options.loss == "siglip":
            with torch.no_grad():
                self.logit_scale.fill_(math.log(10.0))  # SigLIP's initialisation (t' = log 10, b = -10)
            self.logit_bias = nn.Parameter(torch.tensor(-10.0))
            self.contrastive = open_clip.loss.SigLipLoss()
        else:
            self.logit_bias = None
            self.contrastive = open_clip.loss.ClipLoss()
        self.align_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.align_bias = nn.Parameter(torch.tensor(-2.0))
        self.pixels = nn.Linear(dims, self.patch_size * self.patch_size * 3) if options.mim_weight > 0 else None

    # ------------------------------------------------------------------------------------------------ encoders
    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        tokens = self.tokenize(list(texts)).to(self.logit_scale.device)
        return F.normalize(self.text(tokens), dim=-1)

    def encode_images(self, backbone: nn.Module, hooks: Sequence[Any], images: Tensor) -> Tensor:
        global_embedding, _ = backbone.embed(images, hooks)
        return F.normalize(global_embedding, dim=-1)

    def foundation_state(self, backbone: nn.Module) -> dict[str, Tensor]:
        return backbone.state_dict()

    # ------------------------------------------------------------------------------------------------ losses
    def _mask(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Blank ``mask_ratio`` of the patches (to 0, the normalised mean): ``(masked images, mask [B, h*w])``."""
        b, _, height, width = images.shape
        p = self.patch_size
        grid = (height // p, width // p)
        n = grid[0] * grid[1]
        keep = torch.rand(b, n, device=images.device).argsort(1) >= int(round(self.options.mask_ratio * n))
        mask = ~keep
        pixel_mask = mask.view(b, 1, *grid).repeat_interleave(p, 2).repeat_interleave(p, 3)
        return images.masked_fill(pixel_mask, 0.0), mask

    def _mim_loss(self, dense: Tensor, images: Tensor, mask: Tensor) -> Tensor:
        p = self.patch_size
        target = F.unfold(images, kernel_size=p, stride=p).transpose(1, 2)  # [B, N, 3 p p]
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
        predicted = self.pixels(dense.flatten(2).transpose(1, 2))  # [B, N, 3 p p]
        per_patch = (predicted - target).abs().mean(-1)
        return (per_patch * mask).sum() / mask.sum().clamp(min=1)

    def _align_loss(self, dense: Tensor, objects: Tensor) -> Tensor:
        words = []
        for cls in OBJECT_CLASSES:
            singular = THINGS[cls][0]
            pick = int(torch.randint(len(singular), ()))  # torch's RNG: a resumed run draws the same words
            words.append(f"a photo of a {singular[pick]}.")
        classes = self.encode_texts(words)  # [K, D]
        patches = F.normalize(dense.flatten(2), dim=1)  # [B, D, N]
        best = torch.einsum("kd,bdn->bkn", classes, patches).amax(-1)  # [B, K]
        logits = best * self.align_scale.exp() + self.align_bias
        return F.binary_cross_entropy_with_logits(logits, objects.float())

    def image_text_loss(
        self,
        backbone: nn.Module,
        hooks: Sequence[Any],
        images: Tensor,
        captions: Sequence[str],
        objects: Tensor | None = None,
    ) -> dict[str, Tensor]:
        mask = None
        inputs = images
        if self.pixels is not None:
            inputs, mask = self._mask(images)
        global_embedding, dense = backbone.embed(inputs, hooks)
        image_features = F.normalize(global_embedding, dim=-1)
        text_features = self.encode_texts(captions)
        scale = self.logit_scale.clamp(max=math.log(100.0)).exp()
        if self.logit_bias is not None:
            contrastive = self.contrastive(image_features, text_features, scale, self.logit_bias)
        else:
            contrastive = self.contrastive(image_features, text_features, scale)
        losses = {"loss_contrastive": contrastive}
        total = contrastive
        if self.options.align_weight > 0 and objects is not None:
            losses["loss_align"] = self._align_loss(dense, objects)
            total = total + self.options.align_weight * losses["loss_align"]
        if mask is not None:
            losses["loss_mim"] = self._mim_loss(dense, images, mask)
            total = total + self.options.mim_weight * losses["loss_mim"]
        return {"loss": total, **losses}


def build_clip_contrastive(options: ClipContrastiveOptions, context: BuildContext) -> ClipContrastiveHead:
    """Factory registered as decoder ``clip-contrastive``: needs a backbone with an open_clip text side."""
    backbone = context.backbone
    needed = ("embed", "text_tower", "tokenizer", "open_clip_model")
    if backbone is None or not all(callable(getattr(backbone, name, None)) for name in needed):
        raise UserError(
            "decoder 'clip-contrastive' needs an open_clip backbone with a text tower; use backbone=eva02 or "
            "backbone=clip-vit"
        )
    return ClipContrastiveHead(backbone, options)


__all__ = ["ClipContrastiveHead", "build_clip_contrastive"]
