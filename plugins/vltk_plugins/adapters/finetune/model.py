"""The two baseline adapters every adapter paper compares against: ``frozen`` (train only the decoder) and ``full``.

Both are adapters rather than pipeline flags so that "what trains" is always decided in one place, and a run
file switches between Rein, frozen and full fine-tuning by changing one name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from vltk.api import Adapter, BuildContext, coerce_options
from vltk_plugins.adapters.finetune.options import FrozenOptions, FullOptions

#: ``blocks.{i}.`` (timm, DINOv2, EVA), ``resblocks.{i}.`` (open_clip / OpenAI CLIP), ``layers.{i}.`` (mmseg BEiT)
#: and ``layer.{i}.`` (Hugging Face) anywhere in a dotted parameter name; the number is the block index.
BLOCK_PATTERN = re.compile(r"(?:^|\.)(?:blocks|resblocks|layers|layer)\.(\d+)\.")

#: Name components of the parameters that sit before the first block (patch/position/cls embeddings and the
#: pre-block norms): they get the strongest decay, ``layer_decay ** (L + 1)``.
EMBEDDING_NAMES = frozenset(
    {
        "patch_embed",
        "conv1",
        "pos_embed",
        "positional_embedding",
        "cls_token",
        "class_embedding",
        "mask_token",
        "reg_token",
        "register_tokens",
        "ln_pre",
        "norm_pre",
        "embeddings",
        "position_embeddings",
    }
)


class FrozenAdapter(Adapter):
    """Freeze the whole backbone and leave its features as they are (the "Freeze" column of Rein's tables)."""

    freezes_backbone = True

    def forward(self, x: Tensor, layer_idx: int) -> Tensor:
        return x


class FullAdapter(Adapter):
    """Fine-tune every backbone parameter, optionally with layer-wise lr decay (the "Full" baseline).

    Layer decay follows BEiT / mmseg's ``LayerDecayOptimizerConstructor``: deeper blocks move more than shallow
    ones, which keeps the pretrained low-level features closer to where they started.
    """

    freezes_backbone = False

    def __init__(self, layer_decay: float = 1.0) -> None:
        super().__init__()
        if not 0.0 < layer_decay <= 1.0:
            raise ValueError(f"full: layer_decay must be in (0, 1], got {layer_decay}")
        self.layer_decay = layer_decay

    def forward(self, x: Tensor, layer_idx: int) -> Tensor:
        return x

    def backbone_lr_multipliers(self, backbone: nn.Module) -> dict[str, float]:
        """``{parameter name: lr multiplier}`` for the backbone's trainable parameters; empty when decay is off.

        Block ``i`` gets ``decay ** (L - i)``, embeddings ``decay ** (L + 1)``, anything else (final norm,
        projections after the last block) 1.0. Names are found by pattern (:data:`BLOCK_PATTERN`,
        :data:`EMBEDDING_NAMES`), so any timm / open_clip / DINOv2 style backbone works without a per-model table.
        ``L`` is ``backbone.num_layers`` (or one more than the largest block index found, if that is larger).
        """
        if self.layer_decay == 1.0:
            return {}
        groups: dict[str, int | str] = {}
        for name, parameter in backbone.named_parameters():
            if not parameter.requires_grad:
                continue
            match = BLOCK_PATTERN.search(name)
            if match is not None:
                groups[name] = int(match.group(1))
            elif EMBEDDING_NAMES.intersection(name.split(".")):
                groups[name] = "embed"
            else:
                groups[name] = "head"
        block_indices = [group for group in groups.values() if isinstance(group, int)]
        num_layers = getattr(backbone, "num_layers", None)
        if not isinstance(num_layers, int) or isinstance(num_layers, bool):
            num_layers = 0
        num_layers = max([num_layers, *(index + 1 for index in block_indices)])
        multipliers: dict[str, float] = {}
        for name, group in groups.items():
            if group == "embed":
                multipliers[name] = self.layer_decay ** (num_layers + 1)
            elif group == "head":
                multipliers[name] = 1.0
            else:
                multipliers[name] = self.layer_decay ** (num_layers - int(group))
        return multipliers

    def extra_repr(self) -> str:
        return f"layer_decay={self.layer_decay}"


def build_frozen(
    options: FrozenOptions | Mapping[str, Any] | None, context: BuildContext | None = None
) -> FrozenAdapter:
    """Factory for ``frozen``; it needs no build-context facts."""
    coerce_options(options, FrozenOptions, "frozen")
    return FrozenAdapter()


def build_full(options: FullOptions | Mapping[str, Any] | None, context: BuildContext | None = None) -> FullAdapter:
    """Factory for ``full``; it needs no build-context facts (the layer count is read at use time)."""
    opts = coerce_options(options, FullOptions, "full")
    return FullAdapter(layer_decay=opts.layer_decay)


__all__ = [
    "BLOCK_PATTERN",
    "EMBEDDING_NAMES",
    "FrozenAdapter",
    "FullAdapter",
    "build_frozen",
    "build_full",
]
