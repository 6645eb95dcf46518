"""The ``denseclip`` prompter: CoOp context + DenseCLIP's post-model vision-to-language prompting.

The class embeddings ``t`` [K, D] come from learned context through the frozen text tower (:class:`CoOpPrompter`).
The image enters afterwards (the paper's "post-model" variant, the only one released): a small transformer decoder
lets the text embeddings attend to the visual context ``[z̄; z]`` (global + dense embeddings, ``[B, 1 + hw, D]``)
and returns an update ``t_diff``; the output is ``t + γ · t_diff`` with a per-channel γ starting at 1e-4, so
training starts from the plain text embeddings. Paper notes: shared/papers/denseclip_lseg_vltseg.md §A.3-A.4.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vltk.api import BuildContext, UserError, coerce_options
from vltk_plugins.denseclip.options import DenseCLIPOptions
from vltk_plugins.prompters.clip_prompts.model import CoOpPrompter, guidance_kwargs, require_text_side


class _Attention(nn.Module):
    """Multi-head attention with bias-free q/k/v projections and a biased output projection + dropout."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise UserError(f"denseclip: decoder_width {dim} is not divisible by decoder_heads {heads}")
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def _split(self, x: Tensor) -> Tensor:
        batch, length, dim = x.shape
        return x.reshape(batch, length, self.heads, dim // self.heads).transpose(1, 2)

    def forward(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        q, k, v = self._split(self.q_proj(query)), self._split(self.k_proj(key)), self._split(self.v_proj(value))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(query.shape)
        return self.proj_drop(self.proj(out))


class ContextDecoderLayer(nn.Module):
    """Pre-norm: self-attention over the K text tokens, cross-attention to the visual memory, 4x GELU MLP."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = _Attention(width, heads, dropout)
        self.cross_attn = _Attention(width, heads, dropout)
        self.norm1 = nn.LayerNorm(width)
        self.norm2 = nn.LayerNorm(width)
        self.norm3 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * width, width)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        normed = self.norm1(x)
        x = x + self.self_attn(normed, normed, normed)
        x = x + self.cross_attn(self.norm2(x), memory, memory)
        return x + self.dropout(self.mlp(self.norm3(x)))


class ContextDecoder(nn.Module):
    """DenseCLIP's ``ContextDecoder``: text ``[B, K, C_t]`` + visual ``[B, N, C_v]`` -> ``t_diff`` ``[B, K, C_t]``.

    memory_proj LN-Linear-LN and text_proj LN-Linear into ``width``; ``layers`` decoder layers; out_proj LN-Linear
    back to ``C_t``. Linear weights trunc-normal (std 0.02), biases 0; LayerNorms 1/0.
    """

    def __init__(
        self, text_dim: int, visual_dim: int, *, width: int = 256, heads: int = 4, layers: int = 3, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.memory_proj = nn.Sequential(nn.LayerNorm(visual_dim), nn.Linear(visual_dim, width), nn.LayerNorm(width))
        self.text_proj = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, width))
        self.decoder = nn.ModuleList(ContextDecoderLayer(width, heads, dropout) for _ in range(layers))
        self.out_proj = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, text_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, text: Tensor, visual: Tensor) -> Tensor:
        memory = self.memory_proj(visual)
        x = self.text_proj(text)
        for layer in self.decoder:
            x = layer(x, memory)
        return self.out_proj(x)


class DenseCLIPPrompter(CoOpPrompter):
    """CoOp text embeddings refined per image by :class:`ContextDecoder`: ``t + γ · t_diff``, ``[B, K, text_dim]``."""

    needs_visual_context = True

    def __init__(
        self,
        backbone: Any,
        class_names: Sequence[str],
        *,
        decoder_layers: int = 3,
        decoder_width: int = 256,
        decoder_heads: int = 4,
        dropout: float = 0.1,
        gamma_init: float = 1e-4,
        **coop: Any,
    ) -> None:
        super().__init__(backbone, class_names, name="denseclip", **coop)
        self.context_decoder = ContextDecoder(
            self.text_dim,
            self.text_dim,
            width=decoder_width,
            heads=decoder_heads,
            layers=decoder_layers,
            dropout=dropout,
        )
        self.gamma = nn.Parameter(torch.full((self.text_dim,), float(gamma_init)))

    def forward(self, visual_context: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """``visual_context = (z̄ [B, D], z [B, D, h, w])`` -> ``[B, K, D]``."""
        if visual_context is None:
            raise ValueError("denseclip: forward needs visual_context=(global [B, D], dense [B, D, h, w])")
        global_embedding, dense = visual_context
        if global_embedding.shape[-1] != self.text_dim or dense.shape[1] != self.text_dim:
            raise ValueError(
                f"denseclip: visual context of width {global_embedding.shape[-1]}/{dense.shape[1]} does not match "
                f"the text width {self.text_dim}"
            )
        batch = global_embedding.shape[0]
        text = self.text_embeddings()
        text = text.unsqueeze(0).expand(batch, -1, -1)
        memory = torch.cat([global_embedding.unsqueeze(1), dense.flatten(2).transpose(1, 2)], dim=1)
        memory = memory.to(text.dtype)
        return text + self.gamma.to(text.dtype) * self.context_decoder(text, memory)


def build_denseclip(options: DenseCLIPOptions | Mapping[str, Any] | None, context: BuildContext) -> DenseCLIPPrompter:
    """Factory for ``denseclip``; context: ``backbone`` and ``class_names``."""
    opts = coerce_options(options, DenseCLIPOptions, "denseclip")
    require_text_side(context, "denseclip")
    return DenseCLIPPrompter(
        context.backbone,
        context.class_names,
        n_ctx=opts.n_ctx,
        context_length=opts.context_length,
        init_std=opts.init_std,
        decoder_layers=opts.decoder_layers,
        decoder_width=opts.decoder_width,
        decoder_heads=opts.decoder_heads,
        dropout=opts.dropout,
        gamma_init=opts.gamma_init,
        **guidance_kwargs(opts, context),
    )


__all__ = ["ContextDecoder", "ContextDecoderLayer", "DenseCLIPPrompter", "build_denseclip"]
