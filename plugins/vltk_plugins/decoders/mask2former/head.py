"""The ``mask2former`` decoder: pixel decoder + masked-attention transformer decoder + set loss, and Rein's link.

Forward (mmdet ``Mask2FormerHead`` semantics): the pixel decoder turns the 4-level pyramid into mask features
(stride 4) and three encoded levels (strides 32, 16, 8). Queries are refined by ``dec_layers`` decoder layers,
layer ``i`` cross-attending to level ``i % 3`` (lowest resolution first). Before the first layer and after every
layer, the post-norm queries predict class logits ``[B, Q, K+1]`` (the last class is "no object") and mask logits
``[B, Q, H/4, W/4]`` (dot products of the mask embedding with the mask features); the mask, resized to the next
layer's level, is that layer's attention mask (pixels with sigmoid < 0.5 hidden; a query whose mask is empty
everywhere sees the whole level). Semantic scores are ``softmax(class)[..., :K]`` times ``sigmoid(mask)``, summed
over queries.

Rein's query link (``query_dims`` in the pipeline context, i.e. the adapter exposes ``queries()``): the module has
no learned ``query_embed``/``query_feat``; the adapter's batch-independent queries ``[m, c']`` are the positional
queries of every layer and ``querys2feat(queries)`` is the initial content query, as in Rein's
``ReinMask2FormerHead(replace_query_feat=True)``. The number of queries is then m, and gradients flow from the
decoder into the adapter's tokens through them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from vltk.api import BuildContext, Decoder, UserError, as_label_map, coerce_options
from vltk_plugins.common.lean_autograd import lean_applies
from vltk_plugins.decoders.mask2former.criterion import Mask2FormerCriterion
from vltk_plugins.decoders.mask2former.options import NUM_FEATURE_LEVELS, Mask2FormerOptions
from vltk_plugins.decoders.mask2former.pixel_decoder import MSDeformAttnPixelDecoder, sine_positional_encoding
from vltk_plugins.decoders.mask2former.transformer_decoder import Mask2FormerTransformerDecoder

DEFAULT_FEATURE_STRIDES: tuple[int, ...] = (4, 8, 16, 32)


class Mask2FormerConfigError(UserError, ValueError):
    """A wrong ``mask2former`` configuration or context: a ``ValueError`` for Python callers, one CLI line for
    users."""


@torch.no_grad()
def attention_mask(mask_logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Masked attention's additive mask ``[B, 1, Q, h * w]`` from mask logits ``[B, Q, H, W]`` (``-inf`` = hidden).

    The logits are resized bilinearly to the level's ``size``; a pixel is hidden from a query where its sigmoid is
    below 0.5. A query whose mask is empty on the whole level would attend to nothing (a NaN softmax), so it sees
    the whole level instead (mmdet's rule). Every head uses the same mask, so it is built once and broadcast over
    the heads by the attention (mmdet and Hugging Face repeat it per head, then convert it to floats per call).
    """
    resized = F.interpolate(mask_logits.detach(), size=size, mode="bilinear", align_corners=False)
    hidden = resized.flatten(2).sigmoid() < 0.5
    hidden &= ~hidden.all(dim=-1, keepdim=True)
    additive = torch.zeros(hidden.shape, dtype=mask_logits.dtype, device=mask_logits.device)
    return additive.masked_fill_(hidden, float("-inf")).unsqueeze(1)


class _MaskProduct(torch.autograd.Function):
    """``[B, H·W, Q]`` = features ``[B, C, H·W]``ᵀ x embed ``[B, Q, C]``ᵀ, keeping the features as they are (no
    transposed copy) and computing each gradient as a GEMM whose output is contiguous in its input's layout, so
    the ten predictions' feature gradients accumulate contiguously."""

    @staticmethod
    def forward(ctx: FunctionCtx, mask_embed: Tensor, features: Tensor) -> Tensor:
        ctx.save_for_backward(mask_embed, features)
        return torch.bmm(features.transpose(1, 2), mask_embed.transpose(1, 2))

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        mask_embed, features = ctx.saved_tensors
        grad_t = grad.transpose(1, 2)  # [B, Q, H·W]
        grad_embed = torch.bmm(grad_t, features.transpose(1, 2)) if ctx.needs_input_grad[0] else None
        grad_features = torch.bmm(mask_embed.transpose(1, 2), grad_t) if ctx.needs_input_grad[1] else None
        return grad_embed, grad_features


