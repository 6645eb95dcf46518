"""Mask2Former heads of released checkpoints -> vltk's ``mask2former`` decoder: two key maps, as data.

* **mmdet 3.x ``Mask2FormerHead``** (what mmseg 1.x wraps, and so Rein's ``decode_head``): ``ConvModule``s keep
  ``conv``/``gn``, mmcv's ``FFN`` keeps ``layers.0.0``/``layers.1``, mmcv's ``MultiheadAttention`` wraps
  ``nn.MultiheadAttention`` as ``attn``, the pixel decoder's encoder is ``encoder.layers.N`` and its level
  embedding an ``nn.Embedding`` ``level_encoding``. :func:`mmdet_head_rules` is the map; the paper plugin that
  ships such heads puts its prefix (``decode_head.``) in front (:func:`vltk_plugins.common.releases.prefixed`).
* **Hugging Face ``Mask2FormerForUniversalSegmentation``** (``model.pixel_level_module.decoder...``,
  ``model.transformer_module...``, ``class_predictor``): the self-attention stores ``q_proj``/``k_proj``/``v_proj``
  apart (joined into ``in_proj_*``), the FPN level is ``adapter_1``/``layer_1``, and ``config.decoder_layers``
  counts the decoder layers **plus one** (the prediction before the first layer), so a file with 9 layers says
  ``decoder_layers: 10``. The backbone (``pixel_level_module.encoder``: Swin in every released model) has no vltk
  component and is left out; pick a vltk backbone whose pyramid widths match the input projections.

Shapes tell most options (widths, layer counts, classes, queries). The number of attention heads is not in any
shape (a deformable attention's ``attention_weights`` is ``heads x levels x points`` wide): it comes from the
file's ``config.json`` when there is one, else from ``decoder.num_heads=N`` given on the command line, else
Mask2Former's 8.
"""

from __future__ import annotations

from typing import Any

from vltk.api import UserError
from vltk_plugins.common.releases import Concat, Drop, ReleaseFile, ReleaseFormat, ReleasePlan, Rename, layer_count
from vltk_plugins.common.releases.hints import hinted

#: Pyramid levels the deformable encoder attends to (strides 8/16/32), fixed in vltk's decoder as upstream.
LEVELS = 3

_WB = r"(weight|bias)"


def mmdet_head_rules(*, linked: bool) -> list[Rename | Drop | Concat]:
    """The mmdet 3.x ``Mask2FormerHead`` map (keys relative to the head -> relative to vltk's ``decoder.``).

    ``linked``: the queries come from an adapter (Rein's link), so a ``query_embed``/``query_feat`` in the file is
    dropped, as Rein's ``ReinMask2FormerHead`` deletes them; otherwise they are the decoder's learned queries.
    """
    pd, td = r"pixel_decoder\.", r"transformer_decoder\.layers\.(\d+)\."
    rules: list[Rename | Drop | Concat] = [
        Rename(pd + r"input_convs\.(\d+)\.conv\." + _WB, r"decoder.pixel_decoder.input_convs.\1.0.\2"),
        Rename(pd + r"input_convs\.(\d+)\.gn\." + _WB, r"decoder.pixel_decoder.input_convs.\1.1.\2"),
        Rename(
            pd
            + r"encoder\.layers\.(\d+)\.self_attn\.(sampling_offsets|attention_weights|value_proj|output_proj)\."
            + _WB,
            r"decoder.pixel_decoder.encoder.\1.self_attn.\2.\3",
        ),
        Rename(pd + r"encoder\.layers\.(\d+)\.ffn\.layers\.0\.0\." + _WB, r"decoder.pixel_decoder.encoder.\1.ffn.0.\2"),
        Rename(pd + r"encoder\.layers\.(\d+)\.ffn\.layers\.1\." + _WB, r"decoder.pixel_decoder.encoder.\1.ffn.2.\2"),
        Rename(pd + r"encoder\.layers\.(\d+)\.norms\.([01])\." + _WB, r"decoder.pixel_decoder.encoder.\1.norms.\2.\3"),
        Rename(pd + r"level_encoding\.weight", "decoder.pixel_decoder.level_embed"),
        Rename(pd + r"(lateral_convs|output_convs)\.(\d+)\.conv\." + _WB, r"decoder.pixel_decoder.\1.\2.0.\3"),
        Rename(pd + r"(lateral_convs|output_convs)\.(\d+)\.gn\." + _WB, r"decoder.pixel_decoder.\1.\2.1.\3"),
        Rename(pd + r"mask_feature\." + _WB, r"decoder.pixel_decoder.mask_feature.\1"),
        Rename(
            td + r"(self_attn|cross_attn)\.attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)",
            r"decoder.transformer_decoder.layers.\1.\2.\3",
        ),
        Rename(td + r"ffn\.layers\.0\.0\." + _WB, r"decoder.transformer_decoder.layers.\1.ffn.0.\2"),
        Rename(td + r"ffn\.layers\.1\." + _WB, r"decoder.transformer_decoder.layers.\1.ffn.2.\2"),
        Rename(td + r"norms\.([012])\." + _WB, r"decoder.transformer_decoder.layers.\1.norms.\2.\3"),
        Rename(r"transformer_decoder\.post_norm\." + _WB, r"decoder.transformer_decoder.post_norm.\1"),
        Rename(r"level_embed\.weight", "decoder.level_embed.weight"),
        Rename(r"cls_embed\." + _WB, r"decoder.cls_embed.\1"),
        Rename(r"mask_embed\.([024])\." + _WB, r"decoder.mask_embed.\1.\2"),
        Rename(r"querys2feat\." + _WB, r"decoder.querys2feat.\1"),
    ]
    if linked:
        reason = "the adapter's link provides the queries (Rein's ReinMask2FormerHead deletes it)"
        rules += [Drop(r"query_embed\.weight", reason), Drop(r"query_feat\.weight", reason)]
    else:
        rules += [Rename(r"(query_embed|query_feat)\.weight", r"decoder.\1.weight")]
    return rules


