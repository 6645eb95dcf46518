"""Mask2Former's transformer decoder layers (mmdet ``Mask2FormerTransformerDecoder`` semantics, plain PyTorch).

A layer is post-norm: masked cross-attention from the queries to one pyramid level, LayerNorm, self-attention
among the queries, LayerNorm, ReLU FFN, LayerNorm. Masked attention is the paper's key idea: each query only
attends to the pixels its previous mask prediction covers (sigmoid >= 0.5), which is what makes a 9-layer
decoder converge quickly. The attention blocks are ``nn.MultiheadAttention`` (the module mmcv wraps), so
parameter shapes and counts match the reference implementation.
"""

from __future__ import annotations

from torch import Tensor, nn


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
    ) -> Tensor:
        """``query``/``query_pos`` ``[B, Q, C]``; ``memory``/``memory_pos`` ``[B or 1, S, C]``; ``attn_mask``
        ``[B * heads, Q, S]`` bool, True where a query may **not** look (the ``nn.MultiheadAttention`` convention).

        Positional encodings are added to queries and keys, never to values.
        """
        attended = self.cross_attn(
            query + query_pos, memory + memory_pos, memory, attn_mask=attn_mask, need_weights=False
        )[0]
        query = self.norms[0](query + attended)
        with_pos = query + query_pos
        query = self.norms[1](query + self.self_attn(with_pos, with_pos, query, need_weights=False)[0])
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


__all__ = ["Mask2FormerDecoderLayer", "Mask2FormerTransformerDecoder"]