def mask_product(mask_embed: Tensor, mask_features: Tensor) -> Tensor:
    """Mask logits ``[B, Q, H, W]`` = ``Σ_c embed[b, q, c] · features[b, c, h, w]``, laid out channels-last (queries
    innermost).

    The GEMM of ``einsum("bqc,bchw->bqhw")`` with its operands swapped, so its output is ``[B, H·W, Q]``: what the
    next layer's attention mask resizes (``interpolate`` on a CPU converts a channel-first map of 100 queries to
    channels-last first, 95% of its time) and what the matcher gathers per point (a query row per pixel).
    """
    batch, channels, height, width = mask_features.shape
    features = mask_features.reshape(batch, channels, height * width)
    if lean_applies(features):
        logits = _MaskProduct.apply(mask_embed, features)
    else:  # autocast re-types the GEMM, the compiler picks its own layouts
        logits = torch.bmm(features.transpose(1, 2), mask_embed.transpose(1, 2))
    return logits.view(batch, height, width, -1).permute(0, 3, 1, 2)


class Mask2Former(Decoder):
    """Mask2Former for semantic segmentation over a 4-level pyramid (strides 4/8/16/32).

    ``in_channels`` is per level so a caller can widen one level (e.g. a pixel-text score map concatenated to it);
    ``text_embeddings`` is accepted and ignored by this closed-set decoder. ``query_dims`` (not None) switches on
    the adapter-query link described in the module docstring.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        *,
        hidden_dim: int = 256,
        num_queries: int = 100,
        num_heads: int = 8,
        enc_layers: int = 6,
        enc_ffn: int = 1024,
        enc_points: int = 4,
        dec_layers: int = 9,
        dec_ffn: int = 2048,
        query_dims: int | None = None,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        no_object_weight: float = 0.1,
        deep_supervision: bool = True,
        ignore_index: int = 255,
        ignore_mode: str = "background",
        target_padding: str = "auto",
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        in_channels = [int(c) for c in in_channels]
        if len(in_channels) != len(DEFAULT_FEATURE_STRIDES) or any(c <= 0 for c in in_channels):
            raise Mask2FormerConfigError(
                f"mask2former needs 4 positive pyramid widths (strides 4/8/16/32), got in_channels={in_channels}"
            )
        if num_classes <= 0:
            raise Mask2FormerConfigError(f"num_classes must be positive, got {num_classes}")
        if query_dims is not None and query_dims != hidden_dim:
            raise Mask2FormerConfigError(
                f"the adapter's decoder queries are {query_dims}-wide but decoder.hidden_dim={hidden_dim}: set "
                f"adapter.query_dims={hidden_dim} or decoder.hidden_dim={query_dims}"
            )
        self.in_channels = in_channels
        self.num_classes = int(num_classes)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.num_levels = NUM_FEATURE_LEVELS
        self.query_dims = query_dims
        self.deep_supervision = deep_supervision
        self.ignore_index = int(ignore_index)

        self.pixel_decoder = MSDeformAttnPixelDecoder(
            in_channels,
            hidden_dim=hidden_dim,
            num_heads=num_heads,
            num_levels=self.num_levels,
            num_points=enc_points,
            num_layers=enc_layers,
            ffn_dim=enc_ffn,
        )
        self.transformer_decoder = Mask2FormerTransformerDecoder(hidden_dim, num_heads, dec_ffn, dec_layers)
        self.set_grad_checkpointing(grad_checkpointing)
        self.level_embed = nn.Embedding(self.num_levels, hidden_dim)
        if query_dims is None:
            self.num_queries: int | None = num_queries
            self.query_feat = nn.Embedding(num_queries, hidden_dim)
            self.query_embed = nn.Embedding(num_queries, hidden_dim)
        else:
            self.num_queries = None  # the adapter's token count, known at forward time
            self.querys2feat = nn.Linear(query_dims, hidden_dim)
        self.cls_embed = nn.Linear(hidden_dim, self.num_classes + 1)
        self.mask_embed = nn.Sequential(
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, hidden_dim),
        )
        self.transformer_decoder.reset_parameters()
        self.criterion = Mask2FormerCriterion(
            self.num_classes,
            class_weight=class_weight,
            mask_weight=mask_weight,
            dice_weight=dice_weight,
            no_object_weight=no_object_weight,
            num_points=num_points,
            oversample_ratio=oversample_ratio,
            importance_sample_ratio=importance_sample_ratio,
            ignore_index=self.ignore_index,
            ignore_mode=ignore_mode,
            target_padding=target_padding,
        )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every encoder and decoder layer in backward (when gradients are recorded): the mask logits
        each layer predicts are kept (the loss needs them), the layers' attention and FFN activations are not."""
        self.grad_checkpointing = bool(enable)
        self.pixel_decoder.grad_checkpointing = bool(enable)

    @property
    def links_queries(self) -> bool:
        """True when the decoder takes its queries from the adapter (Rein's token -> query link)."""
        return self.query_dims is not None

    # ------------------------------------------------------------------------------------------------ forward

    def initial_queries(self, queries: Tensor | None, batch: int) -> tuple[Tensor, Tensor]:
        """``(content, positional)`` queries ``[B, Q, hidden]``: learned, or derived from the adapter's."""
        if not self.links_queries:
            if queries is not None:
                raise ValueError(
                    "mask2former was built without the adapter-query link (query_dims was None) but forward got "
                    "queries; build it with query_dims=<their width> (the pipeline does when the adapter has "
                    "queries), or do not pass them"
                )
            content = self.query_feat.weight.unsqueeze(0).expand(batch, -1, -1)
            return content, self.query_embed.weight.unsqueeze(0).expand(batch, -1, -1)
        if queries is None:
            raise ValueError(
                f"mask2former was built with the adapter-query link (query_dims={self.query_dims}) but forward got "
                "no queries: pass adapter.queries() (Rein with link_token_to_query=true), or build the decoder "
                "without query_dims for learned queries"
            )
        if queries.dim() == 2:
            queries = queries.unsqueeze(0).expand(batch, -1, -1)
        if queries.dim() != 3 or queries.shape[0] != batch or queries.shape[-1] != self.query_dims:
            raise ValueError(
                f"adapter queries must be [m, {self.query_dims}] or [{batch}, m, {self.query_dims}], "
                f"got {tuple(queries.shape)}"
            )
        return self.querys2feat(queries), queries

    def _predict(
        self, queries: Tensor, mask_features: Tensor, attn_size: tuple[int, int] | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Class logits, mask logits, and (when ``attn_size``) the next layer's attention mask ``[B, 1, Q, S]``."""
        queries = self.transformer_decoder.post_norm(queries)
        class_logits = self.cls_embed(queries)
        mask_logits = mask_product(self.mask_embed(queries), mask_features)
        if attn_size is None:
            return class_logits, mask_logits, None
        return class_logits, mask_logits, attention_mask(mask_logits, attn_size)

    def forward(
        self,
        features: list[Tensor],
        queries: Tensor | None = None,
        text_embeddings: Tensor | None = None,
    ) -> dict[str, Any]:
        """``seg_logits`` ``[B, K, H/4, W/4]``, the last ``mask_cls``/``mask_pred``, and ``all_mask_cls`` /
        ``all_mask_pred``: the ``dec_layers + 1`` intermediate predictions (deep supervision)."""
        del text_embeddings  # closed-set decoder; language guidance enters through wider in_channels
        if len(features) != len(self.in_channels):
            raise ValueError(
                f"mask2former expects {len(self.in_channels)} feature maps (strides 4/8/16/32), got {len(features)}"
            )
        batch = features[0].shape[0]
        mask_features, multi_scale = self.pixel_decoder(features)
        # Per level, once: the memory and its key (memory + position) as contiguous [B, S, C] rows, so every
        # layer reading the level projects them in place and the layers' backward keeps one copy of each, not one
        # per layer (a channel-first view would be copied by each projection, and each copy saved).
        memories, memory_pos, memory_keys, sizes = [], [], [], []
        for level, x in enumerate(multi_scale):
            height, width = x.shape[-2:]
            memory = x.flatten(2).transpose(1, 2).contiguous() + self.level_embed.weight[level]
            pos = sine_positional_encoding(height, width, self.hidden_dim // 2, device=x.device).to(x.dtype)
            pos = pos.flatten(2).transpose(1, 2).contiguous()
            memories.append(memory)
            memory_pos.append(pos)
            memory_keys.append(memory + pos)
            sizes.append((int(height), int(width)))

        content, query_pos = self.initial_queries(queries, batch)
        layers = self.transformer_decoder.layers
        class_logits, mask_logits, attn_mask = self._predict(content, mask_features, sizes[0])
        all_cls, all_masks = [class_logits], [mask_logits]
        recompute = self.grad_checkpointing and torch.is_grad_enabled()
        for i, layer in enumerate(layers):
            level = i % self.num_levels
            inputs = (content, query_pos, memories[level], memory_pos[level], attn_mask, memory_keys[level])
            content = checkpoint(layer, *inputs, use_reentrant=False) if recompute else layer(*inputs)
            next_size = sizes[(i + 1) % self.num_levels] if i + 1 < len(layers) else None
            class_logits, mask_logits, attn_mask = self._predict(content, mask_features, next_size)
            all_cls.append(class_logits)
            all_masks.append(mask_logits)
        return {
            "seg_logits": self.semantic_scores(class_logits, mask_logits),
            "mask_cls": class_logits,
            "mask_pred": mask_logits,
            "all_mask_cls": all_cls,
            "all_mask_pred": all_masks,
        }

    @staticmethod
    def semantic_scores(class_logits: Tensor, mask_logits: Tensor) -> Tensor:
        """``Σ_q softmax(class_q)[k] · sigmoid(mask_q)``, the "no object" probability dropped: ``[B, K, h, w]``."""
        return torch.einsum("bqk,bqhw->bkhw", class_logits.softmax(-1)[..., :-1], mask_logits.sigmoid())

    # ------------------------------------------------------------------------------------------------ loss

    def loss(self, outputs: dict[str, Any], targets: Tensor) -> dict[str, Tensor]:
        """Set loss (see :mod:`.criterion`) on every intermediate prediction (``d{i}.loss_*``) and the last one
        (``loss_cls``/``loss_mask``/``loss_dice``); ``loss`` is the sum."""
        targets = as_label_map(targets)
        all_cls, all_masks = outputs["all_mask_cls"], outputs["all_mask_pred"]
        if not self.deep_supervision:
            all_cls, all_masks = all_cls[-1:], all_masks[-1:]
        return self.criterion(all_cls, all_masks, targets)

    def predict(self, outputs: dict[str, Any], image_size: tuple[int, int]) -> Tensor:
        """mmseg's semantic inference: mask logits upsampled to ``image_size`` *before* the sigmoid, then combined
        with the class probabilities. One image at a time keeps the peak at ``Q x H x W``."""
        scores = []
        for class_logits, mask_logits in zip(outputs["mask_cls"], outputs["mask_pred"], strict=True):
            masks = F.interpolate(mask_logits[None], size=image_size, mode="bilinear", align_corners=False)
            scores.append(self.semantic_scores(class_logits[None], masks))
        return torch.cat(scores)


def build_mask2former(options: Mask2FormerOptions | None, context: BuildContext) -> Mask2Former:
    """Factory registered as decoder ``mask2former``.

    Context used: ``in_channels`` (4 widths), ``num_classes``, ``ignore_index`` and ``query_dims`` (the adapter's
    query width — Rein's link — or None for learned queries).
    """
    options = coerce_options(options, Mask2FormerOptions, "mask2former")
    context.require("in_channels", "num_classes", component="decoder 'mask2former'")
    return Mask2Former(
        list(context.in_channels),
        context.num_classes,
        query_dims=context.query_dims,
        ignore_index=context.ignore_index,
        **options.model_dump(),
    )


__all__ = ["DEFAULT_FEATURE_STRIDES", "Mask2Former", "Mask2FormerConfigError", "attention_mask", "build_mask2former"]
