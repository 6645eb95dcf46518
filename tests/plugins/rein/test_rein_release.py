"""Rein's released checkpoints (mmseg 1.x, mmdet Mask2FormerHead) convert into vltk and give the same outputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vltk.api import CITYSCAPES_CLASSES
from vltk.errors import UserError

#: A tiny Rein model: DINOv2 tiny (4 blocks x 192), 8 LoRA tokens, a small linked Mask2Former with 4 heads.
MODEL = [
    "backbone=dinov2",
    "backbone.variant=tiny",
    "backbone.patch_size=16",
    "adapter.token_length=8",
    "adapter.lora_dim=4",
    "adapter.query_dims=32",
    "decoder.hidden_dim=32",
    "decoder.num_heads=4",
    "decoder.enc_layers=2",
    "decoder.enc_ffn=48",
    "decoder.dec_layers=2",
    "decoder.dec_ffn=40",
]
#: What the release does not say: the data to evaluate on and the head count (no tensor shape holds it).
RUN = ["dataset=synthetic", "dataset.size=64", "dataset.num_train=2", "dataset.num_val=2", "decoder.num_heads=4"]

#: vltk name -> Rein/mmdet name, written from mmdet's module structure (ConvModule conv/gn, FFN layers.0.0 and
#: layers.1, MultiheadAttention .attn, encoder.layers, level_encoding), independently of the plugin's key map.
_PD, _TD = "decode_head.pixel_decoder.", "decode_head.transformer_decoder.layers."
INVERSE = [
    (r"adapter\.(.*)", r"backbone.reins.\1"),
    (r"decoder\.pixel_decoder\.input_convs\.(\d)\.0\.(.*)", _PD + r"input_convs.\1.conv.\2"),
    (r"decoder\.pixel_decoder\.input_convs\.(\d)\.1\.(.*)", _PD + r"input_convs.\1.gn.\2"),
    (r"decoder\.pixel_decoder\.level_embed", _PD + "level_encoding.weight"),
    (r"decoder\.pixel_decoder\.encoder\.(\d)\.ffn\.0\.(.*)", _PD + r"encoder.layers.\1.ffn.layers.0.0.\2"),
    (r"decoder\.pixel_decoder\.encoder\.(\d)\.ffn\.2\.(.*)", _PD + r"encoder.layers.\1.ffn.layers.1.\2"),
    (r"decoder\.pixel_decoder\.encoder\.(\d)\.(.*)", _PD + r"encoder.layers.\1.\2"),
    (r"decoder\.pixel_decoder\.(lateral|output)_convs\.0\.0\.(.*)", _PD + r"\1_convs.0.conv.\2"),
    (r"decoder\.pixel_decoder\.(lateral|output)_convs\.0\.1\.(.*)", _PD + r"\1_convs.0.gn.\2"),
    (r"decoder\.pixel_decoder\.mask_feature\.(.*)", _PD + r"mask_feature.\1"),
    (r"decoder\.transformer_decoder\.layers\.(\d)\.(self|cross)_attn\.(.*)", _TD + r"\1.\2_attn.attn.\3"),
    (r"decoder\.transformer_decoder\.layers\.(\d)\.ffn\.0\.(.*)", _TD + r"\1.ffn.layers.0.0.\2"),
    (r"decoder\.transformer_decoder\.layers\.(\d)\.ffn\.2\.(.*)", _TD + r"\1.ffn.layers.1.\2"),
    (r"decoder\.(.*)", r"decode_head.\1"),
]


def _fabricate(release_tools, folder: Path, *, full: bool = False, extra_queries: bool = True):
    """A tiny vltk Rein model, its backbone file, and the same tensors as a Rein release file."""
    model = release_tools.model("rein/synthetic", MODEL, CITYSCAPES_CLASSES)
    state = model.state_dict()
    backbone = {key.removeprefix("backbone."): value for key, value in state.items() if key.startswith("backbone.")}
    backbone_file = folder / "dinov2_tiny.pt"
    torch.save(backbone, backbone_file)
    upstream = release_tools.rename({k: v for k, v in state.items() if not k.startswith("backbone.")}, INVERSE)
    if extra_queries:  # Rein's released heads carry no query_embed; an mmdet head that kept it must still load
        upstream["decode_head.query_embed.weight"] = torch.randn(8, 32)
    if full:  # tools/generate_full_weights.py: the trunk back under backbone., in the timm layout Rein converts to
        upstream.update({f"backbone.{key.removeprefix('trunk.')}": value for key, value in backbone.items()})
    release = folder / "rein_release.pth"
    meta = {"dataset_meta": {"classes": tuple(CITYSCAPES_CLASSES)}, "mmseg_version": "1.2.2"}
    torch.save({"meta": meta, "state_dict": upstream}, release)
    return model, release, backbone_file


def test_rein_release_gives_the_same_outputs_in_memory(release_tools, tmp_path: Path) -> None:
    model, release, backbone_file = _fabricate(release_tools, tmp_path)
    converted = release_tools.load_converted(release, RUN, str(backbone_file))
    images = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(release_tools.logits(converted, images), release_tools.logits(model, images))


def test_rein_release_converted_file_and_recipe(release_tools, tmp_path: Path) -> None:
    from vltk_plugins.common.releases.convert import convert_release

    model, release, backbone_file = _fabricate(release_tools, tmp_path)
    lines = convert_release(str(release), str(tmp_path / "rein.pt"), tuple(RUN))
    assert any("--from rein" in line for line in lines)
    assert any("1 x the adapter's link provides the queries" in line for line in lines), lines
    saved = torch.load(tmp_path / "rein.pt", weights_only=True)
    assert saved["backbone_included"] is False
    assert saved["class_names"] == list(CITYSCAPES_CLASSES)
    assert saved["config"]["adapter"]["token_length"] == 8 and saved["config"]["adapter"]["lora_dim"] == 4
    assert saved["config"]["decoder"]["enc_points"] == 4 and saved["config"]["decoder"]["dec_layers"] == 2
    recipe = release_tools.resolve(str(tmp_path / "rein.yaml"))
    assert recipe.config.backbone.options()["variant"] == "tiny"
    converted = release_tools.load_converted(tmp_path / "rein.pt", (), str(backbone_file))
    images = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(release_tools.logits(converted, images), release_tools.logits(model, images))


def test_full_rein_segmentor_is_its_own_backbone_file(release_tools, tmp_path: Path) -> None:
    model, release, _ = _fabricate(release_tools, tmp_path, full=True)
    converted = release_tools.load_converted(release, RUN)
    images = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(release_tools.logits(converted, images), release_tools.logits(model, images))


def test_wrong_heads_and_wrong_files_are_refused(release_tools, tmp_path: Path) -> None:
    from vltk_plugins.common.releases.convert import convert_release

    _, release, backbone_file = _fabricate(release_tools, tmp_path)
    with pytest.raises(UserError, match=r"not a Rein release .*expected keys like backbone\.reins"):
        convert_release(str(backbone_file), str(tmp_path / "x.pt"), tuple(RUN), from_format="rein")
    # 5 heads do not divide the deformable attention (4 heads x 3 levels x 4 points): refused, naming the option
    with pytest.raises(UserError, match="decoder.num_heads"):
        convert_release(str(release), str(tmp_path / "x.pt"), (*RUN, "decoder.num_heads=5"))
    # a head trained with other widths than the recipe builds: the released and the vltk key with both shapes
    expected = (
        r"backbone\.reins\.transform\.weight is \[32, 192\] in the file but adapter\.transform\.weight is \[64, 192\]"
    )
    with pytest.raises(UserError, match=expected):
        convert_release(str(release), str(tmp_path / "x.pt"), (*RUN, "decoder.hidden_dim=64", "adapter.query_dims=64"))
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "x.yaml").exists()


def test_vltk_convert_and_eval_of_a_release_through_the_cli(release_tools, tmp_path: Path) -> None:
    _, release, backbone_file = _fabricate(release_tools, tmp_path)
    vltk = [sys.executable, "-m", "vltk"]
    converted = subprocess.run(
        [*vltk, "convert", str(release), str(tmp_path / "rein.pt"), *RUN], capture_output=True, text=True
    )
    assert converted.returncode == 0, converted.stderr
    assert (tmp_path / "rein.yaml").is_file()
    for checkpoint in (release, tmp_path / "rein.pt"):
        evaluated = subprocess.run(
            [
                *vltk,
                "eval",
                "--checkpoint",
                str(checkpoint),
                "--backbone-weights",
                str(backbone_file),
                "--json",
                "--output",
                str(tmp_path / "eval"),
                *(RUN if checkpoint == release else []),
                "eval.overlays=0",
            ],
            capture_output=True,
            text=True,
        )
        assert evaluated.returncode == 0, evaluated.stderr
        assert '"mIoU"' in evaluated.stdout or "miou" in evaluated.stdout.lower()
    refused = subprocess.run([*vltk, "eval", "--checkpoint", str(backbone_file), *RUN], capture_output=True, text=True)
    assert refused.returncode == 2
    assert refused.stderr.startswith("Error: ") and "rein (Rein release" in refused.stderr
    assert "Traceback" not in refused.stderr