def _heads_and_points(attention_width: int, heads: int, where: str) -> int:
    if attention_width % (heads * LEVELS):
        raise UserError(
            f"{where}: the deformable attention is {attention_width} wide, not a multiple of {heads} heads x "
            f"{LEVELS} levels; give the head count the file was trained with as decoder.num_heads=N"
        )
    return attention_width // (heads * LEVELS)


def mmdet_head_options(release: ReleaseFile, prefix: str, hints: dict[str, Any], title: str) -> dict[str, Any]:
    """The ``mask2former`` options an mmdet head under ``prefix`` was built with, read off its shapes."""
    state = release.state
    hidden = int(state[prefix + "cls_embed.weight"].shape[1])
    heads = int(hinted(hints, "decoder.num_heads", 8))
    options: dict[str, Any] = {
        "name": "mask2former",
        "hidden_dim": hidden,
        "num_heads": heads,
        "enc_layers": layer_count(release, rf"{prefix}pixel_decoder\.encoder\.layers\.(\d+)\."),
        "dec_layers": layer_count(release, rf"{prefix}transformer_decoder\.layers\.(\d+)\."),
    }
    enc_ffn = state.get(prefix + "pixel_decoder.encoder.layers.0.ffn.layers.0.0.weight")
    dec_ffn = state.get(prefix + "transformer_decoder.layers.0.ffn.layers.0.0.weight")
    attention = state.get(prefix + "pixel_decoder.encoder.layers.0.self_attn.attention_weights.weight")
    if enc_ffn is not None:
        options["enc_ffn"] = int(enc_ffn.shape[0])
    if dec_ffn is not None:
        options["dec_ffn"] = int(dec_ffn.shape[0])
    if attention is not None:
        options["enc_points"] = _heads_and_points(int(attention.shape[0]), heads, title)
    queries = state.get(prefix + "query_feat.weight")
    if queries is not None:
        options["num_queries"] = int(queries.shape[0])
    return options


# ---------------------------------------------------------------------------------------------- Hugging Face

_HF_PD = r"model\.pixel_level_module\.decoder\."
_HF_TM = r"model\.transformer_module\."
_HF_DL = _HF_TM + r"decoder\.layers\.(\d+)\."
_VPE = "decoder.pixel_decoder.encoder."

