"""The ViT template (``vltk_plugins.common.vit``) on a toy subclass: hooks, hidden tokens, pyramid, index checks.

The real backbones (eva02, clip-vit, dinov2) are tested in ``tests/plugins/backbones``; here a few linear blocks
are enough to pin down what the template itself promises to every subclass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vltk.errors import UserError
from vltk_plugins.common.vit import (
    InputSizeError,
    TokenBackbone,
    default_out_indices,
    pyramid_resize,
    resolve_out_indices,
)


class ToyBackbone(TokenBackbone):
    """A patch conv, a cls token (+ ``hidden`` register-like tokens) and residual linear blocks."""

    def __init__(self, *, hidden: int = 0, depth: int = 4, width: int = 8, patch: int = 4) -> None:
        super().__init__(
            embed_dim=width,
            num_layers=depth,
            patch_size=patch,
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
            out_indices=None,
            label="toy",
        )
        self.num_hidden_tokens = hidden
        self.patch_embed = nn.Conv2d(3, width, patch, patch)
        self.prefix = nn.Parameter(torch.randn(1, 1 + hidden, width))
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.seen_by_blocks: list[int] = []

    def _blocks(self) -> Sequence[nn.Module]:
        return self.layers

    def _embed_tokens(self, x: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Any]:
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)
        return torch.cat([self.prefix.expand(x.shape[0], -1, -1), patches], dim=1), None

    def _run_block(self, block: nn.Module, x: Tensor, context: Any) -> Tensor:
        self.seen_by_blocks.append(x.shape[1])
        return x + block(x)


def test_default_out_indices_generalise_rein() -> None:
    assert default_out_indices(24) == (7, 11, 15, 23)
    assert default_out_indices(12) == (3, 5, 7, 11)
    assert default_out_indices(4) == (0, 1, 1, 3)


def test_resolve_out_indices() -> None:
    assert resolve_out_indices(None, 12) == (3, 5, 7, 11)
    assert resolve_out_indices([0, 1, -2, -1], 12) == (0, 1, 10, 11)
    with pytest.raises(UserError, match="4 block indices"):
        resolve_out_indices([0, 1, 2], 12)
    with pytest.raises(UserError, match=r"out of range for a backbone with 12 blocks"):
        resolve_out_indices([0, 1, 2, 12], 12)
    with pytest.raises(UserError, match="out of range"):
        resolve_out_indices([-13, 1, 2, 3], 12)


def test_pyramid_resize() -> None:
    feature = torch.randn(2, 3, 8, 12)
    assert pyramid_resize(feature, (8, 12)) is feature
    torch.testing.assert_close(pyramid_resize(feature, (4, 6)), F.max_pool2d(feature, 2))
    torch.testing.assert_close(pyramid_resize(feature, (3, 5)), F.adaptive_max_pool2d(feature, (3, 5)))
    grown = pyramid_resize(feature, (16, 24))
    torch.testing.assert_close(grown, F.interpolate(feature, size=(16, 24), mode="bilinear", align_corners=False))


def test_hooks_see_cls_and_patches_only_while_blocks_see_hidden_tokens() -> None:
    torch.manual_seed(0)
    backbone = ToyBackbone(hidden=2).eval()
    seen: list[tuple[int, tuple[int, ...]]] = []

    def hook(tokens: Tensor, layer_idx: int) -> Tensor:
        seen.append((layer_idx, tuple(tokens.shape)))
        return tokens

    with torch.no_grad():
        features = backbone.forward_features(torch.randn(2, 3, 16, 24), block_hooks=[hook])
    assert seen == [(index, (2, 1 + 4 * 6, 8)) for index in range(4)]
    assert backbone.seen_by_blocks == [1 + 2 + 4 * 6] * 4
    assert [tuple(f.shape) for f in features] == [(2, 8, 16 // s or 1, 24 // s or 1) for s in (4, 8, 16, 32)]


def test_hidden_tokens_are_carried_between_blocks() -> None:
    """Blocks see the hidden tokens the previous block produced (not the embedded ones again)."""
    torch.manual_seed(0)
    backbone = ToyBackbone(hidden=1).eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        tokens, _ = backbone._embed_tokens(x, (2, 2))
        for block in backbone.layers:
            tokens = tokens + block(tokens)
        expected = torch.cat([tokens[:, :1], tokens[:, 2:]], dim=1)
        last, taken = backbone.forward_tokens(x, take=[3])
    torch.testing.assert_close(last, expected)
    assert taken[3] is last


def test_extra_tokens_must_be_removed_by_the_hooks_after_the_block() -> None:
    backbone = ToyBackbone().eval()

    class AddsTwo:
        def before_block(self, tokens: Tensor, layer_idx: int) -> Tensor:
            return torch.cat([tokens, tokens[:, :2]], dim=1)

        def __call__(self, tokens: Tensor, layer_idx: int) -> Tensor:
            return tokens[:, :-2]

    class ForgetsToRemove(AddsTwo):
        def __call__(self, tokens: Tensor, layer_idx: int) -> Tensor:
            return tokens

    with torch.no_grad():
        backbone.forward_features(torch.randn(1, 3, 8, 8), block_hooks=[AddsTwo()])
        assert backbone.seen_by_blocks == [1 + 4 + 2] * 4
        with pytest.raises(ValueError, match="2 extra tokens added before block 0 were not removed"):
            backbone.forward_features(torch.randn(1, 3, 8, 8), block_hooks=[ForgetsToRemove()])


def test_patch_grid_checks_the_input() -> None:
    backbone = ToyBackbone()
    assert backbone.patch_grid(torch.empty(1, 3, 8, 12)) == (2, 3)
    with pytest.raises(InputSizeError, match=r"toy: input 8x10 is not a multiple of the patch size 4.*8x8"):
        backbone.patch_grid(torch.empty(1, 3, 8, 10))
    with pytest.raises(ValueError, match=r"expected images \[B, 3, H, W\]"):
        backbone.patch_grid(torch.empty(1, 1, 8, 8))
    assert issubclass(InputSizeError, UserError) and issubclass(InputSizeError, ValueError)
