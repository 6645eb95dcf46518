"""Base classes every component derives from: the contracts between backbones, adapters and decoders.

They are small on purpose. The pipeline (``vltk.pipeline``) only relies on what is written here, so a plugin
that honours these attributes and methods composes with every other plugin: any adapter with any backbone,
any decoder with any adapter. Importing this module imports torch; ``import vltk`` does not.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

from vltk.errors import UserError


class BlockHook(Protocol):
    """Called by a backbone after every block: ``x = hook(x, layer_idx)``.

    ``x`` is the block output, batch-first ``[B, T, C]``; when the backbone ``has_cls_token`` the cls token is
    row 0 and the patch tokens follow in row-major grid order. The hook returns a tensor of the same shape.

    Optional: a hook may also define ``before_block(x, layer_idx) -> x``, which a ViT backbone calls before
    block ``layer_idx`` (hooks in order). It may append extra tokens at the END of the sequence (VPT's deep
    prompts); they go through the block without a grid position (EVA02: identity RoPE rotation). The same
    hook's after-block call then receives them and must drop them again, returning ``x[:, :T]``: after a
    block's hooks the sequence is ``[B, T, C]`` again, so other hooks and the backbone's grid are unaffected.
    """

    def __call__(self, x: Tensor, layer_idx: int) -> Tensor: ...


class Backbone(nn.Module, ABC):
    """A (vision-language) ViT wrapped so adapters can reach every block and decoders get a 4-level pyramid.

    Facts the pipeline hands to the other components: ``embed_dim`` (token width c), ``num_layers`` (blocks L),
    ``patch_size``, ``mean``/``std`` (input normalisation for images scaled to [0, 1]), ``has_cls_token``,
    ``text_dim`` (width of the joint image-text space, ``None`` for vision-only backbones) and
    ``out_indices`` (the blocks whose outputs make the pyramid). ``is_vit``: the blocks exchange tokens of one
    width ``embed_dim``, so block-refining adapters (Rein, LoRA, VPT) apply; a CNN (``clip-resnet``) sets it False
    and may state per-level widths in ``out_channels`` (default ``(embed_dim,) * 4``).
    """

    embed_dim: int
    num_layers: int
    patch_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    has_cls_token: bool = True
    is_vit: bool = True
    text_dim: int | None = None
    out_indices: tuple[int, ...]
    #: Per-level widths when they differ (a CNN: 256/512/1024/2048); None means every level is ``embed_dim``.
    out_channels: tuple[int, ...] | None = None

    @abstractmethod
    def forward_features(
        self,
        x: Tensor,
        block_hooks: Sequence[BlockHook] = (),
        out_indices: Sequence[int] | None = None,
    ) -> list[Tensor]:
        """Run the blocks, calling every hook after every block; return 4 maps ``[B, embed_dim, H/s, W/s]``.

        Strides are 4, 8, 16, 32 (the outputs of ``out_indices`` resized ×4, ×2, ×1, ×0.5, as in Rein).
        """

    def forward(self, x: Tensor, block_hooks: Sequence[BlockHook] = ()) -> list[Tensor]:
        return self.forward_features(x, block_hooks=block_hooks)

    def embed(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(global_embedding [B, D], dense_embeddings [B, D, h, w])`` in the text space."""
        raise TypeError(f"{type(self).__name__} is a vision-only backbone: it has no text space")

    def forward_with_embeddings(
        self, x: Tensor, block_hooks: Sequence[BlockHook] = ()
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        """The pyramid and ``(global [B, D], dense [B, D, h, w])`` of one forward pass, adapter hooks included.

        What text-guided models call (DenseCLIP's score map needs both). Default: a ViT with a token head
        ``_head(tokens) -> (global [B, D], per-patch [B, N, D])`` (vltk's open_clip ViTs) runs once, the last
        block's tokens being captured by one more hook; any other backbone runs :meth:`forward_features` then
        :meth:`embed`. Override it when both can share work (``clip-resnet`` pools its own layer4 level).
        """
        head = getattr(self, "_head", None)
        if not (self.is_vit and self.has_cls_token and callable(head)):
            levels = self.forward_features(x, block_hooks=block_hooks)
            return (levels, *self.embed(x))
        captured: dict[str, Tensor] = {}
        last = self.num_layers - 1

        def capture(tokens: Tensor, layer_idx: int) -> Tensor:
            if layer_idx == last:
                captured["tokens"] = tokens
            return tokens

        levels = self.forward_features(x, block_hooks=(*block_hooks, capture))
        global_embedding, dense = head(captured["tokens"])
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        dense = dense.transpose(1, 2).reshape(dense.shape[0], dense.shape[2], grid[0], grid[1])
        return levels, global_embedding, dense

    def restrict_trainable(self) -> None:
        """Called by the pipeline right after ``adapter.setup(backbone)``: re-freeze what the backbone's own
        options keep fixed (``clip-resnet``'s ``trainable`` stages, frozen BN), so that restriction wins over an
        adapter's blanket ``requires_grad``. Must only switch gradients off. Default: nothing."""

    @property
    def strides(self) -> tuple[int, int, int, int]:
        return (4, 8, 16, 32)

    def pyramid_channels(self) -> tuple[int, ...]:
        """Width of each pyramid level: ``out_channels`` when the backbone states them, else ``embed_dim`` each."""
        if self.out_channels is not None:
            return tuple(int(width) for width in self.out_channels)
        return (int(self.embed_dim),) * len(self.strides)


class Adapter(nn.Module):
    """Decides what of the backbone trains and may refine every block's output (a :class:`BlockHook`).

    ``freezes_backbone``: when True the pipeline keeps the backbone in eval mode and ``setup`` has set
    ``requires_grad=False`` on all its parameters, so only the adapter (and the decoder) learn. Adapters that
    change the blocks themselves (LoRA) do it in ``setup``; ones that add tokens (VPT) define ``before_block``
    (see :class:`BlockHook`).
    """

    freezes_backbone: bool = True
    #: True when the adapter's own weights also work on a CNN backbone (``is_vit`` False: no token blocks).
    #: Adapters without weights of their own (``frozen``, ``full``) fit every backbone whatever this says.
    supports_cnn: bool = False

    def setup(self, backbone: Backbone) -> None:
        """Called once by the pipeline after construction: set ``requires_grad`` on the backbone."""
        for parameter in backbone.parameters():
            parameter.requires_grad_(not self.freezes_backbone)

    def forward(self, x: Tensor, layer_idx: int) -> Tensor:
        return x

    def queries(self) -> Tensor | None:
        """Decoder queries ``[num_queries, query_dims]`` derived from the adapter (Rein's link), or None."""
        return None

    @property
    def query_dims(self) -> int | None:
        """Width of :meth:`queries` when the adapter provides them, so decoders can size their layers."""
        return None

    def no_weight_decay_names(self) -> set[str]:
        """Names (relative to the adapter) of parameters that must not get weight decay, e.g. tokens."""
        return set()

    def backbone_lr_multipliers(self, backbone: Backbone) -> dict[str, float]:
        """Per-parameter lr multipliers for trainable backbone parameters (layer-wise decay); empty = all 1."""
        return {}


class Decoder(nn.Module, ABC):
    """Turns the pyramid (plus optional adapter queries and text embeddings) into predictions; owns its loss.

    ``forward`` returns a dict; ``seg_logits`` ``[B, K, h, w]`` (any resolution) is what :meth:`predict` uses by
    default. ``loss`` returns a dict of named terms whose ``"loss"`` entry is the total to back-propagate.
    ``sync_bn`` asks the trainer to turn the decoder's BatchNorm layers into ``nn.SyncBatchNorm`` when it trains on
    several CUDA ranks (statistics over the global batch; refused on several CPU ranks, which PyTorch does not
    support).
    """

    ignore_index: int = 255
    sync_bn: bool = False

    @abstractmethod
    def forward(
        self,
        features: list[Tensor],
        queries: Tensor | None = None,
        text_embeddings: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Predict from the pyramid; ``queries``/``text_embeddings`` are None when nothing provides them."""

    @abstractmethod
    def loss(self, outputs: dict[str, Tensor], targets: Tensor) -> dict[str, Tensor]:
        """Loss terms for ``targets`` ``[B, H, W]`` (int64, ``ignore_index`` for unlabelled pixels)."""

    def predict(self, outputs: dict[str, Tensor], image_size: tuple[int, int]) -> Tensor:
        """Per-class scores ``[B, K, H, W]`` at the input resolution (argmax gives the label map)."""
        logits = outputs["seg_logits"]
        return nn.functional.interpolate(logits, size=image_size, mode="bilinear", align_corners=False)


class DetectionDecoder(nn.Module, ABC):
    """A two-stage detection head on a split backbone (``task: detection``), e.g. ``clip-faster-rcnn``.

    ``forward(features, image_sizes, *, backbone, text_embeddings, targets=None, padded_size=None)`` takes the
    stage-a map ``[B, C_a, H/s, W/s]`` (after feature augmenters), the unpadded ``(h, w)`` of every image, the split
    backbone (its ``stage_b``/``pool`` run on the RoIs) and the prompter's class embeddings ``[K, D]``; it returns
    ``(detections, losses)``: per image ``boxes [N, 4]``, ``scores [N]``, 0-based ``labels [N]`` in eval mode, and
    the loss terms (``"loss"`` the total) in training mode.
    """

    @abstractmethod
    def forward(
        self,
        features: Tensor,
        image_sizes: Sequence[tuple[int, int]],
        *,
        backbone: SplitBackbone,
        text_embeddings: Tensor | None,
        targets: Sequence[dict[str, Tensor]] | None = None,
        padded_size: tuple[int, int] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Detections (eval) or losses (training); see the class docstring."""


@runtime_checkable
class SplitBackbone(Protocol):
    """A backbone split for a two-stage detector (CLIP the Gap's C4 layout): ``stage_a`` gives the map the RPN and
    feature augmenters see, ``stage_b`` runs on RoI features and ``pool`` embeds them in the text space.
    ``channels_a``/``channels_b``/``stride_a`` size the detection head."""

    channels_a: int
    channels_b: int
    stride_a: int

    def stage_a(self, x: Tensor) -> Tensor: ...

    def stage_b(self, x: Tensor) -> Tensor: ...

    def pool(self, x: Tensor) -> Tensor: ...


@runtime_checkable
class TextSpaceBackbone(Protocol):
    """A vision-language backbone: image embeddings in a text space of width ``text_dim``, and that space's text
    side (what prompters and text-guided augmenters encode class names and prompts with)."""

    text_dim: int | None

    def text_tower(self) -> nn.Module: ...

    def tokenizer(self) -> Any: ...

    def encode_text(self, texts: Sequence[str]) -> Tensor: ...


def require_split_backbone(backbone: Any, *, needed_by: str, backbone_name: str | None = None) -> SplitBackbone:
    """``backbone`` when it is a :class:`SplitBackbone`, else one :class:`UserError` saying who needs it."""
    missing = [name for name in ("stage_a", "stage_b", "pool") if not callable(getattr(backbone, name, None))]
    if missing:
        name = backbone_name or type(backbone).__name__
        raise UserError(
            f"{needed_by} needs a backbone split into stage_a/stage_b/pool; '{name}' has no {', '.join(missing)} "
            "(use backbone=clip-resnet)"
        )
    return backbone


def require_text_space(backbone: Any, *, needed_by: str, backbone_name: str | None = None) -> TextSpaceBackbone:
    """``backbone`` when it has a text space and text side, else one :class:`UserError` saying who needs it."""
    has_side = all(callable(getattr(backbone, name, None)) for name in ("text_tower", "tokenizer", "encode_text"))
    if getattr(backbone, "text_dim", None) is None or not has_side:
        name = backbone_name or type(backbone).__name__
        raise UserError(
            f"{needed_by} needs a vision-language backbone with a text tower; '{name}' is vision-only "
            "(use eva02, clip-vit or clip-resnet)"
        )
    return backbone


def require_adapter_fits(adapter: Adapter, backbone: Backbone, *, adapter_name: str, backbone_name: str) -> None:
    """Adapters with weights of their own refine a ViT's token blocks unless they declare ``supports_cnn``."""
    has_weights = any(True for _ in adapter.parameters())
    if not getattr(backbone, "is_vit", True) and has_weights and not adapter.supports_cnn:
        raise UserError(
            f"adapter '{adapter_name}' refines the token blocks of a ViT, but backbone '{backbone_name}' is a CNN; "
            "use adapter=frozen or adapter=full with it"
        )


class Prompter(nn.Module, ABC):
    """Class names (and optional learned context / visual context) -> text embeddings ``[K, D]`` or ``[B, K, D]``.

    The text tower is the backbone's and stays frozen; gradients still flow through it to learned context.
    Facts the pipeline and :class:`~vltk.models.DensePredictor` read (the text guidance of DenseCLIP, usable with
    any decoder): ``needs_visual_context`` (``forward`` wants ``(z̄ [B, D], z [B, D, h, w])`` from the backbone),
    ``score_concat_index`` (the pyramid level that gets the K-channel pixel-text score map appended; None = no
    concatenation), ``aux_loss_weight`` (auxiliary pixel-text cross-entropy on ``score / temperature``; 0 = off)
    and ``temperature``.
    """

    needs_visual_context: bool = False
    score_concat_index: int | None = None
    aux_loss_weight: float = 0.0
    temperature: float = 0.07
    class_names: tuple[str, ...] = ()

    @abstractmethod
    def forward(self, visual_context: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Return the class text embeddings (``[B, K, D]`` when they depend on ``visual_context``)."""

    def set_class_names(self, names: Sequence[str]) -> None:
        """Swap the label set (open-vocabulary inference); learned context is kept."""
        raise TypeError(f"{type(self).__name__} has a fixed label set")

    def score_map(self, dense: Tensor, text: Tensor) -> Tensor:
        """Pixel-text score map ``[B, K, h, w]`` of dense image embeddings ``[B, D, h, w]`` and the class
        embeddings ``[K, D]`` / ``[B, K, D]``: cosine similarity in [-1, 1] (DenseCLIP's score map, no temperature).

        A method of the prompter rather than of the core because it is where a fused op is called (components
        call ops; the core calls components): the built-in prompters use ``vltk_kernels.pixel_text_similarity``.
        """
        raise TypeError(f"{type(self).__name__} provides no pixel-text score map")


class Augmenter(nn.Module):
    """Training-time augmentation. ``stage`` is ``"image"`` (before the backbone) or ``"feature"``.

    ``forward`` is called in training mode only: image augmenters on the normalised batch, feature augmenters on
    every pyramid level (segmentation) or on the stage-a map (detection); maps they do not apply to pass through.

    Optional fit phase (CLIP the Gap): an augmenter that defines
    ``fit(model, batches, *, device=None, log=None) -> dict`` is fitted by the engine once before training;
    ``batches`` yields batches of source training images (float in [0, 1], a list of ``[3, H, W]`` or a
    ``[B, 3, H, W]`` tensor), ``model`` is the whole predictor, ``log`` takes progress lines, the returned dict is
    recorded in the run's history. It must leave the model's weights untouched and expose ``is_fitted`` (kept in
    its state dict) so a resumed run skips the phase.
    """

    stage: str = "image"

    def forward(self, x: Tensor) -> Tensor:
        return x


def named_trainable(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Parameter]]:
    """Yield ``(name, parameter)`` for parameters that require grad, with ``prefix`` prepended to names."""
    for name, parameter in module.named_parameters(prefix=prefix):
        if parameter.requires_grad:
            yield name, parameter


def count_trainable(module: nn.Module) -> int:
    """Number of trainable scalars: what the papers' "trainable parameters" columns count."""
    return sum(parameter.numel() for parameter in module.parameters() if parameter.requires_grad)


__all__ = [
    "Adapter",
    "Augmenter",
    "Backbone",
    "BlockHook",
    "Decoder",
    "DetectionDecoder",
    "Prompter",
    "SplitBackbone",
    "TextSpaceBackbone",
    "count_trainable",
    "named_trainable",
    "require_adapter_fits",
    "require_split_backbone",
    "require_text_space",
]
