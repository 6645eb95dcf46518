"""Hugging Face transformers Mask2Former checkpoints load into vltk's mask2former decoder with the same outputs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vltk.api import CITYSCAPES_CLASSES
from vltk.errors import UserError

#: The default recipe (tiny EVA02) with a small Mask2Former of its own learned queries.
MODEL = [
    "decoder=mask2former",
    "decoder.hidden_dim=32",
    "decoder.num_heads=4",
    "decoder.num_queries=6",
    "decoder.enc_layers=2",
    "decoder.enc_ffn=48",
    "decoder.dec_layers=3",
    "decoder.dec_ffn=40",
    "dataset.size=64",
]

_PD, _TM = "model.pixel_level_module.decoder.", "model.transformer_module."
#: vltk name -> Hugging Face name, written from transformers' Mask2Former modules (and its conversion script's
#: table), independently of the plugin's key map. The self-attention's in_proj is split by the test itself.
INVERSE = [
    (r"decoder\.pixel_decoder\.input_convs\.(\d)\.([01])\.(.*)", _PD + r"input_projections.\1.\2.\3"),
    (r"decoder\.pixel_decoder\.level_embed", _PD + "level_embed"),
    (r"decoder\.pixel_decoder\.encoder\.(\d)\.self_attn\.(.*)", _PD + r"encoder.layers.\1.self_attn.\2"),
    (r"decoder\.pixel_decoder\.encoder\.(\d)\.norms\.0\.(.*)", _PD + r"encoder.layers.\1.self_attn_layer_norm.\2"),
    (r"decoder\.pixel_decoder\.encoder\.(\d)\.norms\.1\.(.*)", _PD + r"encoder.layers.\1.final_layer_norm.\2"),
    (r"decoder\.pixel_decoder\.encoder\.(\d)\.ffn\.0\.(.*)", _PD + r"encoder.layers.\1.fc1.\2"),
    (r"decoder\.pixel_decoder\.encoder\.(\d)\.ffn\.2\.(.*)", _PD + r"encoder.layers.\1.fc2.\2"),
    (r"decoder\.pixel_decoder\.lateral_convs\.0\.([01])\.(.*)", _PD + r"adapter_1.\1.\2"),
    (r"decoder\.pixel_decoder\.output_convs\.0\.([01])\.(.*)", _PD + r"layer_1.\1.\2"),
    (r"decoder\.pixel_decoder\.mask_feature\.(.*)", _PD + r"mask_projection.\1"),
    (r"decoder\.query_embed\.weight", _TM + "queries_embedder.weight"),
    (r"decoder\.query_feat\.weight", _TM + "queries_features.weight"),
    (r"decoder\.level_embed\.weight", _TM + "level_embed.weight"),
    (r"decoder\.transformer_decoder\.layers\.(\d)\.self_attn\.in_proj_(.*)", _TM + r"decoder.layers.\1.SPLIT.\2"),
    (
        r"decoder\.transformer_decoder\.layers\.(\d)\.self_attn\.out_proj\.(.*)",
        _TM + r"decoder.layers.\1.self_attn.out_proj.\2",
    ),
    (r"decoder\.transformer_decoder\.layers\.(\d)\.norms\.1\.(.*)", _TM + r"decoder.layers.\1.self_attn_layer_norm.\2"),
    (r"decoder\.transformer_decoder\.layers\.(\d)\.cross_attn\.(.*)", _TM + r"decoder.layers.\1.cross_attn.\2"),
    (
        r"decoder\.transformer_decoder\.layers\.(\d)\.norms\.0\.(.*)",
        _TM + r"decoder.layers.\1.cross_attn_layer_norm.\2",
    ),
    (r"decoder\.transformer_decoder\.layers\.(\d)\.ffn\.0\.(.*)", _TM + r"decoder.layers.\1.fc1.\2"),
    (r"decoder\.transformer_decoder\.layers\.(\d)\.ffn\.2\.(.*)", _TM + r"decoder.layers.\1.fc2.\2"),
    (r"decoder\.transformer_decoder\.layers\.(\d)\.norms\.2\.(.*)", _TM + r"decoder.layers.\1.final_layer_norm.\2"),
    (r"decoder\.transformer_decoder\.post_norm\.(.*)", _TM + r"decoder.layernorm.\1"),
    (r"decoder\.mask_embed\.0\.(.*)", _TM + r"decoder.mask_predictor.mask_embedder.0.0.\1"),
    (r"decoder\.mask_embed\.2\.(.*)", _TM + r"decoder.mask_predictor.mask_embedder.1.0.\1"),
    (r"decoder\.mask_embed\.4\.(.*)", _TM + r"decoder.mask_predictor.mask_embedder.2.0.\1"),
    (r"decoder\.cls_embed\.(.*)", r"class_predictor.\1"),
]


def _fabricate(release_tools, folder: Path, *, decoder_layers: int = 4):
    model = release_tools.model(None, MODEL, CITYSCAPES_CLASSES)
    state = model.state_dict()
    backbone_file = folder / "eva02_tiny.pt"
    torch.save({k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}, backbone_file)
    upstream = release_tools.rename({k: v for k, v in state.items() if k.startswith("decoder.")}, INVERSE)
    for key in [key for key in upstream if ".SPLIT." in key]:  # Hugging Face keeps q, k and v apart
        layer, kind = re.match(r"(.*)\.SPLIT\.(weight|bias)", key).groups()
        for name, piece in zip("qkv", upstream.pop(key).chunk(3), strict=True):
            upstream[f"{layer}.self_attn.{name}_proj.{kind}"] = piece.contiguous()
    upstream["criterion.empty_weight"] = torch.ones(20)
    upstream["model.pixel_level_module.encoder.embeddings.patch_embeddings.projection.weight"] = torch.randn(8, 3, 4, 4)
    hf = folder / "mask2former-tiny"
    hf.mkdir()
    save_file(upstream, str(hf / "model.safetensors"))
    labels = {str(index): name for index, name in enumerate(CITYSCAPES_CLASSES)}
    config = {
        "model_type": "mask2former",
        "decoder_layers": decoder_layers,
        "num_attention_heads": 4,
        "id2label": labels,
    }
    (hf / "config.json").write_text(json.dumps(config))
    return model, hf / "model.safetensors", backbone_file


def test_hf_mask2former_gives_the_same_outputs(release_tools, tmp_path: Path) -> None:
    from vltk_plugins.common.releases.convert import convert_release

    model, release, backbone_file = _fabricate(release_tools, tmp_path)
    images = torch.randn(2, 3, 64, 64)
    expected = release_tools.logits(model, images)
    in_memory = release_tools.load_converted(release, (), str(backbone_file))
    torch.testing.assert_close(release_tools.logits(in_memory, images), expected)
    lines = convert_release(str(release), str(tmp_path / "m2f.pt"))
    assert any("3 layers (config decoder_layers=4" in line for line in lines), lines
    saved = torch.load(tmp_path / "m2f.pt", weights_only=True)
    assert saved["config"]["decoder"]["dec_layers"] == 3 and saved["config"]["decoder"]["num_heads"] == 4
    assert saved["class_names"] == list(CITYSCAPES_CLASSES)
    assert set(saved["release"]["dropped"]) == {
        "criterion.empty_weight",
        "model.pixel_level_module.encoder.embeddings.patch_embeddings.projection.weight",
    }
    converted = release_tools.load_converted(tmp_path / "m2f.pt", (), str(backbone_file))
    torch.testing.assert_close(release_tools.logits(converted, images), expected)


def test_decoder_layers_count_the_first_prediction(release_tools, tmp_path: Path) -> None:
    from vltk_plugins.common.releases.convert import convert_release

    _, release, _ = _fabricate(release_tools, tmp_path, decoder_layers=3)  # 3 layers written as 3: wrong by one
    with pytest.raises(UserError, match=r"decoder_layers=3 but the file holds 3 decoder layers .*plus one"):
        convert_release(str(release), str(tmp_path / "m2f.pt"))
    with pytest.raises(UserError, match=r"not a Hugging Face transformers Mask2Former.* model\.pixel_level_module"):
        convert_release(str(tmp_path / "eva02_tiny.pt"), str(tmp_path / "m2f.pt"), from_format="hf-mask2former")
    assert not (tmp_path / "m2f.pt").exists()
