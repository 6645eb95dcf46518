"""What every ViT backbone shares: the block loop with hooks, the 4-level pyramid, input and out-index checks.

The ``eva02``, ``clip-vit`` and ``dinov2`` backbones wrap three different block implementations (timm's EVA,
open_clip's ``VisionTransformer``, timm's DINOv2) but must behave identically for adapters and decoders: hooks see
batch-first ``[B, 1 + N, C]`` tokens (cls first) after every block, VPT-style hooks may add trailing tokens
before a block, register tokens are hidden, and ``forward_features`` returns maps at strides 4/8/16/32 sized
``H // s``. That contract is written once here, as the template :class:`TokenBackbone`; a backbone subclasses it
and says only how to embed an image, which blocks to run and how to call one.

Also here, because they belong to that contract: :func:`default_out_indices` / :func:`resolve_out_indices` (which
blocks feed the pyramid), :func:`pyramid_resize` (the parameter-free resize to each stride, as in Rein) and
:class:`InputSizeError` (an image that is not a whole number of patches).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vltk.api import Backbone, BlockHook, UserError


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


def pyramid_resize(feature: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize a ``[B, C, h, w]`` patch map to one pyramid level without parameters (Rein's fpn1..fpn4 maps).

    Identity at the same size; max-pool when shrinking (a plain ``max_pool2d`` for an integer factor shared by
    both sides, adaptive otherwise); bilinear (``align_corners=False``) when growing.
    """
    height, width = feature.shape[-2:]
    if (height, width) == size:
        return feature
    if size[0] <= height and size[1] <= width:
        if height % size[0] == 0 and width % size[1] == 0 and height // size[0] == width // size[1]:
            return F.max_pool2d(feature, kernel_size=height // size[0])
        return F.adaptive_max_pool2d(feature, size)
    return F.interpolate(feature, size=size, mode="bilinear", align_corners=False)


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

    The three underscore methods are the template a subclass fills in (overridden, never called from outside);
    callers use :meth:`forward_features`, :meth:`forward_tokens`, :meth:`patch_grid` and :meth:`blocks`.
    ``text_dim`` stays ``None`` (vision-only) unless the subclass has a text space and sets it.
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

    def patch_grid(self, x: Tensor) -> tuple[int, int]:
        """The patch grid ``(H/p, W/p)`` of images ``x``; anything but ``[B, 3, H, W]`` in whole patches raises.

        A size that is not a multiple of the patch size is an :class:`InputSizeError` suggesting a crop size.
        """
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
        grid = self.patch_grid(x)
        tokens, context = self._embed_tokens(x, grid)
        hidden = None
        if self.num_hidden_tokens:
            count = self.num_hidden_tokens
            tokens, hidden = torch.cat([tokens[:, :1], tokens[:, 1 + count :]], dim=1), tokens[:, 1 : 1 + count]
        visible = tokens.shape[1]
        before_hooks = [hook for hook in block_hooks if callable(getattr(hook, "before_block", None))]
        wanted = set(take)
        taken: dict[int, Tensor] = {}
        recompute = self.grad_checkpointing and torch.is_grad_enabled()
        for index, block in enumerate(self._blocks()):
            layer = (index, block, tokens, hidden, context, block_hooks, before_hooks, visible)
            if recompute:  # block and its hooks together: Rein/LoRA/VPT activations are recomputed too
                tokens, hidden = checkpoint(self._layer, *layer, use_reentrant=False)
            else:
                tokens, hidden = self._layer(*layer)
            if index in wanted:
                taken[index] = tokens
        return tokens, taken

    def _layer(
        self,
        index: int,
        block: nn.Module,
        tokens: Tensor,
        hidden: Tensor | None,
        context: Any,
        block_hooks: Sequence[BlockHook],
        before_hooks: Sequence[BlockHook],
        visible: int,
    ) -> tuple[Tensor, Tensor | None]:
        """Block ``index`` with the hooks before and after it: the unit that activation checkpointing recomputes.

        Hooks run inside it so their activations are recomputed as well, and so that a stateful pair such as
        VPT's ``before_block``/after-block call runs together again in the recomputation.
        """
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
        return tokens, hidden

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
        grid = self.patch_grid(x)
        _, taken = self.forward_tokens(x, block_hooks, take=indices)
        height, width = x.shape[-2:]
        return [
            pyramid_resize(self.tokens_to_map(taken[index], grid), (max(1, height // stride), max(1, width // stride)))
            for index, stride in zip(indices, self.strides, strict=True)
        ]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block and its hooks in backward (the ``grad_checkpointing`` option): ~30% more compute
        for keeping only the tokens between blocks (``torch.utils.checkpoint``, non-reentrant, RNG state preserved
        so dropout and drop-path recompute identically). On whenever gradients are recorded, not only in train
        mode: a frozen backbone stays in eval mode while Rein's hooks inside it train."""
        self.grad_checkpointing = bool(enable)

    def extra_repr(self) -> str:
        return (
            f"{self.label}, embed_dim={self.embed_dim}, num_layers={self.num_layers}, patch_size={self.patch_size}, "
            f"text_dim={self.text_dim}, out_indices={list(self.out_indices)}"
        )


__all__ = ["InputSizeError", "TokenBackbone", "default_out_indices", "pyramid_resize", "resolve_out_indices"]
