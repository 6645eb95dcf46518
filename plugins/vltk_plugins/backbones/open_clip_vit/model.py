"""The ``eva02`` and ``clip-vit`` backbones: open_clip models wrapped so adapters reach every block.

Both wrap an open_clip ``CustomTextCLIP`` and never re-implement its blocks. What the wrapper owns is the
bookkeeping the :class:`~vltk.interfaces.Backbone` contract asks for and open_clip does not offer:

* **any input size.** open_clip builds towers for one image size. For EVA02 the timm trunk is created with
  ``dynamic_img_size=True`` (timm then resamples the absolute position embedding and rebuilds RoPE for every
  grid); for CLIP's native ``VisionTransformer`` the wrapper resamples ``positional_embedding`` with timm's
  ``resample_abs_pos_embed`` and caches the result per grid while the embedding is not being trained.
* **block hooks.** The wrapper iterates ``trunk.blocks`` / ``transformer.resblocks`` itself and calls
  ``x = hook(x, layer_idx)`` after every block with batch-first ``[B, 1 + N, C]`` tokens (cls first), and a
  hook's optional ``before_block`` before it (extra trailing tokens such as VPT prompts; EVA02 gives them an
  identity RoPE rotation). That loop is :class:`TokenBackbone`, shared with the timm ``dinov2`` backbone.
* **the 4-level pyramid.** Patch tokens of ``out_indices`` are reshaped to ``[B, C, H/p, W/p]`` and resized
  parameter-free to strides 4/8/16/32 (bilinear up, max-pool down), as Rein's backbones do.
* **the text space.** :meth:`embed` returns open_clip's global image embedding and, MaskCLIP-style, the same final
  norm + projection applied to every patch token (no attention surgery); :meth:`text_tower` and
  :meth:`tokenizer` give prompters the matching text encoder and an offline tokenizer.

open_clip does not pass timm kwargs through its config, so ``dynamic_img_size`` and a patch-size override reach
timm through tiny registered entry points (``vltk_<arch>_p<patch>_dyn``) that call timm's own architecture
function with those two overrides: one model build, no architecture copied.

Weights: ``pretrained=None`` gives random weights (one warning); otherwise a local open_clip checkpoint. A
checkpoint with another patch size or position grid is converted with timm's resampling helpers (Rein runs
EVA02-L and CLIP-L at patch 16 this way); any other shape difference is a :class:`~vltk.errors.UserError`.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vltk.api import Backbone, BlockHook, UserError, coerce_options, did_you_mean
from vltk_plugins.backbones.open_clip_vit.options import ClipViTOptions, Eva02Options
from vltk_plugins.common.attention import install_attention

logger = logging.getLogger(__name__)

#: CLIP's input normalisation (open_clip uses it for OpenAI CLIP, LAION CLIP and EVA02-CLIP alike).
OPENAI_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

#: variant -> (timm architecture, native patch, open_clip config name or None for the built-in tiny/small CLIP).
EVA02_VARIANTS: dict[str, tuple[str, int, str | None]] = {
    "tiny": ("eva02_tiny_patch14_224", 16, None),
    "small": ("eva02_small_patch14_224", 16, None),
    "base": ("eva02_base_patch16_clip_224", 16, "EVA02-B-16"),
    "large": ("eva02_large_patch14_clip_224", 14, "EVA02-L-14"),
}

#: Text towers and joint widths of the EVA02 variants that have no released CLIP weights. Small on purpose:
#: tiny is what the tests and the CPU recipe build, so it must construct and run in a fraction of a second.
_EVA02_SMALL_CLIP: dict[str, dict[str, Any]] = {
    "tiny": {
        "embed_dim": 256,
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2},
    },
    "small": {
        "embed_dim": 384,
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 256, "heads": 4, "layers": 4},
    },
}

#: The ``clip-vit`` ``tiny`` variant: 4 blocks, 64 wide, patch 16; builds in milliseconds.
TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 224, "layers": 4, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


class InputSizeError(UserError, ValueError):
    """The image is not a whole number of patches: crop or pad it (a user setting, hence :class:`UserError`)."""


def default_out_indices(num_layers: int) -> tuple[int, int, int, int]:
    """Rein's ``[7, 11, 15, 23]`` for 24 blocks generalised to ``L`` blocks: ``L//3-1, L//2-1, 2L//3-1, L-1``.

    For 12 blocks that is ``[3, 5, 7, 11]``; very shallow test models repeat blocks rather than fail.
    """
    raw = (num_layers // 3 - 1, num_layers // 2 - 1, 2 * num_layers // 3 - 1, num_layers - 1)
    return tuple(max(0, index) for index in raw)  # type: ignore[return-value]


def resolve_out_indices(out_indices: Sequence[int] | None, num_layers: int) -> tuple[int, ...]:
    """Validate ``out_indices`` (4 entries, negative from the end) against ``num_layers``; None -> the default."""
    if out_indices is None:
        return default_out_indices(num_layers)
    indices = [int(index) for index in out_indices]
    if len(indices) != 4:
        raise UserError(f"out_indices needs 4 block indices (one per pyramid level), got {indices}")
    resolved = tuple(index + num_layers if index < 0 else index for index in indices)
    if any(not 0 <= index < num_layers for index in resolved):
        raise UserError(f"out_indices {indices} out of range for a backbone with {num_layers} blocks")
    return resolved


def _resize(feature: Tensor, size: tuple[int, int]) -> Tensor:
    """Parameter-free resize: identity, max-pool when shrinking, bilinear when growing (Rein's fpn1..fpn4 maps)."""
    height, width = feature.shape[-2:]
    if (height, width) == size:
        return feature
    if size[0] <= height and size[1] <= width:
        if height % size[0] == 0 and width % size[1] == 0 and height // size[0] == width // size[1]:
            return F.max_pool2d(feature, kernel_size=height // size[0])
        return F.adaptive_max_pool2d(feature, size)
    return F.interpolate(feature, size=size, mode="bilinear", align_corners=False)


def _text_state_dict_hook(module: OpenClipBackbone, state_dict: dict[str, Any], prefix: str, metadata: Any) -> None:
    """Add the (unregistered) text tower and logit scale to ``state_dict()``: checkpoints stay self-contained."""
    clip = module.open_clip_model()
    for key, value in clip.text.state_dict().items():
        state_dict[f"{prefix}text.{key}"] = value
    for name in ("logit_scale", "logit_bias"):
        parameter = getattr(clip, name, None)
        if isinstance(parameter, nn.Parameter):
            state_dict[prefix + name] = parameter.detach()


def _text_load_hook(
    module: OpenClipBackbone,
    state_dict: dict[str, Any],
    prefix: str,
    metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """Take the text entries out of ``state_dict`` and load them into the text tower (absent entries: kept)."""
    clip = module.open_clip_model()
    text_prefix = f"{prefix}text."
    text_state = {
        key[len(text_prefix) :]: state_dict.pop(key) for key in list(state_dict) if key.startswith(text_prefix)
    }
    with torch.no_grad():
        for name in ("logit_scale", "logit_bias"):
            value = state_dict.pop(prefix + name, None)
            parameter = getattr(clip, name, None)
            if value is not None and isinstance(parameter, nn.Parameter):
                parameter.copy_(value.reshape(parameter.shape))
    if not text_state:
        return
    try:
        result = clip.text.load_state_dict(text_state, strict=False)
    except RuntimeError as error:
        error_msgs.append(str(error))
        return
    missing_keys.extend(text_prefix + key for key in result.missing_keys)
    unexpected_keys.extend(text_prefix + key for key in result.unexpected_keys)


class TokenBackbone(Backbone):
    """The block loop every ViT backbone shares: input checks, block hooks, hidden tokens, the 4-level pyramid.

    Subclasses say how to embed an image into tokens (:meth:`_embed_tokens`), which blocks to run
    (:meth:`_blocks`) and how to call one (:meth:`_run_block`); everything an adapter relies on lives here once:

    * hooks see batch-first ``[B, 1 + N, C]`` tokens (cls first) after every block, in order;
    * a hook with a ``before_block(x, layer_idx)`` method may append extra tokens at the end of the sequence
      before a block (VPT's deep prompts); after that block's hooks the sequence must be ``[B, 1 + N, C]``
      again (the hook that added them removes them), so the grid bookkeeping never sees them;
    * ``num_hidden_tokens`` tokens right after the cls token (DINOv2's registers) go through every block but are
      taken out of what hooks see and put back before the next block, so adapters need not know about them.
    """

    #: Tokens between the cls token and the patch tokens that blocks see and hooks do not (DINOv2 registers).
    num_hidden_tokens: int = 0

    def __init__(
        self,
        *,
        embed_dim: int,
        num_layers: int,
        patch_size: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        out_indices: Sequence[int] | None,
        label: str,
    ) -> None:
        super().__init__()
        self.embed_dim = int(embed_dim)
        self.num_layers = int(num_layers)
        self.patch_size = int(patch_size)
        self.mean = mean
        self.std = std
        self.has_cls_token = True
        self.out_indices = resolve_out_indices(out_indices, self.num_layers)
        self.grad_checkpointing = False
        self.label = label

    # ----------------------------------------------------------------------------------------------- subclass API
    @abstractmethod
    def _blocks(self) -> Sequence[nn.Module]:
        """The transformer blocks, in order (timm ``blocks`` / open_clip ``transformer.resblocks``)."""

    @abstractmethod
    def _embed_tokens(self, x: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Any]:
        """Patchify + cls (+ hidden tokens) + position information: ``[B, 1 + R + N, C]`` and the per-block
        context (EVA's RoPE); ``R`` is :attr:`num_hidden_tokens`."""

    @abstractmethod
    def _run_block(self, block: nn.Module, x: Tensor, context: Any) -> Tensor:
        """Run one block on batch-first tokens with the context from :meth:`_embed_tokens`.

        ``x`` may carry extra tokens at the end (added by a hook's ``before_block``): blocks must treat them as
        tokens without a grid position.
        """

    # ------------------------------------------------------------------------------------------------ forward
    def blocks(self) -> Sequence[nn.Module]:
        """The transformer blocks in order: what adapters such as LoRA modify in place."""
        return self._blocks()

    def _grid(self, x: Tensor) -> tuple[int, int]:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.label}: expected images [B, 3, H, W], got shape {tuple(x.shape)}")
        height, width = x.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise InputSizeError(
                f"{self.label}: input {height}x{width} is not a multiple of the patch size {self.patch_size}; "
                f"crop or pad to e.g. {height // self.patch_size * self.patch_size or self.patch_size}x"
                f"{width // self.patch_size * self.patch_size or self.patch_size}"
            )
        return height // self.patch_size, width // self.patch_size

    def _block(self, block: nn.Module, tokens: Tensor, hidden: Tensor | None, context: Any) -> tuple[Tensor, Any]:
        """One block on ``[cls, hidden, patches, extra]``; returns the visible tokens and the new hidden ones."""
        if hidden is not None:
            tokens = torch.cat([tokens[:, :1], hidden, tokens[:, 1:]], dim=1)
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            tokens = checkpoint(self._run_block, block, tokens, context, use_reentrant=False)
        else:
            tokens = self._run_block(block, tokens, context)
        if hidden is None:
            return tokens, None
        count = hidden.shape[1]
        return torch.cat([tokens[:, :1], tokens[:, 1 + count :]], dim=1), tokens[:, 1 : 1 + count]

    def _check_hook(
        self, hook: Any, index: int, before: Tensor, after: Tensor, *, low: int, high: int | None, stage: str
    ) -> None:
        """A hook keeps batch and width; its token count must lie in ``[low, high]`` (``None``: no upper bound)."""
        ok = after.ndim == 3 and after.shape[0] == before.shape[0] and after.shape[2] == before.shape[2]
        if not ok or after.shape[1] < low or (high is not None and after.shape[1] > high):
            tokens = low if low == high else f"{low}..{'' if high is None else high}"
            raise ValueError(
                f"{self.label}: block hook {getattr(hook, '__name__', type(hook).__name__)} returned "
                f"{tuple(after.shape)} {stage} block {index}, expected [{before.shape[0]}, {tokens}, "
                f"{before.shape[2]}]"
            )

    def forward_tokens(
        self, x: Tensor, block_hooks: Sequence[BlockHook] = (), take: Sequence[int] = ()
    ) -> tuple[Tensor, dict[int, Tensor]]:
        """Run every block, calling the hooks after each; return the last tokens and those of blocks ``take``.

        Tokens are batch-first ``[B, 1 + N, C]`` before the final norm (hidden tokens left out). This is the one
        loop :meth:`forward_features` and ``embed`` use, so a caller needing both can call it once.
        """
        grid = self._grid(x)
        tokens, context = self._embed_tokens(x, grid)
        hidden = None
        if self.num_hidden_tokens:
            count = self.num_hidden_tokens
            tokens, hidden = torch.cat([tokens[:, :1], tokens[:, 1 + count :]], dim=1), tokens[:, 1 : 1 + count]
        visible = tokens.shape[1]
        before_hooks = [hook for hook in block_hooks if callable(getattr(hook, "before_block", None))]
        wanted = set(take)
        taken: dict[int, Tensor] = {}
        for index, block in enumerate(self._blocks()):
            for hook in before_hooks:
                extended = hook.before_block(tokens, index)  # type: ignore[attr-defined]
                self._check_hook(hook, index, tokens, extended, low=tokens.shape[1], high=None, stage="before")
                tokens = extended
            tokens, hidden = self._block(block, tokens, hidden, context)
            for hook in block_hooks:
                updated = hook(tokens, index)
                # a hook keeps the shape or drops trailing extra tokens; after the last one they must be gone
                self._check_hook(hook, index, tokens, updated, low=visible, high=tokens.shape[1], stage="after")
                tokens = updated
            if tokens.shape[1] != visible:
                raise ValueError(
                    f"{self.label}: {tokens.shape[1] - visible} extra tokens added before block {index} were not "
                    "removed by the block hooks after it"
                )
            if index in wanted:
                taken[index] = tokens
        return tokens, taken

    def tokens_to_map(self, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        """``[B, 1 + N, C]`` (cls first) -> patch map ``[B, C, h, w]``."""
        batch, _, channels = tokens.shape
        return tokens[:, 1:].transpose(1, 2).reshape(batch, channels, grid[0], grid[1])

    def forward_features(
        self,
        x: Tensor,
        block_hooks: Sequence[BlockHook] = (),
        out_indices: Sequence[int] | None = None,
    ) -> list[Tensor]:
        """4 maps ``[B, embed_dim, H/s, W/s]`` for s = 4, 8, 16, 32 from the patch tokens of ``out_indices``.

        Sizes are ``H // s`` (at least 1), so patch 14 inputs get the same strides as patch 16 ones.
        """
        indices = self.out_indices if out_indices is None else resolve_out_indices(out_indices, self.num_layers)
        grid = self._grid(x)
        _, taken = self.forward_tokens(x, block_hooks, take=indices)
        height, width = x.shape[-2:]
        return [
            _resize(self.tokens_to_map(taken[index], grid), (max(1, height // stride), max(1, width // stride)))
            for index, stride in zip(indices, self.strides, strict=True)
        ]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in backward (training only): trades ~30% time for activation memory."""
        self.grad_checkpointing = bool(enable)

    def extra_repr(self) -> str:
        return (
            f"{self.label}, embed_dim={self.embed_dim}, num_layers={self.num_layers}, patch_size={self.patch_size}, "
            f"text_dim={self.text_dim}, out_indices={list(self.out_indices)}"
        )


class ClipTextSide:
    """The text half of an open_clip model kept beside an image-tower backbone (``self._clip``).

    The text tower is not a registered submodule (so it stays out of the backbone's parameters, optimiser and
    ``requires_grad`` bookkeeping) but moves and casts with the backbone. Prompters reach it through these
    methods, whatever the image tower is (ViT, EVA02 timm tower or ModifiedResNet).
    """

    _clip: nn.Module
    _tokenizer: Any = None
    _tokenizer_kwargs: dict[str, Any] = {}

    def open_clip_model(self) -> nn.Module:
        """The whole open_clip model (image tower shared with this backbone, ``logit_scale``...)."""
        return self._clip

    def text_tower(self) -> nn.Module:
        """open_clip's text tower matching this image tower (frozen, eval mode).

        ``text_tower()(tokenizer()(names))`` gives ``[K, text_dim]`` embeddings. Prompt learners (CoOp/DenseCLIP)
        use its ``token_embedding``, ``positional_embedding``, ``transformer``, ``ln_final``,
        ``text_projection`` and ``attn_mask`` directly.
        """
        return self._clip.text

    def tokenizer(self) -> Callable[..., Tensor]:
        """open_clip's BPE ``SimpleTokenizer`` (vocabulary ships with open_clip: offline), built once."""
        if self._tokenizer is None:
            from open_clip.tokenizer import SimpleTokenizer

            self._tokenizer = SimpleTokenizer(context_length=self._clip.text.context_length, **self._tokenizer_kwargs)
        return self._tokenizer

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """Tokenise and encode ``texts`` with the text tower: ``[K, text_dim]``, not normalised."""
        device = next(self._clip.text.parameters()).device
        return self._clip.text(self.tokenizer()(list(texts)).to(device))

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Any:
        """Move/cast the unregistered text tower (and logit scale) together with the image tower."""
        super()._apply(fn, recurse)  # type: ignore[misc]
        self._clip.text._apply(fn, recurse)
        for name in ("logit_scale", "logit_bias"):
            parameter = getattr(self._clip, name, None)
            if isinstance(parameter, nn.Parameter):
                converted = fn(parameter.data)
                if torch._has_compatible_shallow_copy_type(parameter.data, converted):
                    parameter.data = converted
                else:  # e.g. meta -> cpu (to_empty): a new parameter, as nn.Module._apply does
                    setattr(self._clip, name, nn.Parameter(converted, requires_grad=parameter.requires_grad))
        return self


class OpenClipBackbone(ClipTextSide, TokenBackbone):
    """Shared machinery of the open_clip ViT backbones: the token loop of :class:`TokenBackbone` + the text side.

    The open_clip model is kept whole in a non-registered attribute (:meth:`open_clip_model`); only its image
    tower is a registered submodule (``visual``), so ``parameters()``, adapters' freezing, optimizers, DDP and
    layer-decay rules see the image tower alone. The text tower is frozen, stays in eval mode, follows the
    backbone's ``.to()``/``.half()`` (see :meth:`_apply`) and is handed to prompters by :meth:`text_tower`; a
    prompter that wants to train it registers it as its own submodule and unfreezes it there.
    ``state_dict()`` nevertheless holds it (``text.*``, ``logit_scale``): the backbone's state dict is exactly an
    open_clip checkpoint, so a run's checkpoint restores a random text tower too and can serve as ``pretrained``.
    """

    def __init__(
        self,
        clip: nn.Module,
        *,
        embed_dim: int,
        num_layers: int,
        patch_size: int,
        out_indices: Sequence[int] | None,
        tokenizer_kwargs: Mapping[str, Any] | None = None,
        label: str,
    ) -> None:
        super().__init__(
            embed_dim=embed_dim,
            num_layers=num_layers,
            patch_size=patch_size,
            mean=OPENAI_MEAN,
            std=OPENAI_STD,
            out_indices=out_indices,
            label=label,
        )
        self.visual = clip.visual
        object.__setattr__(self, "_clip", clip)  # not a submodule: keeps the text tower out of parameters()
        clip.text.requires_grad_(False).eval()
        for name in ("logit_scale", "logit_bias"):
            parameter = getattr(clip, name, None)
            if isinstance(parameter, nn.Parameter):
                parameter.requires_grad_(False)
        self.text_dim = int(clip.text.output_dim)
        self._tokenizer_kwargs = dict(tokenizer_kwargs or {})
        self._tokenizer: Any = None
        self.register_state_dict_post_hook(_text_state_dict_hook)
        self.register_load_state_dict_pre_hook(_text_load_hook)

    @abstractmethod
    def _head(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Final tokens -> (global ``[B, D]``, per-patch ``[B, N, D]``) in the text space."""

    def embed(self, x: Tensor, block_hooks: Sequence[BlockHook] = ()) -> tuple[Tensor, Tensor]:
        """``(global [B, D], dense [B, D, H/p, W/p])`` in the CLIP text space (not L2-normalised).

        global: open_clip's image embedding (its pooling, final norm and projection). dense: MaskCLIP-style, the
        same final norm + projection applied to every patch token of the last block; simple and
        attention-free, it is what DenseCLIP-like decoders compare with text embeddings.
        """
        grid = self._grid(x)
        tokens, _ = self.forward_tokens(x, block_hooks)
        global_embedding, dense = self._head(tokens)
        batch, _, dims = dense.shape
        return global_embedding, dense.transpose(1, 2).reshape(batch, dims, grid[0], grid[1])


def _identity_rope_for_extra(rope: Tensor | None, tokens: int) -> Tensor | None:
    """timm's concatenated ``[sin | cos]`` RoPE table for ``tokens`` rotated tokens: rows beyond the grid (extra
    tokens a hook appended, e.g. VPT prompts) get sin 0 / cos 1, an identity rotation, like the cls token."""
    if rope is None or rope.shape[-2] >= tokens:
        return rope
    half = rope.shape[-1] // 2
    extra = tokens - rope.shape[-2]
    identity = torch.cat([rope.new_zeros(extra, half), rope.new_ones(extra, half)], dim=-1)
    return torch.cat([rope, identity.expand(*rope.shape[:-2], extra, 2 * half)], dim=-2)


class Eva02Backbone(OpenClipBackbone):
    """EVA02-CLIP image tower (open_clip ``TimmModel`` around a timm ``Eva`` with ``dynamic_img_size``).

    Blocks get timm's RoPE for the current grid, exactly as ``Eva.forward_features`` passes it.
    """

    def __init__(self, clip: nn.Module, *, out_indices: Sequence[int] | None, label: str) -> None:
        trunk = clip.visual.trunk
        if trunk.num_prefix_tokens != 1 or not trunk.dynamic_img_size or getattr(trunk, "rope_mixed", False):
            raise ValueError(f"{label}: expected a timm Eva trunk with one cls token, dynamic_img_size, axial RoPE")
        super().__init__(
            clip,
            embed_dim=trunk.embed_dim,
            num_layers=len(trunk.blocks),
            patch_size=trunk.patch_embed.patch_size[0],
            out_indices=out_indices,
            label=label,
        )

    @property
    def trunk(self) -> nn.Module:
        return self.visual.trunk

    def _blocks(self) -> Sequence[nn.Module]:
        return self.visual.trunk.blocks

    def _embed_tokens(self, x: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Any]:
        trunk = self.visual.trunk
        tokens = trunk.patch_embed(x)  # NHWC in dynamic mode
        tokens, rope = trunk._pos_embed(tokens)  # resampled abs pos embed + RoPE for this grid, cls prepended
        return trunk.norm_pre(tokens), rope

    def _run_block(self, block: nn.Module, x: Tensor, context: Any) -> Tensor:
        return block(x, rope=_identity_rope_for_extra(context, x.shape[1] - self.visual.trunk.num_prefix_tokens))

    def _head(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        trunk, head = self.visual.trunk, self.visual.head
        tokens = trunk.norm(tokens)
        global_embedding = head(trunk.forward_head(tokens))
        dense = head(trunk.head(trunk.head_drop(trunk.fc_norm(tokens[:, 1:]))))
        return global_embedding, dense


class ClipViTBackbone(OpenClipBackbone):
    """open_clip's native ``VisionTransformer`` (OpenAI / LAION CLIP); position embedding resampled per grid."""

    def __init__(
        self,
        clip: nn.Module,
        *,
        out_indices: Sequence[int] | None,
        tokenizer_kwargs: Mapping[str, Any] | None,
        label: str,
    ) -> None:
        visual = clip.visual
        if visual.attn_pool is not None:
            raise UserError(f"{label}: attentional-pool image towers (CoCa) have no per-patch tokens to use")
        super().__init__(
            clip,
            embed_dim=visual.transformer.width,
            num_layers=len(visual.transformer.resblocks),
            patch_size=visual.patch_size[0],
            out_indices=out_indices,
            tokenizer_kwargs=tokenizer_kwargs,
            label=label,
        )
        self._pos_cache: dict[tuple[Any, ...], Tensor] = {}

    def _blocks(self) -> Sequence[nn.Module]:
        return self.visual.transformer.resblocks

    def position_embedding(self, grid: tuple[int, int]) -> Tensor:
        """``positional_embedding`` resampled (bicubic, timm) to ``grid``: ``[1 + h*w, C]``.

        Cached per grid while the embedding is not being trained; the key includes the tensor's version, so
        loading new weights or an optimizer step invalidates it.
        """
        from timm.layers import resample_abs_pos_embed

        positional = self.visual.positional_embedding
        if tuple(grid) == tuple(self.visual.grid_size):
            return positional
        cacheable = not (positional.requires_grad and torch.is_grad_enabled())
        key = (tuple(grid), positional.device, positional.dtype, positional._version, positional.data_ptr())
        if cacheable and key in self._pos_cache:
            return self._pos_cache[key]
        resampled = resample_abs_pos_embed(
            positional.unsqueeze(0), new_size=list(grid), old_size=list(self.visual.grid_size), num_prefix_tokens=1
        ).squeeze(0)
        if cacheable:
            if len(self._pos_cache) >= 8:
                self._pos_cache.clear()
            self._pos_cache[key] = resampled
        return resampled

    def _embed_tokens(self, x: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Any]:
        visual = self.visual
        patches = visual.conv1(x).flatten(2).transpose(1, 2)  # [B, N, C]
        cls = visual.class_embedding.to(patches.dtype).view(1, 1, -1).expand(patches.shape[0], -1, -1)
        tokens = torch.cat([cls, patches], dim=1) + self.position_embedding(grid).to(patches.dtype)
        # open_clip's patch dropout is skipped: dense prediction needs the full grid.
        return visual.ln_pre(tokens), None

    def _run_block(self, block: nn.Module, x: Tensor, context: Any) -> Tensor:
        if self.visual.transformer.batch_first:
            return block(x)
        return block(x.transpose(0, 1)).transpose(0, 1)  # sequence-first blocks, batch-first hooks

    def _head(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        visual = self.visual
        pooled, _ = visual._pool(tokens)  # open_clip's own pooling and final norm order
        dense = visual.ln_post(tokens[:, 1:])
        if visual.proj is not None:
            pooled, dense = pooled @ visual.proj, dense @ visual.proj
        return pooled, dense

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> ClipViTBackbone:
        self._pos_cache.clear()
        return super()._apply(fn, recurse)


# ------------------------------------------------------------------------------------------------------ weights
def _read_state_dict(path: str, label: str, what: str = "open_clip checkpoint") -> dict[str, Tensor]:
    """A state dict of tensors from a local file: raw, under 'state_dict'/'model', ``module.``-prefixed, or
    .safetensors; anything unreadable is a :class:`UserError` saying what to pass instead."""
    file = Path(path).expanduser()
    how = (
        f"pass pretrained=<path to a local {what}> (a torch.save'd state dict, raw or under "
        "'state_dict'/'model', or .safetensors), or pretrained=null for random weights"
    )
    if not file.is_file():
        raise UserError(f"{label}: pretrained file '{path}' does not exist; {how}")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded: Any = load_file(str(file), device="cpu")
        else:
            loaded = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable file is the same user problem
        raise UserError(
            f"{label}: could not read '{path}' as a state dict ({type(error).__name__}: {error}); {how} "
            "(TorchScript archives such as OpenAI's ViT-*.pt must be converted with open_clip first)"
        ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(wrapper), Mapping):
            loaded = loaded[wrapper]
    if not isinstance(loaded, Mapping) or not loaded or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise UserError(f"{label}: '{path}' does not hold a state dict of tensors; {how}")
    state = dict(loaded)
    if all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    return state


def _resample_spatial(
    state: dict[str, Tensor],
    target: Mapping[str, Tensor],
    patch_key: str,
    pos_key: str,
    grid: tuple[int, int],
    label: str,
    num_prefix_tokens: int = 1,
) -> None:
    """Convert a checkpoint's patch kernel and position grid to this model's (timm helpers, FlexiViT/bicubic).

    ``num_prefix_tokens`` position rows (the cls entry) are kept as they are; the rest must be a square grid.
    Anything else that differs is left for the shape check to report.
    """
    from timm.layers import resample_abs_pos_embed, resample_patch_embed

    kernel, wanted = state.get(patch_key), target.get(patch_key)
    if kernel is not None and wanted is not None and kernel.shape != wanted.shape:
        if kernel.ndim == 4 and kernel.shape[:2] == wanted.shape[:2]:
            state[patch_key] = resample_patch_embed(kernel.float(), list(wanted.shape[-2:])).to(kernel.dtype)
            logger.info("%s: resampled %s %s -> %s", label, patch_key, tuple(kernel.shape), tuple(wanted.shape))
    positions, wanted = state.get(pos_key), target.get(pos_key)
    if positions is not None and wanted is not None and positions.shape != wanted.shape:
        cells = positions.shape[-2] - num_prefix_tokens
        side = math.isqrt(max(cells, 0))
        if positions.shape[-1] == wanted.shape[-1] and cells > 0 and side * side == cells:
            batched = positions if positions.ndim == 3 else positions.unsqueeze(0)
            resampled = resample_abs_pos_embed(
                batched.float(), new_size=list(grid), old_size=[side, side], num_prefix_tokens=num_prefix_tokens
            )
            state[pos_key] = (resampled if positions.ndim == 3 else resampled.squeeze(0)).to(positions.dtype)
            logger.info("%s: resampled %s %s -> %s", label, pos_key, tuple(positions.shape), tuple(wanted.shape))


def load_pretrained(
    clip: nn.Module,
    path: str,
    *,
    vision_prefix: str,
    patch_key: str,
    pos_key: str,
    grid: tuple[int, int],
    label: str,
) -> None:
    """Load a local open_clip checkpoint into ``clip`` with errors a user can act on.

    Accepts open_clip state dicts in either text layout (``CLIP`` or ``CustomTextCLIP``), ``module.``-prefixed
    ones, and vision-only ones (keys under ``visual.`` or bare image-tower keys, prefixed with ``vision_prefix``);
    a missing text tower only warns. Patch-size/grid differences are resampled; any other shape difference, a
    missing image-tower key or an unknown key raises :class:`UserError` naming the key.
    """
    from open_clip.model import convert_to_custom_text_state_dict

    state = convert_to_custom_text_state_dict(_read_state_dict(path, label))
    target = clip.state_dict()
    if not any(key.startswith(("visual.", "text.")) for key in state):
        state = {vision_prefix + key: value for key, value in state.items()}
    for name in ("logit_scale", "logit_bias"):
        if name in state and name in target and state[name].ndim != target[name].ndim:
            state[name] = state[name].reshape(target[name].shape)
    _resample_spatial(state, target, patch_key, pos_key, grid, label)
    missing = check_fit(state, target, path=path, label=label)
    missing_vision = [key for key in missing if key.startswith("visual.")]
    if missing_vision:
        raise UserError(
            f"{label}: '{path}' lacks {len(missing_vision)} image-tower keys (first: {missing_vision[:3]}); check "
            "variant/model"
        )
    missing_text = [key for key in missing if key.startswith("text.")]
    all_text = [key for key in target if key.startswith("text.")]
    if missing_text and len(missing_text) != len(all_text):
        raise UserError(f"{label}: '{path}' has an incomplete text tower (missing {missing_text[:3]})")
    if missing_text:
        warnings.warn(f"{label}: '{path}' has no text tower; the text tower keeps random weights", stacklevel=3)
    clip.load_state_dict(state, strict=False)


def check_fit(state: Mapping[str, Tensor], target: Mapping[str, Tensor], *, path: str, label: str) -> list[str]:
    """Raise :class:`UserError` for a key of another shape or a key the model lacks; return the missing keys.

    Run after :func:`_resample_spatial`, so a shape difference left here is one no conversion can fix.
    """
    for key, wanted in target.items():
        if key in state and state[key].shape != wanted.shape:
            raise UserError(
                f"{label}: '{path}' does not fit this model: '{key}' has shape {tuple(state[key].shape)} in the "
                f"file but {tuple(wanted.shape)} in the model; check variant/model/patch_size"
            )
    unexpected = [key for key in state if key not in target]
    if unexpected:
        raise UserError(
            f"{label}: '{path}' has {len(unexpected)} keys this model lacks (first: {unexpected[:3]}); is it a "
            "checkpoint of another model? check variant/model"
        )
    return [key for key in target if key not in state]


def warn_random(label: str, what: str = "open_clip checkpoint") -> None:
    """The one-line warning every backbone gives when it is built without weights."""
    warnings.warn(
        f"{label}: pretrained=None, so the backbone has random weights; pass pretrained=<local {what}> for "
        "meaningful features",
        stacklevel=3,
    )


# ---------------------------------------------------------------------------------------------------- builders
def timm_entrypoint(architecture: str, patch_size: int) -> str:
    """Register (once per process) and return a timm name building ``architecture`` at ``patch_size`` with
    ``dynamic_img_size=True``: how those two kwargs reach timm through open_clip's ``timm_model_name``."""
    import timm
    from timm.models import register_model

    name = f"vltk_{architecture}_p{patch_size}_dyn"
    if timm.is_model(name):
        return name

    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)
        return timm.create_model(architecture, pretrained=False, patch_size=patch_size, dynamic_img_size=True, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    globals()[name] = entrypoint  # register_model lists the name in this module's __all__: make it importable
    register_model(entrypoint)
    return name


def eva02_config(options: Eva02Options) -> dict[str, Any]:
    """The open_clip ``CustomTextCLIP`` config of an EVA02 variant (nothing built: cheap, used by tests)."""
    import open_clip

    architecture, native_patch, config_name = EVA02_VARIANTS[options.variant]
    patch_size = options.patch_size or native_patch
    if config_name is not None:
        config = open_clip.get_model_config(config_name)
    else:
        small = _EVA02_SMALL_CLIP[options.variant]
        config = {
            "embed_dim": small["embed_dim"],
            "vision_cfg": {"image_size": 224, "timm_pool": "token", "timm_proj": "linear"},
            "text_cfg": dict(small["text_cfg"]),
        }
    config.pop("custom_text", None)
    config["vision_cfg"] = {
        **config["vision_cfg"],
        "timm_model_name": timm_entrypoint(architecture, patch_size),
        "timm_model_pretrained": False,
        "timm_drop_path": options.drop_path_rate,
        "patch_dropout": 0.0,
    }
    return config


def _initialise(clip: nn.Module, pretrained: str | None, label: str, **keys: Any) -> None:
    """Load a local checkpoint into the open_clip model, or say once that its weights are random."""
    if pretrained is None:
        warn_random(label)
    else:
        load_pretrained(clip, pretrained, label=label, **keys)


def build_eva02(options: Eva02Options, context: Any = None) -> Eva02Backbone:
    """Build the ``eva02`` backbone; extra keyword ``context`` from the pipeline is accepted and ignored."""
    import open_clip

    options = coerce_options(options, Eva02Options, "eva02")
    label = f"eva02 ({options.variant})"
    clip = open_clip.CustomTextCLIP(**eva02_config(options))
    _initialise(
        clip,
        options.pretrained,
        label,
        vision_prefix="visual.trunk.",
        patch_key="visual.trunk.patch_embed.proj.weight",
        pos_key="visual.trunk.pos_embed",
        grid=tuple(clip.visual.trunk.patch_embed.grid_size),
    )
    backbone = Eva02Backbone(clip, out_indices=options.out_indices, label=label)
    install_attention(backbone, options.attention)
    return backbone


def _native_vit_names() -> list[str]:
    import open_clip

    names = []
    for name in open_clip.list_models():
        config = open_clip.get_model_config(name) or {}
        vision, text = config.get("vision_cfg", {}), config.get("text_cfg", {})
        if (
            not vision.get("timm_model_name")
            and isinstance(vision.get("layers", 12), int)
            and not vision.get("attentional_pool")
            and not text.get("hf_model_name")
            and not text.get("hf_tokenizer_name")
            and "multimodal_cfg" not in config
        ):
            names.append(name)
    return names


def clip_vit_config(options: ClipViTOptions) -> dict[str, Any]:
    """The open_clip config for ``clip-vit``; unsupported names/configs raise :class:`UserError` (offline only)."""
    import open_clip

    if options.variant == "tiny":
        config = copy.deepcopy(TINY_CLIP_CONFIG)
    else:
        name = options.model
        if name.startswith("hf-hub:"):
            raise UserError(f"clip-vit: '{name}' needs the Hugging Face hub; vltk builds models offline")
        config = open_clip.get_model_config(name)
        if config is None:
            names = _native_vit_names()
            raise UserError(
                f"clip-vit: unknown open_clip model '{name}';{did_you_mean(name, names)} "
                f"native-ViT configs: {', '.join(names)}"
            )
        vision, text = config.get("vision_cfg", {}), config.get("text_cfg", {})
        if vision.get("timm_model_name") or not isinstance(vision.get("layers", 12), int):
            raise UserError(
                f"clip-vit: '{name}' has no native open_clip ViT image tower (timm or ResNet); use the eva02 "
                "backbone for EVA02 configs"
            )
        if text.get("hf_model_name") or text.get("hf_tokenizer_name") or "multimodal_cfg" in config:
            raise UserError(f"clip-vit: '{name}' needs a Hugging Face text tower/tokenizer or is CoCa (unsupported)")
    config.pop("custom_text", None)
    config["vision_cfg"] = {**config["vision_cfg"], "patch_dropout": 0.0}
    if options.patch_size is not None:
        config["vision_cfg"]["patch_size"] = options.patch_size
    return config


def build_clip_vit(options: ClipViTOptions, context: Any = None) -> ClipViTBackbone:
    """Build the ``clip-vit`` backbone; extra keyword ``context`` from the pipeline is accepted and ignored."""
    import open_clip

    options = coerce_options(options, ClipViTOptions, "clip-vit")
    label = f"clip-vit ({'tiny' if options.variant == 'tiny' else options.model})"
    config = clip_vit_config(options)
    tokenizer_kwargs = config.get("text_cfg", {}).get("tokenizer_kwargs") or {}
    try:
        clip = open_clip.CustomTextCLIP(**config)
    except TypeError as error:
        raise UserError(f"{label}: this open_clip config is not supported ({error})") from None
    _initialise(
        clip,
        options.pretrained,
        label,
        vision_prefix="visual.",
        patch_key="visual.conv1.weight",
        pos_key="visual.positional_embedding",
        grid=tuple(clip.visual.grid_size),
    )
    backbone = ClipViTBackbone(clip, out_indices=options.out_indices, tokenizer_kwargs=tokenizer_kwargs, label=label)
    install_attention(backbone, options.attention)
    return backbone


__all__ = [
    "EVA02_VARIANTS",
    "TINY_CLIP_CONFIG",
    "ClipViTBackbone",
    "Eva02Backbone",
    "InputSizeError",
    "OpenClipBackbone",
    "TokenBackbone",
    "build_clip_vit",
    "build_eva02",
    "check_fit",
    "clip_vit_config",
    "default_out_indices",
    "eva02_config",
    "load_pretrained",
    "resolve_out_indices",
    "timm_entrypoint",
    "warn_random",
]
