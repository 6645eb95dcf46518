"""DenseCLIP's released checkpoints (raoyongming/DenseCLIP, mmseg 0.x) -> ``clip-resnet`` + ``denseclip`` + ``fpn``.

A release (``denseclip_fpn_res50.pth``) is an mmseg 0.x ``{"meta", "state_dict"}`` file of the whole segmentor:
``backbone.*`` (``CLIPResNetWithAttention``: OpenAI's ResNet names, attention pool included), ``text_encoder.*``
(``CLIPTextContextEncoder``: CLIP's text transformer with a 13-position embedding), ``context_decoder.*``
(``memory_proj``, ``text_proj``, ``decoder.N.{self_attn,cross_attn}.{q,k,v}_proj``, ``norm1..3``, ``mlp``,
``out_proj``), the learnable ``contexts`` and ``gamma``, the FPN ``neck.*`` (``ConvModule``: ``conv``) and the
``decode_head.*`` (mmseg ``FPNHead``: ``scale_heads.N.M.conv``/``bn``, ``conv_seg``).

vltk keeps the vision tower under ``backbone.visual.`` and the text tower under ``backbone.text.`` (open_clip's
layout), the context decoder, contexts and gamma in the ``denseclip`` prompter and neck + head in the ``fpn``
decoder. Two tensors are reshaped, both said in docs/deviations.md: the text positions are zero-padded from 13 to
CLIP's 77 rows (vltk reads rows past ``context_length`` only for a class name longer than DenseCLIP truncates
to) and the attention pool's 16x16 grid (trained at 512 px) is resampled to the 7x7 grid vltk's pool is built
with. The file has no ``logit_scale`` (DenseCLIP uses a fixed temperature): CLIP's initial ln(1/0.07) is filled in.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from vltk.api import UserError
from vltk_plugins.common.releases import Drop, ReleaseFile, ReleaseFormat, ReleasePlan, Rename, layer_count, recipe_file
from vltk_plugins.common.releases.hints import hinted

TITLE = "DenseCLIP release (mmseg 0.x: backbone.*, text_encoder.*, context_decoder.*, contexts, gamma, neck, head)"

#: Bottleneck blocks per stage -> clip-resnet variant.
RESNETS = {(3, 4, 6, 3): "RN50", (3, 4, 23, 3): "RN101", (1, 1, 1, 1): "tiny"}
#: Text positions of CLIP's text tower, which vltk builds whole.
TEXT_POSITIONS = 77
#: Attention-pool grid of vltk's clip-resnet (built at 224 px, stride 32).
POOL_GRID = 7

_WB = r"(weight|bias)"
_TEXT = r"backbone.text.\1"


def rules() -> list[Rename | Drop]:
    """The DenseCLIP map (released key -> vltk key)."""
    return [
        Rename(
            r"backbone\.attnpool\.positional_embedding", "backbone.visual.attnpool.positional_embedding", grid=POOL_GRID
        ),
        Rename(r"backbone\.(.*)", r"backbone.visual.\1"),
        Rename(r"text_encoder\.positional_embedding", "backbone.text.positional_embedding", pad_rows=TEXT_POSITIONS),
        Rename(
            r"text_encoder\.(transformer\..*|token_embedding\.weight|ln_final\..*|text_projection)", r"backbone.text.\1"
        ),
        Rename(r"context_decoder\.(.*)", r"prompter.context_decoder.\1"),
        Rename(r"(contexts|gamma)", r"prompter.\1"),
        Rename(r"neck\.(lateral_convs|fpn_convs)\.(\d+)\.conv\." + _WB, r"decoder.\1.\2.\3"),
        Rename(r"decode_head\.scale_heads\.(\d+)\.(\d+)\.conv\.weight", r"decoder.scale_heads.\1.\2.0.weight"),
        Rename(r"decode_head\.scale_heads\.(\d+)\.(\d+)\.bn\.(.*)", r"decoder.scale_heads.\1.\2.1.\3"),
        Rename(r"decode_head\.conv_seg\." + _WB, r"decoder.conv_seg.\1"),
        Drop(r"auxiliary_head\..*", "an auxiliary head that only trains"),
    ]


def _detect(release: ReleaseFile) -> bool:
    return release.has("context_decoder.", "text_encoder.", "backbone.", "decode_head.") and "contexts" in release.state


def _plan(release: ReleaseFile, hints: dict[str, Any]) -> ReleasePlan:
    state = release.state
    blocks = tuple(layer_count(release, rf"backbone\.layer{stage}\.(\d+)\.") for stage in (1, 2, 3, 4))
    variant = RESNETS.get(blocks)
    if variant is None:
        raise UserError(f"{TITLE}: a ResNet of {list(blocks)} blocks per stage, which clip-resnet does not build")
    num_classes = int(state["decode_head.conv_seg.weight"].shape[0])
    widths = [int(state[f"backbone.layer{stage}.0.conv3.weight"].shape[0]) for stage in (1, 2, 3, 4)]
    laterals = [int(state[f"neck.lateral_convs.{index}.conv.weight"].shape[1]) for index in range(4)]
    concat = [index for index in range(4) if laterals[index] == widths[index] + num_classes]
    config = recipe_file(Path(__file__).parent / "recipes" / "ade20k.yaml")
    config["recipe"] = "denseclip/ade20k"
    config["backbone"] = {"name": "clip-resnet", "variant": variant, "quick_gelu": True}
    prompter = dict(config.get("prompter") or {"name": "denseclip"})
    prompter.update(
        n_ctx=int(state["contexts"].shape[1]),
        context_length=int(state["text_encoder.positional_embedding"].shape[0]),
        decoder_layers=layer_count(release, r"context_decoder\.decoder\.(\d+)\."),
        decoder_width=int(state["context_decoder.memory_proj.1.weight"].shape[0]),
        decoder_heads=int(hinted(hints, "prompter.decoder_heads", prompter.get("decoder_heads", 4))),
        score_concat_index=concat[0] if concat else None,
    )
    config["prompter"] = prompter
    decoder = dict(config.get("decoder") or {"name": "fpn"})
    decoder.update(
        channels=int(state["neck.lateral_convs.0.conv.weight"].shape[0]),
        head_channels=int(state["decode_head.scale_heads.0.0.conv.weight"].shape[0]),
    )
    config["decoder"] = decoder
    meta = release.meta.get("meta") or {}
    classes = meta.get("CLASSES")
    import torch

    return ReleasePlan(
        rules=rules(),
        config=config,
        num_classes=num_classes,
        class_names=[str(name) for name in classes] if classes and len(classes) == num_classes else None,
        backbone_included=True,
        extra={"backbone.logit_scale": torch.tensor(math.log(1 / 0.07))},
        notes=[
            f"backbone: clip-resnet {variant}; text positions {prompter['context_length']} -> {TEXT_POSITIONS} "
            f"(zero rows), attention-pool grid -> {POOL_GRID}x{POOL_GRID}"
        ],
    )


DENSECLIP_RELEASE = ReleaseFormat(
    name="denseclip",
    title=TITLE,
    expects="backbone.layer1.*, text_encoder.*, context_decoder.*, contexts, gamma, neck.*, decode_head.*",
    detect=_detect,
    plan=_plan,
)

__all__ = ["DENSECLIP_RELEASE", "rules"]
