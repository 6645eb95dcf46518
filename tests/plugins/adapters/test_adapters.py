"""The ``frozen`` and ``full`` baseline adapters: who trains, identity hooks, layer-wise lr decay by name."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from vltk.context import BuildContext
from vltk.interfaces import Adapter, count_trainable
from vltk_plugins.adapters.finetune.model import FrozenAdapter, FullAdapter, build_frozen, build_full
from vltk_plugins.adapters.finetune.options import FrozenOptions, FullOptions

CONTEXT = {"embed_dim": 8, "num_layers": 3, "patch_size": 4, "has_cls_token": True, "num_classes": 19}


class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.mlp = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm1(x))


class _PatchEmbed(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = nn.Linear(3, width)


class _TimmLike(nn.Module):
    """timm / DINOv2 naming: patch_embed, cls_token, pos_embed, blocks.{i}, norm, head."""

    def __init__(self, width: int = 8, depth: int = 3, num_layers: int | None = 3) -> None:
        super().__init__()
        if num_layers is not None:
            self.num_layers = num_layers
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, width))
        self.patch_embed = _PatchEmbed(width)
        self.blocks = nn.ModuleList(_Block(width) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor, block_hooks: tuple = ()) -> torch.Tensor:
        x = self.patch_embed.proj(x) + self.pos_embed[:, 1:]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        for index, block in enumerate(self.blocks):
            x = block(x)
            for hook in block_hooks:
                x = hook(x, index)
        return self.head(self.norm(x))


class _Transformer(nn.Module):
    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(_Block(width) for _ in range(depth))


class _Visual(nn.Module):
    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 4, 4, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(5, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = _Transformer(width, depth)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, 4))


class _OpenClipLike(nn.Module):
    """open_clip naming under a wrapper: model.visual.{conv1, ..., transformer.resblocks.{i}, ln_post, proj}."""

    def __init__(self, width: int = 8, depth: int = 4) -> None:
        super().__init__()
        self.num_layers = depth
        self.model = nn.Module()
        self.model.visual = _Visual(width, depth)


def _x() -> torch.Tensor:
    return torch.randn(2, 4, 3)


# -- frozen -------------------------------------------------------------------------------------------------------


def test_frozen_freezes_and_is_identity() -> None:
    torch.manual_seed(0)
    backbone = _TimmLike()
    adapter = build_frozen(FrozenOptions(), BuildContext(**CONTEXT))
    assert isinstance(adapter, FrozenAdapter) and isinstance(adapter, Adapter)
    assert adapter.freezes_backbone
    assert list(adapter.parameters()) == []
    x = torch.randn(2, 5, 8)
    assert adapter(x, 0) is x
    assert adapter.queries() is None and adapter.query_dims is None
    assert adapter.no_weight_decay_names() == set()

    adapter.setup(backbone)
    assert count_trainable(backbone) == 0
    decoder = nn.Linear(2, 1)  # something must train for backward to run
    decoder(backbone(_x(), (adapter,))).sum().backward()
    assert all(p.grad is None for p in backbone.parameters())
    assert decoder.weight.grad is not None
    assert adapter.backbone_lr_multipliers(backbone) == {}


def test_frozen_output_equals_no_hook() -> None:
    torch.manual_seed(0)
    backbone, x = _TimmLike(), _x()
    assert torch.equal(backbone(x, (build_frozen(None),)), backbone(x))


# -- full ---------------------------------------------------------------------------------------------------------


def test_full_trains_everything() -> None:
    torch.manual_seed(0)
    backbone = _TimmLike()
    for p in backbone.blocks[1].parameters():
        p.requires_grad_(False)
    adapter = build_full(FullOptions(), BuildContext(**CONTEXT))
    assert isinstance(adapter, FullAdapter)
    assert not adapter.freezes_backbone
    assert list(adapter.parameters()) == []
    adapter.setup(backbone)
    assert count_trainable(backbone) == sum(p.numel() for p in backbone.parameters())
    x = torch.randn(2, 5, 8)
    assert adapter(x, 2) is x
    backbone(_x(), (adapter,)).sum().backward()
    assert all(p.grad is not None for p in backbone.parameters())


def test_full_without_decay_returns_empty() -> None:
    assert build_full(None).backbone_lr_multipliers(_TimmLike()) == {}
    assert build_full({"layer_decay": 1.0}).backbone_lr_multipliers(_TimmLike()) == {}


def test_full_layer_decay_timm_names() -> None:
    decay, depth = 0.65, 3
    backbone = _TimmLike(depth=depth, num_layers=depth)
    multipliers = build_full(FullOptions(layer_decay=decay), BuildContext(**CONTEXT)).backbone_lr_multipliers(backbone)
    assert multipliers.keys() == dict(backbone.named_parameters()).keys()
    for name in ("cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"):
        assert multipliers[name] == pytest.approx(decay ** (depth + 1))
    for i in range(depth):
        for suffix in ("norm1.weight", "norm1.bias", "mlp.weight", "mlp.bias"):
            assert multipliers[f"blocks.{i}.{suffix}"] == pytest.approx(decay ** (depth - i))
    for name in ("norm.weight", "norm.bias", "head.weight", "head.bias"):
        assert multipliers[name] == 1.0
    # monotone: shallower layers never get a larger lr than deeper ones
    assert multipliers["pos_embed"] < multipliers["blocks.0.mlp.weight"] < multipliers["blocks.2.mlp.weight"] < 1.0


def test_full_layer_decay_open_clip_names() -> None:
    decay, depth = 0.9, 4
    backbone = _OpenClipLike(depth=depth)
    multipliers = build_full(FullOptions(layer_decay=decay)).backbone_lr_multipliers(backbone)
    prefix = "model.visual."
    for name in ("conv1.weight", "class_embedding", "positional_embedding", "ln_pre.weight", "ln_pre.bias"):
        assert multipliers[prefix + name] == pytest.approx(decay ** (depth + 1))
    for i in range(depth):
        assert multipliers[f"{prefix}transformer.resblocks.{i}.mlp.weight"] == pytest.approx(decay ** (depth - i))
    for name in ("ln_post.weight", "proj"):
        assert multipliers[prefix + name] == 1.0


def test_full_layer_count_inferred_without_attribute() -> None:
    decay = 0.5
    backbone = _TimmLike(depth=5, num_layers=None)
    multipliers = build_full(FullOptions(layer_decay=decay)).backbone_lr_multipliers(backbone)
    assert multipliers["blocks.4.mlp.bias"] == pytest.approx(decay)
    assert multipliers["blocks.0.mlp.bias"] == pytest.approx(decay**5)
    assert multipliers["cls_token"] == pytest.approx(decay**6)


def test_full_multipliers_skip_frozen_parameters() -> None:
    backbone = _TimmLike()
    backbone.head.weight.requires_grad_(False)
    multipliers = build_full(FullOptions(layer_decay=0.8)).backbone_lr_multipliers(backbone)
    assert "head.weight" not in multipliers and "head.bias" in multipliers


# -- options / factories ------------------------------------------------------------------------------------------


def test_options_validation() -> None:
    assert FullOptions().layer_decay == 1.0
    assert FrozenOptions().model_dump() == {}
    assert all(field.description for field in FullOptions.model_fields.values())
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValidationError):
            FullOptions(layer_decay=bad)
    with pytest.raises(ValidationError, match="layer_decy"):
        FullOptions(layer_decy=0.9)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        FrozenOptions(anything=1)  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        FullAdapter(layer_decay=0.0)


def test_factories_ignore_context_and_check_options_type() -> None:
    assert build_full({"layer_decay": 0.7}, BuildContext(embed_dim=8, text_dim=None, in_channels=3)).layer_decay == 0.7
    with pytest.raises(TypeError, match="FullOptions"):
        build_full(FrozenOptions())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="FrozenOptions"):
        build_frozen(FullOptions())  # type: ignore[arg-type]


def test_options_module_does_not_import_torch() -> None:
    code = "import sys, vltk_plugins.adapters.finetune.options; assert 'torch' not in sys.modules, 'torch imported'"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
