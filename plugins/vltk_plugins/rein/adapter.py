"""Rein as one :class:`~vltk.interfaces.Adapter` for every ViT backbone (paper notes: shared/papers/rein.md).

After every block, the patch features attend to a small set of learnable tokens of that layer; the attended
token values, passed through two MLPs shared by all layers, are added back to the features behind a gate that
starts near zero, so training starts from the frozen backbone's own features. The tokens of all layers also
become the decoder's queries ("link tokens to instances").

Parameter names match upstream ``LoRAReins`` (``learnable_tokens_a``, ``learnable_tokens_b`` or
``learnable_tokens``, ``scale``, ``mlp_token2feat``, ``mlp_delta_f``, ``transform``, ``merge``), so a released Rein
checkpoint's ``backbone.reins.X`` is this adapter's ``X``: :mod:`vltk_plugins.rein.release` holds that map (and the
head's), and ``vltk convert`` / ``vltk eval --checkpoint`` apply it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from vltk.api import Adapter, BuildContext, coerce_options
from vltk_kernels import rein_attention, rein_update
from vltk_plugins.rein.options import ReinOptions

#: Rein's token attention, ``softmax(f Tᵀ·s)[..., 1:] @ V``: feats ``[B, N, C]``, tokens ``[M, C]``, values
#: ``[M-1, C]`` (the projected tokens 1..M-1) -> ``[B, N, C]``. The softmax runs over all M tokens, so token 0
#: soaks up probability mass without contributing a value: a patch that matches no real token gets an (almost)
#: zero update. It is the ``vltk_kernels`` op, so a fused kernel replaces it without touching the adapter.
rein_token_update = rein_attention


class Rein(Adapter):
    """Rein (``LoRAReins`` upstream): per-layer learnable tokens refining a frozen ViT, plus decoder queries.

    ``forward(x, layer_idx)`` is the block hook: ``x`` is ``[B, T, C]`` batch-first, with the cls token in row 0
    when ``has_cls_token``; the cls token is returned untouched, the patch tokens are refined. With
    ``lora_dim=None`` each layer stores full tokens ``[m, c]`` instead of the product of two low-rank factors.
    """

    freezes_backbone = True

    def __init__(
        self,
        *,
        embed_dim: int,
        num_layers: int,
        patch_size: int,
        has_cls_token: bool = True,
        token_length: int = 100,
        lora_dim: int | None = 16,
        query_dims: int = 256,
        link_token_to_query: bool = True,
        scale_init: float = 1e-3,
        zero_mlp_delta_f: bool = False,
        use_softmax: bool = True,
    ) -> None:
        super().__init__()
        if token_length < 2:
            raise ValueError(f"rein: token_length must be >= 2 (token 0 is a null token), got {token_length}")
        self.embed_dim = embed_dim
        self.num_layers = num_layers
        self.patch_size = patch_size
        self.has_cls_token = has_cls_token
        self.token_length = token_length
        self.lora_dim = lora_dim
        self.link_token_to_query = link_token_to_query
        self.zero_mlp_delta_f = zero_mlp_delta_f
        self.use_softmax = use_softmax
        self._query_dims = query_dims

        # VPT-style init; the patch size enters only here (it sets the scale of the uniform bound).
        if lora_dim is None:
            bound = math.sqrt(6.0 / (3 * patch_size**2 + embed_dim))
            self.learnable_tokens = nn.Parameter(torch.empty(num_layers, token_length, embed_dim))
            nn.init.uniform_(self.learnable_tokens, -bound, bound)
        else:
            bound = math.sqrt(6.0 / (3 * patch_size**2 + math.sqrt(embed_dim * lora_dim)))
            self.learnable_tokens_a = nn.Parameter(torch.empty(num_layers, token_length, lora_dim))
            self.learnable_tokens_b = nn.Parameter(torch.empty(num_layers, lora_dim, embed_dim))
            nn.init.uniform_(self.learnable_tokens_a, -bound, bound)
            nn.init.uniform_(self.learnable_tokens_b, -bound, bound)
        self.init_bound = bound

        self.mlp_token2feat = nn.Linear(embed_dim, embed_dim)
        self.mlp_delta_f = nn.Linear(embed_dim, embed_dim)
        self.scale: nn.Parameter | float
        if zero_mlp_delta_f:
            # The update is exactly zero at init, so a small gate is pointless: it would only slow learning.
            nn.init.zeros_(self.mlp_delta_f.weight)
            nn.init.zeros_(self.mlp_delta_f.bias)
            self.scale = 1.0
        else:
            self.scale = nn.Parameter(torch.tensor(float(scale_init)))

        if link_token_to_query:
            self.transform = nn.Linear(embed_dim, query_dims)
            self.merge = nn.Linear(3 * query_dims, query_dims)

    # -- tokens -----------------------------------------------------------------------------------------------

    def _check_layer(self, layer_idx: int) -> None:
        if not 0 <= layer_idx < self.num_layers:
            raise IndexError(
                f"rein: layer_idx {layer_idx} out of range; this adapter was built for {self.num_layers} layers "
                "(it must match the backbone's num_layers)"
            )

    def layer_tokens(self, layer_idx: int) -> Tensor:
        """Tokens ``[m, c]`` of one layer (``A[i] @ B[i]`` in the LoRA variant)."""
        self._check_layer(layer_idx)
        if self.lora_dim is None:
            return self.learnable_tokens[layer_idx]
        return self.learnable_tokens_a[layer_idx] @ self.learnable_tokens_b[layer_idx]

    def all_tokens(self) -> Tensor:
        """Tokens of every layer, ``[L, m, c]``."""
        if self.lora_dim is None:
            return self.learnable_tokens
        return torch.bmm(self.learnable_tokens_a, self.learnable_tokens_b)

    # -- block hook -------------------------------------------------------------------------------------------

    def forward(self, x: Tensor, layer_idx: int) -> Tensor:
        """Refine the patch tokens of block ``layer_idx``'s output ``[B, T, C]``; same shape out.

        ``f + scale · mlp_delta_f(attend(f, tokens) + f)`` on the patch rows ``f``, the cls row untouched. The
        whole update is one ``vltk_kernels`` op (:func:`~vltk_kernels.rein_attention.rein_update`): in eager
        PyTorch it regroups the products (the projection folded into the token values, one GEMM for the scores
        and the projection, no cls split), which makes the forward+backward faster than upstream's module with
        the same results (``benchmarks/rein_adapter_speed.py``); on a GPU the token attention is the fused kernel.
        """
        if x.shape[-1] != self.embed_dim:
            raise ValueError(f"rein: expected features of width {self.embed_dim}, got shape {tuple(x.shape)}")
        # A half-precision backbone run without autocast would otherwise hit a dtype mismatch in the products.
        if self.use_softmax and self.lora_dim is not None:
            self._check_layer(layer_idx)
            h = x.to(self.learnable_tokens_a.dtype)
            tokens_a, tokens_b = self.learnable_tokens_a[layer_idx], self.learnable_tokens_b[layer_idx]
            value, delta = self.mlp_token2feat, self.mlp_delta_f
            out = rein_update(
                h, tokens_a, tokens_b, value.weight, value.bias, delta.weight, delta.bias, self.scale,
                self.embed_dim**-0.5, self.has_cls_token,
            )  # fmt: skip
            return out.to(x.dtype)
        tokens = self.layer_tokens(layer_idx)
        values = self.mlp_token2feat(tokens[1:])  # token 0 is the null token: no value
        h = x.to(tokens.dtype)
        feats = h[:, 1:] if self.has_cls_token else h
        if self.use_softmax:
            delta = rein_token_update(feats, tokens, values, self.embed_dim**-0.5)
        else:
            delta = torch.matmul(torch.matmul(feats, tokens.transpose(0, 1))[..., 1:], values)  # raw scores
        f = (feats + self.scale * self.mlp_delta_f(delta + feats)).to(x.dtype)
        return torch.cat([x[:, :1], f], dim=1) if self.has_cls_token else f

    # -- decoder link -----------------------------------------------------------------------------------------

    def queries(self) -> Tensor | None:
        """Decoder queries ``[m, query_dims]`` from all layers' tokens, or None when the link is off.

        Per token and channel, the max over layers, the mean over layers and the last layer's value are
        interleaved (``[max_0, mean_0, last_0, max_1, ...]``, not the block concatenation of the paper's Eq. 10)
        before ``merge``: the released checkpoints' ``merge.weight`` expects this order.
        """
        if not self.link_token_to_query:
            return None
        q = self.transform(self.all_tokens()).permute(1, 2, 0)  # [m, c', L]
        stacked = torch.stack([q.amax(dim=-1), q.mean(dim=-1), q[..., -1]], dim=-1)  # [m, c', 3]
        return self.merge(stacked.flatten(-2))

    @property
    def query_dims(self) -> int | None:
        return self._query_dims if self.link_token_to_query else None

    # -- optimisation -----------------------------------------------------------------------------------------

    def no_weight_decay_names(self) -> set[str]:
        """Tokens and the gate: decaying them pulls the update towards zero, which is not a useful prior here."""
        names = {"learnable_tokens"} if self.lora_dim is None else {"learnable_tokens_a", "learnable_tokens_b"}
        if isinstance(self.scale, nn.Parameter):
            names.add("scale")
        return names

    def extra_repr(self) -> str:
        return (
            f"num_layers={self.num_layers}, embed_dim={self.embed_dim}, token_length={self.token_length}, "
            f"lora_dim={self.lora_dim}, query_dims={self.query_dims}, has_cls_token={self.has_cls_token}"
        )


def build_rein(options: ReinOptions | Mapping[str, Any] | None, context: BuildContext) -> Rein:
    """Build Rein from its options and the backbone's facts ``embed_dim``, ``num_layers``, ``patch_size`` and
    ``has_cls_token`` (typed and checked by :class:`~vltk.api.BuildContext`)."""
    options = coerce_options(options, ReinOptions, "rein")
    context.require("embed_dim", "num_layers", "patch_size", component="adapter 'rein'")
    return Rein(
        embed_dim=context.embed_dim,
        num_layers=context.num_layers,
        patch_size=context.patch_size,
        has_cls_token=context.has_cls_token,
        **options.model_dump(),
    )


__all__ = ["Rein", "build_rein", "rein_token_update"]