#: Hugging Face ``Mask2FormerForUniversalSegmentation`` -> vltk ``mask2former`` (under ``decoder.``).
HF_RULES: tuple[Rename | Drop | Concat, ...] = (
    Drop(r"model\.pixel_level_module\.encoder\..*", "the backbone (Swin in the released models) has no vltk component"),
    Drop(r"criterion\.empty_weight", "the loss's class weights, rebuilt from decoder.no_object_weight"),
    Rename(_HF_PD + r"input_projections\.(\d+)\.([01])\." + _WB, r"decoder.pixel_decoder.input_convs.\1.\2.\3"),
    Rename(_HF_PD + r"level_embed", "decoder.pixel_decoder.level_embed"),
    Rename(
        _HF_PD
        + r"encoder\.layers\.(\d+)\.self_attn\.(sampling_offsets|attention_weights|value_proj|output_proj)\."
        + _WB,
        r"decoder.pixel_decoder.encoder.\1.self_attn.\2.\3",
    ),
    Rename(
        _HF_PD + r"encoder\.layers\.(\d+)\.self_attn_layer_norm\." + _WB, r"decoder.pixel_decoder.encoder.\1.norms.0.\2"
    ),
    Rename(_HF_PD + r"encoder\.layers\.(\d+)\.fc1\." + _WB, r"decoder.pixel_decoder.encoder.\1.ffn.0.\2"),
    Rename(_HF_PD + r"encoder\.layers\.(\d+)\.fc2\." + _WB, r"decoder.pixel_decoder.encoder.\1.ffn.2.\2"),
    Rename(
        _HF_PD + r"encoder\.layers\.(\d+)\.final_layer_norm\." + _WB, r"decoder.pixel_decoder.encoder.\1.norms.1.\2"
    ),
    # the one FPN level (stride 4) is ``adapter_1`` / ``layer_1``: Hugging Face numbers these from 1
    Rename(_HF_PD + r"adapter_1\.([01])\." + _WB, r"decoder.pixel_decoder.lateral_convs.0.\1.\2"),
    Rename(_HF_PD + r"layer_1\.([01])\." + _WB, r"decoder.pixel_decoder.output_convs.0.\1.\2"),
    Rename(_HF_PD + r"mask_projection\." + _WB, r"decoder.pixel_decoder.mask_feature.\1"),
    Rename(_HF_TM + r"queries_embedder\.weight", "decoder.query_embed.weight"),
    Rename(_HF_TM + r"queries_features\.weight", "decoder.query_feat.weight"),
    Rename(_HF_TM + r"level_embed\.weight", "decoder.level_embed.weight"),
    Concat(
        _HF_DL + r"self_attn\.(?P<part>q|k|v)_proj\.(weight|bias)",
        r"decoder.transformer_decoder.layers.\1.self_attn.in_proj_\3",
        parts=("q", "k", "v"),
    ),
    Rename(_HF_DL + r"self_attn\.out_proj\." + _WB, r"decoder.transformer_decoder.layers.\1.self_attn.out_proj.\2"),
    Rename(_HF_DL + r"self_attn_layer_norm\." + _WB, r"decoder.transformer_decoder.layers.\1.norms.1.\2"),
    Rename(
        _HF_DL + r"cross_attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)",
        r"decoder.transformer_decoder.layers.\1.cross_attn.\2",
    ),
    Rename(_HF_DL + r"cross_attn_layer_norm\." + _WB, r"decoder.transformer_decoder.layers.\1.norms.0.\2"),
    Rename(_HF_DL + r"fc1\." + _WB, r"decoder.transformer_decoder.layers.\1.ffn.0.\2"),
    Rename(_HF_DL + r"fc2\." + _WB, r"decoder.transformer_decoder.layers.\1.ffn.2.\2"),
    Rename(_HF_DL + r"final_layer_norm\." + _WB, r"decoder.transformer_decoder.layers.\1.norms.2.\2"),
    Rename(_HF_TM + r"decoder\.layernorm\." + _WB, r"decoder.transformer_decoder.post_norm.\1"),
    Rename(_HF_TM + r"decoder\.mask_predictor\.mask_embedder\.0\.0\." + _WB, r"decoder.mask_embed.0.\1"),
    Rename(_HF_TM + r"decoder\.mask_predictor\.mask_embedder\.1\.0\." + _WB, r"decoder.mask_embed.2.\1"),
    Rename(_HF_TM + r"decoder\.mask_predictor\.mask_embedder\.2\.0\." + _WB, r"decoder.mask_embed.4.\1"),
    Rename(r"class_predictor\." + _WB, r"decoder.cls_embed.\1"),
)

HF_TITLE = "Hugging Face transformers Mask2FormerForUniversalSegmentation"


def _detect_hf(release: ReleaseFile) -> bool:
    return release.has("model.pixel_level_module.decoder.", "model.transformer_module.", "class_predictor.")


