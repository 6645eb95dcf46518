"""The ``lora`` and ``vpt`` adapters: the parameter-efficient baselines of Rein's Table 3, for every ViT backbone.

Both freeze the backbone and add a small set of trainable parameters owned by the adapter (so a backbone-less
checkpoint holds them, and they appear under ``adapter.*`` for the optimizer), without forking any model:

* **LoRA** rewrites attention weights in place with ``torch.nn.utils.parametrize``: reading ``weight`` then
  returns ``W + (alpha / r) * B @ A``. That one mechanism covers a fused ``qkv`` Linear (timm ViT/DINOv2, EVA02
  tiny/small: the row blocks of the chosen targets get updates), separate ``q_proj``/``k_proj``/``v_proj``
  (EVA02 base/large) and ``nn.MultiheadAttention.in_proj_weight`` / ``out_proj`` (open_clip's CLIP), which
  reads its weights directly and so cannot be reached by module hooks. The backbone's ``state_dict()`` keeps
  its usual key names (the parametrisation's ``.original`` is renamed back), so it still loads as
  ``pretrained``.
* **VPT** (deep) uses the optional ``before_block`` of the block-hook contract: new prompts are appended after
  the patch tokens before every block and removed by the after-block call, so the pyramid never sees them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from vltk.api import Adapter, Backbone, BuildContext, UserError, coerce_options
from vltk_plugins.adapters.peft.options import LORA_TARGETS, LoRAOptions, VPTOptions

#: One adapted weight: (module, parameter name, the target of each ``embed_dim``-row block of the weight).
WeightLayout = tuple[nn.Module, str, tuple[str, ...]]


def attention_weights(block: nn.Module) -> list[WeightLayout]:
    """The attention weights of one ViT block and which of q/k/v/proj each row block holds.

    Found by duck typing, so timm ``Attention``/``EvaAttention`` and ``nn.MultiheadAttention`` (open_clip) all
    work without a per-backbone table; anything else is a :class:`UserError`.
    """
    attention = getattr(block, "attn", None)
    if isinstance(attention, nn.MultiheadAttention):
        if attention._qkv_same_embed_dim:
            inputs: list[WeightLayout] = [(attention, "in_proj_weight", ("q", "k", "v"))]
        else:
            inputs = [(attention, f"{name}_proj_weight", (name,)) for name in ("q", "k", "v")]
        return [*inputs, (attention.out_proj, "weight", ("proj",))]
    if attention is not None and isinstance(getattr(attention, "proj", None), nn.Linear):
        if isinstance(getattr(attention, "qkv", None), nn.Linear):
            inputs = [(attention.qkv, "weight", ("q", "k", "v"))]
        elif all(isinstance(getattr(attention, f"{name}_proj", None), nn.Linear) for name in ("q", "k", "v")):
            inputs = [(getattr(attention, f"{name}_proj"), "weight", (name,)) for name in ("q", "k", "v")]
        else:
            inputs = []
        if inputs:
            return [*inputs, (attention.proj, "weight", ("proj",))]
    raise UserError(
        f"lora: block type {type(block).__name__} has no attention LoRA can find (expected .attn with qkv or "
        "q_proj/k_proj/v_proj and proj Linears, or an nn.MultiheadAttention)"
    )


class _LowRankWeight(nn.Module):
    """The parametrisation installed on one weight: adds the adapter's updates to the chosen row blocks.

    It holds no parameters of its own, only a reference to the adapter (kept out of the module tree), so the
    LoRA factors stay registered once, under the adapter.
    """

    def __init__(self, adapter: LoRA, layer_idx: int, layout: tuple[str, ...]) -> None:
        super().__init__()
        object.__setattr__(self, "_adapter", adapter)
        self.layer_idx = layer_idx
        self.layout = layout

    def forward(self, weight: Tensor) -> Tensor:
        adapter: LoRA = self._adapter  # type: ignore[assignment]
        rows = weight.shape[0] // len(self.layout)
        parts = [
            adapter.delta(target, self.layer_idx)
            if target in adapter.targets
            else weight.new_zeros(rows, weight.shape[1])
            for target in self.layout
        ]
        update = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        return weight + update.to(weight.dtype)

    def extra_repr(self) -> str:
        return f"layer={self.layer_idx}, rows={list(self.layout)}"


def _original_key(prefix: str, name: str) -> str:
    return f"{prefix}parametrizations.{name}.original"


def _plain_keys_hook(name: str) -> Any:
    """state_dict post-hook of a parametrised module: report ``original`` under the weight's own name."""

    def hook(module: nn.Module, state_dict: dict[str, Any], prefix: str, metadata: Any) -> None:
        key = _original_key(prefix, name)
        if key in state_dict:
            state_dict[prefix + name] = state_dict.pop(key)

    return hook


