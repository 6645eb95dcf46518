"""Mask2Former's pixel decoder: a multi-scale deformable-attention encoder over strides 8/16/32 plus an FPN step.

Semantics follow mmdet's ``MSDeformAttnPixelDecoder`` (the one Rein's configs use), written in plain PyTorch:

1. the three lowest-resolution inputs (strides 32, 16, 8, in that order) go through a 1x1 conv + GroupNorm to
   ``hidden_dim`` channels; each gets a sine positional encoding plus a learned per-level embedding;
2. the flattened, concatenated levels pass through ``enc_layers`` post-norm layers of multi-scale deformable
   self-attention (every position samples ``enc_points`` points per head on every level around its own
   normalised centre) and a ReLU FFN;
3. the stride-4 input gets a lateral 1x1 conv + GN, plus the bilinearly upsampled stride-8 encoder output, then a
   3x3 conv + GN + ReLU; a 1x1 conv of that gives the mask features (stride 4).

The sampling itself is the ``vltk_kernels.ms_deform_attn`` op, so a fused kernel replaces it without touching
this module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from vltk_kernels import ms_deform_attn
from vltk_plugins.decoders.mask2former.lean import layer_norm_then_linear, linear_on_sum
from vltk_plugins.decoders.mask2former.options import GN_GROUPS


def sine_positional_encoding(height: int, width: int, num_feats: int, *, device: torch.device) -> Tensor:
    """DETR's normalised sine encoding of an unpadded ``height x width`` grid: ``[1, 2 * num_feats, H, W]``.

    The row and column indices (1-based) are scaled to (0, 2π]; channel pairs hold sin/cos at geometrically
    spaced frequencies (temperature 10000). The first ``num_feats`` channels encode y, the last ``num_feats`` x.
    No padding masks: every image in a batch shares one size, so one encoding is broadcast over the batch.
    """
    eps, scale, temperature = 1e-6, 2 * math.pi, 10000.0
    y = torch.arange(1, height + 1, dtype=torch.float32, device=device) / (height + eps) * scale
    x = torch.arange(1, width + 1, dtype=torch.float32, device=device) / (width + eps) * scale
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)

    def encode(positions: Tensor) -> Tensor:  # [n] -> [n, num_feats] with sin on even, cos on odd channels
        angles = positions[:, None] / dim_t
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=-1).flatten(1)

    pos_y = encode(y)[:, None, :].expand(height, width, num_feats)
    pos_x = encode(x)[None, :, :].expand(height, width, num_feats)
    return torch.cat((pos_y, pos_x), dim=-1).permute(2, 0, 1).unsqueeze(0)


def caffe2_xavier_init(conv: nn.Conv2d) -> None:
    """Kaiming-uniform with a=1 (the "caffe2 xavier" of mmcv), zero bias: the pixel decoder's conv init."""
    nn.init.kaiming_uniform_(conv.weight, a=1, mode="fan_in", nonlinearity="leaky_relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class MultiScaleDeformableAttention(nn.Module):
    """Deformable DETR's multi-scale deformable attention as a residual self-attention block (batch-first).

    Each query predicts, per head, level and point, an offset (in units of that level's pixels) from its
    reference point and a weight (softmax over all levels and points of a head). Values are the projected
    input without positional encoding; offsets and weights come from the input plus its positional encoding.
    """

    def __init__(self, dim: int, num_heads: int, num_levels: int, num_points: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.sampling_offsets = nn.Linear(dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's init: at step 0 head h samples along direction 2πh/heads at distances 1..P pixels.

        Zero offset weights make the initial pattern input-independent; zero attention-weight layers give
        uniform weights over all levels and points.
        """
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        directions = torch.stack([thetas.cos(), thetas.sin()], dim=-1)
        directions = directions / directions.abs().max(dim=-1, keepdim=True).values
        grid = directions.view(self.num_heads, 1, 1, 2).repeat(1, self.num_levels, self.num_points, 1)
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for linear in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(
        self,
        query: Tensor,
        query_pos: Tensor,
        reference_points: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
    ) -> Tensor:
        """``query`` ``[B, S, C]`` (also the values), ``query_pos`` ``[B or 1, S, C]``, ``reference_points``
        ``[1, S, L, 2]`` as normalised ``(x, y)`` -> ``query`` + attention output, ``[B, S, C]``."""
        batch, num_queries, _ = query.shape
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        value = self.value_proj(query).view(batch, num_queries, heads, self.dim // heads)
        # both read query + query_pos; the backward re-adds them rather than keeping the sum (see .lean)
        offsets = linear_on_sum(self.sampling_offsets, query, query_pos)
        offsets = offsets.view(batch, num_queries, heads, levels, points, 2)
        weights = linear_on_sum(self.attention_weights, query, query_pos)
        weights = weights.view(batch, num_queries, heads, levels * points)
        weights = weights.softmax(-1).view(batch, num_queries, heads, levels, points)
        # offsets are in pixels of each level: divide by (W_l, H_l) to move in normalised coordinates
        normalizer = spatial_shapes.flip(-1).to(query.dtype)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        sampled = ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights)
        return query + self.output_proj(sampled)


class DeformableEncoderLayer(nn.Module):
    """Post-norm encoder layer: deformable self-attention -> LayerNorm -> ReLU FFN (residual) -> LayerNorm."""

    def __init__(self, dim: int, num_heads: int, num_levels: int, num_points: int, ffn_dim: int) -> None:
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(dim, num_heads, num_levels, num_points)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Linear(ffn_dim, dim))
        self.norms = nn.ModuleList([nn.LayerNorm(dim), nn.LayerNorm(dim)])

    def forward(
        self,
        query: Tensor,
        query_pos: Tensor,
        reference_points: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
    ) -> Tensor:
        attended = self.self_attn(query, query_pos, reference_points, spatial_shapes, level_start_index)
        # norms[0] and the FFN's first linear as one step that keeps only the norm's input (see .lean)
        query, hidden = layer_norm_then_linear(self.norms[0], self.ffn[0], attended)
        return self.norms[1](query + self.ffn[2](self.ffn[1](hidden)))


def _conv_gn(in_channels: int, out_channels: int, kernel_size: int, *, bias: bool, relu: bool) -> nn.Sequential:
    """mmcv ``ConvModule`` with GroupNorm(32) (and optional ReLU); kept as conv/norm/act children."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias),
        nn.GroupNorm(GN_GROUPS, out_channels),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class MSDeformAttnPixelDecoder(nn.Module):
    """Pyramid ``[stride 4, 8, 16, 32]`` -> ``(mask_features, multi_scale)``.

    ``mask_features`` is ``[B, hidden, H/4, W/4]``; ``multi_scale`` holds the encoder outputs of the
    ``num_levels`` lowest-resolution levels, lowest resolution first (strides 32, 16, 8), each ``hidden`` wide.
    ``in_channels`` is per level, so a caller may widen one level (e.g. concatenate a score map to it).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        *,
        hidden_dim: int = 256,
        num_heads: int = 8,
        num_levels: int = 3,
        num_points: int = 4,
        num_layers: int = 6,
        ffn_dim: int = 1024,
    ) -> None:
        super().__init__()
        in_channels = [int(c) for c in in_channels]
        if not 1 <= num_levels <= len(in_channels):
            raise ValueError(f"num_levels={num_levels} must be between 1 and the number of inputs {len(in_channels)}")
        if hidden_dim % 2:
            raise ValueError(f"hidden_dim={hidden_dim} must be even (sine encoding: half for y, half for x)")
        self.in_channels = in_channels
        self.hidden_dim = hidden_dim
        self.num_levels = num_levels
        num_inputs = len(in_channels)
        # Encoder levels, lowest resolution first: input indices num_inputs-1, ..., num_inputs-num_levels.
        self.encoder_inputs = list(range(num_inputs - 1, num_inputs - num_levels - 1, -1))
        # FPN levels (not encoded), from lower to higher resolution.
        self.fpn_inputs = list(range(num_inputs - num_levels - 1, -1, -1))

        self.input_convs = nn.ModuleList(
            _conv_gn(in_channels[i], hidden_dim, 1, bias=True, relu=False) for i in self.encoder_inputs
        )
        self.level_embed = nn.Parameter(torch.empty(num_levels, hidden_dim))
        self.encoder = nn.ModuleList(
            DeformableEncoderLayer(hidden_dim, num_heads, num_levels, num_points, ffn_dim) for _ in range(num_layers)
        )
        # The norm's shift replaces the conv bias (mmdet: bias only when there is no norm).
        self.lateral_convs = nn.ModuleList(
            _conv_gn(in_channels[i], hidden_dim, 1, bias=False, relu=False) for i in self.fpn_inputs
        )
        self.output_convs = nn.ModuleList(
            _conv_gn(hidden_dim, hidden_dim, 3, bias=False, relu=True) for _ in self.fpn_inputs
        )
        self.mask_feature = nn.Conv2d(hidden_dim, hidden_dim, kernel_size=1)
        #: recompute each encoder layer in backward (set by the head's ``grad_checkpointing`` option)
        self.grad_checkpointing = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """mmdet's init: Xavier-uniform input convs, caffe2-Xavier FPN and mask convs, N(0, 1) level embeddings,
        Xavier-normal encoder matrices, then the deformable attention's own init on top."""
        for block in self.input_convs:
            nn.init.xavier_uniform_(block[0].weight)
            nn.init.zeros_(block[0].bias)
        for block in [*self.lateral_convs, *self.output_convs]:
            caffe2_xavier_init(block[0])
        caffe2_xavier_init(self.mask_feature)
        nn.init.normal_(self.level_embed, mean=0.0, std=1.0)
        for parameter in self.encoder.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_normal_(parameter)
        for module in self.encoder.modules():
            if isinstance(module, MultiScaleDeformableAttention):
                module.reset_parameters()

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        if len(features) != len(self.in_channels):
            raise ValueError(f"pixel decoder expects {len(self.in_channels)} feature maps, got {len(features)}")
        batch = features[0].shape[0]
        device = features[0].device
        tokens, positions, references, shapes = [], [], [], []
        for level, index in enumerate(self.encoder_inputs):
            x = self.input_convs[level](features[index])
            height, width = x.shape[-2:]
            pos = sine_positional_encoding(height, width, self.hidden_dim // 2, device=device).to(x.dtype)
            pos = pos + self.level_embed[level].view(1, -1, 1, 1)
            # Pixel centres normalised to (0, 1) as (x, y): the reference point of every position.
            ref_y, ref_x = torch.meshgrid(
                (torch.arange(height, device=device, dtype=x.dtype) + 0.5) / height,
                (torch.arange(width, device=device, dtype=x.dtype) + 0.5) / width,
                indexing="ij",
            )
            tokens.append(x.flatten(2).transpose(1, 2))
            positions.append(pos.flatten(2).transpose(1, 2))
            references.append(torch.stack((ref_x, ref_y), dim=-1).view(-1, 2))
            shapes.append((height, width))
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=device)
        sizes = spatial_shapes.prod(1)
        level_start_index = torch.cat((sizes.new_zeros(1), sizes.cumsum(0)[:-1]))
        memory = torch.cat(tokens, dim=1)
        query_pos = torch.cat(positions, dim=1)
        # Every position refers to its own centre on every level: [1, S, L, 2].
        reference_points = torch.cat(references, dim=0)[None, :, None].expand(-1, -1, self.num_levels, -1)
        recompute = self.grad_checkpointing and torch.is_grad_enabled()
        for layer in self.encoder:
            inputs = (memory, query_pos, reference_points, spatial_shapes, level_start_index)
            memory = checkpoint(layer, *inputs, use_reentrant=False) if recompute else layer(*inputs)

        outs = [
            chunk.transpose(1, 2).reshape(batch, self.hidden_dim, h, w)
            for chunk, (h, w) in zip(memory.split(sizes.tolist(), dim=1), shapes, strict=True)
        ]
        for lateral, output, index in zip(self.lateral_convs, self.output_convs, self.fpn_inputs, strict=True):
            y = lateral(features[index])
            y = y + F.interpolate(outs[-1], size=y.shape[-2:], mode="bilinear", align_corners=False)
            outs.append(output(y))
        return self.mask_feature(outs[-1]), outs[: self.num_levels]


__all__ = [
    "DeformableEncoderLayer",
    "MSDeformAttnPixelDecoder",
    "MultiScaleDeformableAttention",
    "caffe2_xavier_init",
    "sine_positional_encoding",
]
