"""Mask2Former's transformer decoder layers (mmdet ``Mask2FormerTransformerDecoder`` semantics, plain PyTorch).

A layer is post-norm: masked cross-attention from the queries to one pyramid level, LayerNorm, self-attention
among the queries, LayerNorm, ReLU FFN, LayerNorm. Masked attention is the paper's key idea: each query only
attends to the pixels its previous mask prediction covers (sigmoid >= 0.5), which is what makes a 9-layer
decoder converge quickly. The attention blocks hold their weights in ``nn.MultiheadAttention`` (the module mmcv
wraps), so parameter names, shapes and counts match the reference implementation and its checkpoints.

The forward does not go through ``nn.MultiheadAttention.forward``, which wants the mask repeated per head
(``[B * heads, Q, S]``) and turns a boolean mask into a float copy of that size on every call: :func:`attend`
projects with the module's own weights and calls ``F.scaled_dot_product_attention`` with one additive mask
``[B, 1, Q, S]`` broadcast over the heads (the self-attention's query and key projections are one GEMM, as
they read the same input). The result is ``nn.MultiheadAttention``'s (dropout 0), tested against it.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F


def attend(
    attn: nn.MultiheadAttention, query: Tensor, key: Tensor | None, value: Tensor, mask: Tensor | None = None
) -> Tensor:
    """``nn.MultiheadAttention(query, key, value, attn_mask)[0]`` of a batch-first module without dropout.

    ``key=None`` means ``key is query`` (self-attention: the q and k projections are one GEMM). ``mask`` is an
    additive float mask broadcastable to ``[B, heads, Q, S]`` (``-inf`` where a query may not look), typically
    ``[B, 1, Q, S]``.
    """
    batch, num_queries, dim = query.shape
    heads = attn.num_heads
    weight, bias = attn.in_proj_weight, attn.in_proj_bias
    if key is None:
        q, k = F.linear(query, weight[: 2 * dim], bias[: 2 * dim]).chunk(2, dim=-1)
    else:
        q = F.linear(query, weight[:dim], bias[:dim])
        k = F.linear(key, weight[dim : 2 * dim], bias[dim : 2 * dim])
    v = F.linear(value, weight[2 * dim :], bias[2 * dim :])

    def split(x: Tensor) -> Tensor:  # [B, L, C] -> [B, heads, L, C / heads]
        return x.unflatten(-1, (heads, dim // heads)).transpose(1, 2)

    if mask is not None and mask.dtype != q.dtype:  # autocast computes q in half precision
        mask = mask.to(q.dtype)
    out = F.scaled_dot_product_attention(split(q), split(k.expand(batch, -1, -1)), split(v.expand(batch, -1, -1)), mask)
    return attn.out_proj(out.transpose(1, 2).reshape(batch, num_queries, dim))


class Mask2FormerDecoderLayer(nn.Module):
    """Cross-attention (masked) -> norm -> self-attention -> norm -> FFN -> norm, all residual, dropout 0."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.self_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Linear(ffn_dim, dim))
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(3)])

    def forward(
        self,
        query: Tensor,
        query_pos: Tensor,
        memory: Tensor,
        memory_pos: Tensor,
        attn_mask: Tensor | None = None,
        memory_key: Tensor | None = None,
    ) -> Tensor:
        """``query``/``query_pos`` ``[B, Q, C]``; ``memory``/``memory_pos`` ``[B or 1, S, C]``; ``attn_mask``
        ``[B, 1, Q, S]`` additive float (``-inf`` where a query may **not** look; see ``head.attention_mask``).

        Positional encodings are added to queries and keys, never to values. ``memory_key`` is
        ``memory + memory_pos`` when the caller has it: the head computes it once per level, so the layers that
        read a level share one key tensor (and the one copy their key projections keep for the backward).
        """
        key = memory + memory_pos if memory_key is None else memory_key
        attended = attend(self.cross_attn, query + query_pos, key, memory, attn_mask)
        query = self.norms[0](query + attended)
        query = self.norms[1](query + attend(self.self_attn, query + query_pos, None, query))
        return self.norms[2](query + self.ffn(query))


class Mask2FormerTransformerDecoder(nn.Module):
    """The stack of decoder layers plus the final LayerNorm applied before every prediction."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Mask2FormerDecoderLayer(dim, num_heads, ffn_dim) for _ in range(num_layers))
        self.post_norm = nn.LayerNorm(dim)

    def reset_parameters(self) -> None:
        """Xavier-normal on every matrix (mmdet's head init); LayerNorms and biases keep their defaults."""
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_normal_(parameter)


__all__ = ["Mask2FormerDecoderLayer", "Mask2FormerTransformerDecoder", "attend"]