def _plain_keys_load_hook(name: str) -> Any:
    """load_state_dict pre-hook: accept the plain weight name (the backbone's usual layout) as ``original``."""

    def hook(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        if prefix + name in state_dict and _original_key(prefix, name) not in state_dict:
            state_dict[_original_key(prefix, name)] = state_dict.pop(prefix + name)

    return hook


def _vit_blocks(backbone: Backbone, num_layers: int, component: str) -> Sequence[nn.Module]:
    """The backbone's blocks, checked against the depth the adapter was built for."""
    blocks = getattr(backbone, "blocks", None)
    if not getattr(backbone, "is_vit", True) or not callable(blocks):
        raise UserError(f"{component}: needs a ViT backbone with blocks (eva02, clip-vit, dinov2); got {backbone}")
    found = list(blocks())
    if len(found) != num_layers:
        raise UserError(f"{component}: built for {num_layers} blocks but the backbone has {len(found)}")
    return found


class LoRA(Adapter):
    """Low-rank updates ``W + (alpha / r) * B @ A`` on the chosen attention weights of every block.

    Factors are stacked per target: ``lora_a[t]`` ``[L, r, C]`` (kaiming-uniform, PyTorch's Linear default, as in
    LoRA) and ``lora_b[t]`` ``[L, C, r]`` (zeros: the model starts as the frozen backbone). :meth:`setup`
    installs them on the backbone; :meth:`merge` bakes them into the weights for export.
    """

    freezes_backbone = True

    def __init__(
        self,
        *,
        embed_dim: int,
        num_layers: int,
        rank: int = 8,
        alpha: float = 8.0,
        targets: Sequence[str] = ("q", "v"),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        unknown = sorted(set(targets) - set(LORA_TARGETS))
        if unknown or not targets:
            raise ValueError(f"lora: targets must be a non-empty subset of {LORA_TARGETS}, got {list(targets)}")
        self.embed_dim, self.num_layers, self.rank = embed_dim, num_layers, rank
        self.targets = tuple(target for target in LORA_TARGETS if target in targets)
        self.scaling = alpha / rank
        self.alpha = alpha
        self.dropout = dropout
        self.lora_a = nn.ParameterDict(
            {target: nn.Parameter(torch.empty(num_layers, rank, embed_dim)) for target in self.targets}
        )
        self.lora_b = nn.ParameterDict(
            {target: nn.Parameter(torch.zeros(num_layers, embed_dim, rank)) for target in self.targets}
        )
        self._installed: list[tuple[nn.Module, str, list[Any]]] = []
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """A: U(-1/sqrt(C), 1/sqrt(C)) (= kaiming_uniform(a=sqrt(5)) per layer); B: zeros."""
        bound = 1.0 / math.sqrt(self.embed_dim)
        with torch.no_grad():
            for target in self.targets:
                self.lora_a[target].uniform_(-bound, bound)
                self.lora_b[target].zero_()

    def delta(self, target: str, layer_idx: int) -> Tensor:
        """The update ``(alpha / r) * B @ A`` of one ``[C, C]`` weight block."""
        down = self.lora_a[target][layer_idx]
        if self.training and self.dropout > 0:
            down = F.dropout(down, self.dropout)
        return (self.lora_b[target][layer_idx] @ down) * self.scaling

    def setup(self, backbone: Backbone) -> None:
        """Freeze the backbone, then parametrise the chosen attention weights of every block."""
        super().setup(backbone)
        if self._installed:
            raise RuntimeError("lora: setup() was already called; build a new adapter for another backbone")
        for layer_idx, block in enumerate(_vit_blocks(backbone, self.num_layers, "lora")):
            for module, name, layout in attention_weights(block):
                if not set(layout) & set(self.targets):
                    continue
                weight = getattr(module, name)
                if tuple(weight.shape) != (len(layout) * self.embed_dim, self.embed_dim):
                    raise UserError(
                        f"lora: block {layer_idx} weight '{name}' has shape {tuple(weight.shape)}, expected "
                        f"({len(layout) * self.embed_dim}, {self.embed_dim}) for embed_dim {self.embed_dim}"
                    )
                if parametrize.is_parametrized(module, name):
                    raise UserError(f"lora: block {layer_idx} weight '{name}' is already parametrised")
                parametrize.register_parametrization(module, name, _LowRankWeight(self, layer_idx, layout))
                handles = [
                    module.register_state_dict_post_hook(_plain_keys_hook(name)),
                    module.register_load_state_dict_pre_hook(_plain_keys_load_hook(name)),
                ]
                self._installed.append((module, name, handles))

    def merge(self) -> None:
        """Bake the current updates into the backbone's weights and remove the parametrisations.

        Afterwards the backbone is a plain model with the adapted weights (same outputs) and this adapter no
        longer affects it; useful for export or for timing the merged model.
        """
        with torch.no_grad():
            for module, name, handles in self._installed:
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
                for handle in handles:
                    handle.remove()
        self._installed = []

    def forward(self, x: Tensor, layer_idx: int) -> Tensor:
        return x

    def extra_repr(self) -> str:
        return (
            f"rank={self.rank}, alpha={self.alpha}, targets={list(self.targets)}, dropout={self.dropout}, "
            f"layers={self.num_layers}, installed={len(self._installed)}"
        )


class VPT(Adapter):
    """Deep visual prompts: block ``i`` sees ``num_tokens`` learnable tokens ``P_i`` appended after the patches.

    Prompts are initialised U(-v, v) with VPT's ``v = sqrt(6 / (3 * p^2 + C))`` (p = patch size): the Xavier
    bound of a patch-embedding-shaped layer. ``before_block`` appends them, the after-block call drops the
    block's prompt outputs, so every block gets fresh prompts and nothing downstream sees them.
    """

    freezes_backbone = True

    def __init__(
        self, *, embed_dim: int, num_layers: int, patch_size: int, num_tokens: int = 150, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.init_bound = math.sqrt(6.0 / (3 * patch_size**2 + embed_dim))
        self.prompts = nn.Parameter(torch.empty(num_layers, num_tokens, embed_dim))
        self.prompt_dropout = nn.Dropout(dropout)
        self._pending: tuple[int, int] | None = None  # (layer, token count before the prompts) between calls
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.prompts.uniform_(-self.init_bound, self.init_bound)

    def setup(self, backbone: Backbone) -> None:
        super().setup(backbone)
        _vit_blocks(backbone, self.prompts.shape[0], "vpt")

    def before_block(self, x: Tensor, layer_idx: int) -> Tensor:
        """Append this block's prompts: ``[B, T, C]`` -> ``[B, T + num_tokens, C]``."""
        prompts = self.prompt_dropout(self.prompts[layer_idx]).to(x.dtype)
        self._pending = (layer_idx, x.shape[1])
        return torch.cat([x, prompts.unsqueeze(0).expand(x.shape[0], -1, -1)], dim=1)

    def forward(self, x: Tensor, layer_idx: int) -> Tensor:
        """Drop the prompt outputs of block ``layer_idx``: back to ``[B, T, C]``."""
        pending, self._pending = self._pending, None
        if pending is None or pending[0] != layer_idx:
            raise RuntimeError(
                f"vpt: the backbone did not call before_block() for block {layer_idx}; it cannot take prompt tokens"
            )
        return x[:, : pending[1]]

    def no_weight_decay_names(self) -> set[str]:
        return {"prompts"}

    def extra_repr(self) -> str:
        layers, tokens, width = self.prompts.shape
        return f"layers={layers}, num_tokens={tokens}, embed_dim={width}, init_bound={self.init_bound:.4f}"


def build_lora(options: LoRAOptions | Mapping[str, Any] | None, context: BuildContext) -> LoRA:
    """Build LoRA from its options and the backbone facts ``embed_dim`` and ``num_layers``."""
    opts = coerce_options(options, LoRAOptions, "lora")
    context.require("embed_dim", "num_layers", component="adapter 'lora'")
    return LoRA(
        embed_dim=context.embed_dim,
        num_layers=context.num_layers,
        rank=opts.rank,
        alpha=opts.alpha,
        targets=opts.targets,
        dropout=opts.dropout,
    )


def build_vpt(options: VPTOptions | Mapping[str, Any] | None, context: BuildContext) -> VPT:
    """Build deep VPT from its options and the facts ``embed_dim``, ``num_layers``, ``patch_size``."""
    opts = coerce_options(options, VPTOptions, "vpt")
    context.require("embed_dim", "num_layers", "patch_size", component="adapter 'vpt'")
    return VPT(
        embed_dim=context.embed_dim,
        num_layers=context.num_layers,
        patch_size=context.patch_size,
        num_tokens=opts.num_tokens,
        dropout=opts.dropout,
    )


__all__ = ["VPT", "LoRA", "attention_weights", "build_lora", "build_vpt"]
