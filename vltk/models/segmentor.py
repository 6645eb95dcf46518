"""DensePredictor: backbone + adapter (block hooks, queries) + optional prompter/augmenters + decoder.

Paper-agnostic glue. It owns input normalisation and padding (so any image size works with any patch size),
keeps a frozen backbone in eval mode whatever ``train()`` is called with (as Rein's backbones do), and routes
adapter queries and prompter text embeddings to the decoder.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vltk.engine.precision import as_fp32, fp32_loss_region
from vltk.errors import UserError
from vltk.interfaces import Adapter, Augmenter, Backbone, Decoder
from vltk.models.text_guidance import concat_score_map, pixel_text_loss


class DensePredictor(nn.Module):
    """A dense-prediction model assembled from registered components.

    Images go in as float tensors in [0, 1], ``[B, 3, H, W]``; they are normalised with the backbone's
    mean/std and zero-padded on the bottom/right to a multiple of ``lcm(patch_size, 32)``; predictions are
    cropped back to ``H x W``.

    Text guidance (with a prompter): the backbone gives the pyramid and its text-space embeddings ``(z̄, z)`` in
    one pass, the prompter gives the class embeddings (from ``(z̄, z)`` when it ``needs_visual_context``), their
    cosine score map ``[B, K, h, w]`` is appended to level ``prompter.score_concat_index`` and returned as
    ``outputs["text_scores"]``, the text embeddings go to the decoder, and :meth:`loss` adds the auxiliary
    pixel-text loss ``loss_aux_text`` (weight ``prompter.aux_loss_weight``) to the decoder's ``loss``.
    """

    def __init__(
        self,
        backbone: Backbone,
        adapter: Adapter,
        decoder: Decoder,
        *,
        prompter: nn.Module | None = None,
        augmenters: Sequence[Augmenter] = (),
        class_names: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.adapter = adapter
        self.decoder = decoder
        self.prompter = prompter
        self.augmenters = nn.ModuleList(augmenters)
        self.class_names = tuple(class_names)
        self.register_buffer("pixel_mean", torch.tensor(backbone.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(backbone.std).view(1, 3, 1, 1), persistent=False)
        self.size_divisor = math.lcm(int(backbone.patch_size), 32)
        #: K the decoder was built for: the score-map channels appended to the pyramid must stay this many.
        self.decoder_num_classes = len(self.class_names)

    def train(self, mode: bool = True) -> DensePredictor:
        super().train(mode)
        if self.adapter.freezes_backbone:
            self.backbone.eval()
        return self

    # ------------------------------------------------------------------------------------------------ forward

    def _pad(self, images: Tensor) -> Tensor:
        height, width = images.shape[-2:]
        pad_h = (-height) % self.size_divisor
        pad_w = (-width) % self.size_divisor
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h))
        return images

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Decoder outputs for images in [0, 1]; image-stage augmenters run only in training mode."""
        x = (images - self.pixel_mean) / self.pixel_std
        if self.training:
            for augmenter in self.augmenters:
                if augmenter.stage == "image":
                    x = augmenter(x)
        x = self._pad(x)
        features, text, scores = self._encode(x, with_scores=self._needs_scores())
        if self.training:
            for augmenter in self.augmenters:
                if augmenter.stage == "feature":
                    features = [augmenter(level) for level in features]
        index = self.score_concat_index
        if index is not None:
            if scores.shape[1] != self.decoder_num_classes:
                raise UserError(
                    f"the decoder was built for {self.decoder_num_classes} text-score channels "
                    f"(score_concat_index={index}) but the label set now has {scores.shape[1]} classes; use "
                    "predict_open_vocabulary() for other label sets"
                )
            features = concat_score_map(features, scores, index)
        outputs = self.decoder(features, queries=self.adapter.queries(), text_embeddings=text)
        if scores is not None:
            outputs["text_scores"] = scores
        return outputs

    # ------------------------------------------------------------------------------------------ text guidance

    @property
    def score_concat_index(self) -> int | None:
        """The pyramid level that gets the score map (the prompter's choice), or None."""
        return getattr(self.prompter, "score_concat_index", None) if self.prompter is not None else None

    @property
    def aux_loss_weight(self) -> float:
        return float(getattr(self.prompter, "aux_loss_weight", 0.0)) if self.prompter is not None else 0.0

    def _needs_scores(self) -> bool:
        """Whether this forward needs the text-space embeddings (visual context, concatenation or aux loss)."""
        if self.prompter is None:
            return False
        return (
            bool(getattr(self.prompter, "needs_visual_context", False))
            or self.score_concat_index is not None
            or (self.training and self.aux_loss_weight > 0)
        )

    def _encode(self, x: Tensor, *, with_scores: bool) -> tuple[list[Tensor], Tensor | None, Tensor | None]:
        """Normalised, padded images -> (pyramid, text embeddings or None, cosine score map or None).

        With scores, the backbone runs once for the pyramid and ``(z̄, z)`` (``forward_with_embeddings``).
        """
        hooks = (self.adapter,)
        prompter = self.prompter
        if prompter is None or not with_scores:
            features = self.backbone.forward_features(x, block_hooks=hooks)
            return features, (prompter() if prompter is not None else None), None
        features, global_embedding, dense = self.backbone.forward_with_embeddings(x, block_hooks=hooks)
        if getattr(prompter, "needs_visual_context", False):
            text = prompter((global_embedding, dense))
        else:
            text = prompter()
        return features, text, prompter.score_map(dense, text)

    def set_class_names(self, names: Sequence[str]) -> None:
        """Swap the label set of the prompter (open vocabulary; learned context is kept), e.g. for
        ``vltk predict --labels``. Classify with :meth:`predict_open_vocabulary` afterwards: the decoder keeps
        the classes it was trained on."""
        if self.prompter is None:
            raise UserError("changing the label set needs a text prompter (e.g. --prompter clip-template)")
        self.prompter.set_class_names(names)
        self.class_names = tuple(getattr(self.prompter, "class_names", names))

    @torch.no_grad()
    def predict_open_vocabulary(self, images: Tensor) -> Tensor:
        """Classify with the text alone: pixel-text logits ``cos / temperature`` ``[B, K, H, W]`` at the input
        resolution, K = the prompter's current label set. No decoder involved, so any label list works."""
        if self.prompter is None:
            raise UserError("open-vocabulary prediction needs a text prompter (e.g. --prompter clip-template)")
        height, width = images.shape[-2:]
        x = self._pad((images - self.pixel_mean) / self.pixel_std)
        _, _, scores = self._encode(x, with_scores=True)
        logits = scores / float(getattr(self.prompter, "temperature", 0.07))
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :height, :width]

    def loss(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Loss terms for a batch; labels are padded with the ignore index to the padded image size."""
        outputs = self(images)
        padded_h, padded_w = self._pad(images[:1]).shape[-2:]
        height, width = labels.shape[-2:]
        if (padded_h, padded_w) != (height, width):
            labels = F.pad(labels, (0, padded_w - width, 0, padded_h - height), value=self.decoder.ignore_index)
        with fp32_loss_region(images.device.type):  # a bf16/fp16 forward's loss still runs in fp32
            outputs = as_fp32(outputs)
            losses = dict(self.decoder.loss(outputs, labels))
            scores = outputs.get("text_scores")
            if scores is not None and self.aux_loss_weight > 0:
                aux = self.aux_loss_weight * pixel_text_loss(
                    scores, labels, temperature=float(self.prompter.temperature), ignore_index=self.decoder.ignore_index
                )
                losses["loss_aux_text"] = aux
                losses["loss"] = losses["loss"] + aux
        return losses

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """Class scores ``[B, K, H, W]`` at the input resolution."""
        height, width = images.shape[-2:]
        outputs = self(images)
        padded = self._pad(images[:1]).shape[-2:]
        scores = self.decoder.predict(outputs, tuple(padded))
        return scores[..., :height, :width]

    # ------------------------------------------------------------------------------------------------ params

    def trainable_named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        for name, parameter in self.named_parameters():
            if parameter.requires_grad:
                yield name, parameter