def _plan_hf(release: ReleaseFile, hints: dict[str, Any]) -> ReleasePlan:
    state = release.state
    config = release.meta.get("config.json") or {}
    layers = layer_count(release, _HF_DL)
    if "decoder_layers" in config and int(config["decoder_layers"]) != layers + 1:
        raise UserError(
            f"{HF_TITLE}: config.json says decoder_layers={config['decoder_layers']} but the file holds {layers} "
            f"decoder layers (Hugging Face counts them plus one, so expect {layers + 1}); the config.json beside "
            "the weights is of another model"
        )
    if any(key.startswith("model.transformer_module.input_projections.") and "weight" in key for key in state):
        raise UserError(
            f"{HF_TITLE}: the file projects the pixel decoder's outputs before the transformer decoder "
            "(enforce_input_proj, or feature_size != hidden_dim), which vltk's mask2former does not have "
            "(docs/deviations.md); convert a model whose feature_size equals hidden_dim"
        )
    hidden = int(state["class_predictor.weight"].shape[1])
    heads = int(config.get("num_attention_heads") or hinted(hints, "decoder.num_heads", 8))
    attention = state["model.pixel_level_module.decoder.encoder.layers.0.self_attn.attention_weights.weight"]
    decoder = {
        "name": "mask2former",
        "hidden_dim": hidden,
        "num_heads": heads,
        "num_queries": int(state["model.transformer_module.queries_features.weight"].shape[0]),
        "enc_layers": layer_count(release, _HF_PD + r"encoder\.layers\.(\d+)\."),
        "enc_ffn": int(state["model.pixel_level_module.decoder.encoder.layers.0.fc1.weight"].shape[0]),
        "enc_points": _heads_and_points(int(attention.shape[0]), heads, HF_TITLE),
        "dec_layers": layers,
        "dec_ffn": int(state["model.transformer_module.decoder.layers.0.fc1.weight"].shape[0]),
    }
    widths = [int(state["model.pixel_level_module.decoder.adapter_1.0.weight"].shape[1])] + [
        int(state[f"model.pixel_level_module.decoder.input_projections.{index}.0.weight"].shape[1])
        for index in (2, 1, 0)
    ]
    num_classes = int(state["class_predictor.weight"].shape[0]) - 1
    labels = config.get("id2label") or {}
    names = [labels.get(str(index)) for index in range(num_classes)] if labels else None
    return ReleasePlan(
        rules=HF_RULES,
        config={"backbone": _backbone_for(widths, hints), "decoder": decoder},
        num_classes=num_classes,
        class_names=names if names and all(names) else None,
        notes=[
            f"decoder: {layers} layers (config decoder_layers={layers + 1} counts the first prediction too)",
            "the backbone of the file is left out: choose a vltk backbone with matching pyramid widths "
            "(backbone=NAME ...)",
        ],
    )


#: Pyramid widths (strides 4..32) -> the vltk backbone that has them: equal widths are a ViT (EVA02 sizes).
BACKBONES_BY_WIDTHS: dict[tuple[int, ...], dict[str, Any]] = {
    (192,) * 4: {"name": "eva02", "variant": "tiny"},
    (384,) * 4: {"name": "eva02", "variant": "small"},
    (768,) * 4: {"name": "eva02", "variant": "base"},
    (1024,) * 4: {"name": "eva02", "variant": "large"},
    (256, 512, 1024, 2048): {"name": "clip-resnet", "variant": "RN50"},
}


def _backbone_for(widths: list[int], hints: dict[str, Any]) -> dict[str, Any]:
    """The backbone section: named on the command line (``backbone=NAME``), else the vltk backbone whose pyramid
    widths the file's input projections take; a Swin's widths match none, which is refused."""
    named = hinted(hints, "backbone", None) or hinted(hints, "backbone.name", None)
    if named:
        return {"name": str(named)}
    found = BACKBONES_BY_WIDTHS.get(tuple(widths))
    if found is None:
        raise UserError(
            f"{HF_TITLE}: the pixel decoder takes pyramid widths {widths} (a Swin backbone in the released models), "
            "which no vltk backbone has; pass backbone=NAME (and its options) of a backbone with these widths"
        )
    return dict(found)


HF_MASK2FORMER = ReleaseFormat(
    name="hf-mask2former",
    title=HF_TITLE,
    expects="model.pixel_level_module.decoder.*, model.transformer_module.*, class_predictor.*",
    detect=_detect_hf,
    plan=_plan_hf,
)

__all__ = ["HF_MASK2FORMER", "HF_RULES", "mmdet_head_options", "mmdet_head_rules"]
