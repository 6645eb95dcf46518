"""``vltk convert SRC DST --to BACKBONE [OPTION=VALUE...]``: the written file is an open_clip/timm state dict that
``backbone.pretrained=DST`` loads strictly to the same model as SRC, and that timm/open_clip load themselves;
every mistake is one ``Error:`` line."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from vltk.testing import invoke
from vltk_plugins.backbones.dinov2.model import build_dinov2, build_trunk
from vltk_plugins.backbones.dinov2.options import Dinov2Options
from vltk_plugins.backbones.open_clip_vit.model import build_eva02


def _quiet(build, options: dict):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build(options).eval()


@pytest.fixture(scope="module")
def dinov2_p14(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, object]:
    """Meta's DINOv2 release layout of a tiny patch-14 model (37x37 grid), what Rein converts."""
    torch.manual_seed(0)
    source = _quiet(build_dinov2, {"variant": "tiny", "patch_size": 14})
    state = dict(source.trunk.state_dict(), mask_token=torch.zeros(1, 192))
    path = tmp_path_factory.mktemp("src") / "dinov2_vits14_pretrain.pth"
    torch.save(state, path)
    return str(path), source


def test_convert_dinov2_patch14_to_rein_patch16(tmp_path: Path, dinov2_p14: tuple[str, object]) -> None:
    source, _ = dinov2_p14
    destination = tmp_path / "dinov2_tiny_p16.pt"
    result = invoke(["convert", source, str(destination), "--to", "dinov2", "variant=tiny", "backbone.patch_size=16"])
    assert result.exit_code == 0, result.output
    assert "DINOv2 (Meta release" in result.output and "patch kernel (14, 14) -> (16, 16) (rein)" in result.output
    assert "position grid 37x37 -> 32x32 (rein)" in result.output and "dropped 1 entries" in result.output
    assert (
        f"--backbone dinov2 backbone.variant=tiny backbone.patch_size=16 backbone.pretrained={destination}"
        in result.output
    )
    written = torch.load(destination, weights_only=True)
    assert "mask_token" not in written and written["patch_embed.proj.weight"].shape == (192, 3, 16, 16)
    timm_model = build_trunk(Dinov2Options(variant="tiny"))
    timm_model.load_state_dict(written, strict=True)  # a timm state dict, as it says
    direct = _quiet(build_dinov2, {"variant": "tiny", "pretrained": source})
    via_file = _quiet(build_dinov2, {"variant": "tiny", "pretrained": str(destination)})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(direct.forward_features(x), via_file.forward_features(x), strict=True):
            assert torch.equal(a, b)


def test_convert_eva02_official_to_open_clip_safetensors(tmp_path: Path, fabricate: SimpleNamespace) -> None:
    """BAAI's MIM layout -> open_clip keys (.safetensors by name); the file has no text tower, so loading it warns
    as loading the original does, and gives the same pyramid."""
    from safetensors.torch import load_file

    torch.manual_seed(0)
    eva = _quiet(build_eva02, {"variant": "tiny"})
    source = tmp_path / "eva02_Ti.pt"
    torch.save({"model": fabricate.baai_eva02_mim(eva.visual.trunk.state_dict(), head_dim=64)}, source)
    destination = tmp_path / "eva02_tiny.safetensors"
    result = invoke(["convert", str(source), str(destination), "--to", "eva02", "variant=tiny", "patch_resample=flexi"])
    assert result.exit_code == 0, result.output
    assert "EVA02 (BAAI MIM release" in result.output and "under 'model'" in result.output
    assert "not in the file: text tower" in result.output and "not in the file: image-text projection" in result.output
    written = load_file(str(destination))
    assert all(key.startswith("visual.trunk.") for key in written) and "visual.trunk.blocks.0.mlp.fc1.weight" in written
    with pytest.warns(UserWarning, match="has no text tower"):
        loaded = build_eva02({"variant": "tiny", "pretrained": str(destination)}).eval()
    with torch.no_grad():
        assert torch.equal(
            loaded.forward_features(torch.ones(1, 3, 32, 32))[2], eva.forward_features(torch.ones(1, 3, 32, 32))[2]
        )


def test_convert_errors_are_one_line(tmp_path: Path, dinov2_p14: tuple[str, object]) -> None:
    source, _ = dinov2_p14
    out = str(tmp_path / "out.pt")
    cases = {
        (
            "convert",
            str(tmp_path / "missing.pth"),
            out,
            "--to",
            "dinov2",
        ): "pretrained file '.*missing.pth' does not exist",
        ("convert", source, out, "--to", "dinov"): r"not a backbone whose weights vltk converts; did you mean 'dinov2'",
        ("convert", source, out, "--to", "mask2former"): "choose one of clip-resnet, clip-vit, dinov2, eva02",
        (
            "convert",
            source,
            out,
            "--to",
            "eva02",
        ): r"holds DINOv2 \(Meta release.* which backbone dinov2 reads, not eva02",
        (
            "convert",
            source,
            out,
            "--to",
            "dinov2",
            "variant=huge",
        ): r"backbone dinov2 option 'variant': Input should be",
        ("convert", source, out, "--to", "dinov2", "varaint=tiny"): r"has no option 'varaint'; did you mean 'variant'",
        ("convert", source, out, "--to", "dinov2", "pretrained=x.pt"): "pretrained= is not an option here",
        ("convert", source, source, "--to", "dinov2"): "is SRC; write the converted file elsewhere",
    }
    junk = tmp_path / "junk.pth"
    torch.save({"some.head.weight": torch.ones(1)}, junk)
    cases[("convert", str(junk), out, "--to", "dinov2")] = "is in no weight layout vltk knows"
    for args, expected in cases.items():
        result = invoke(list(args))
        assert result.exit_code == 2, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), (args, result.output)
        assert re.search(expected, lines[0]), (expected, lines[0])
    Path(out).write_bytes(b"")
    result = invoke(["convert", source, out, "--to", "dinov2", "patch_size=14"])
    assert result.exit_code == 2 and "exists; pass --force to overwrite it" in result.output
    result = invoke(["convert", source, out, "--to", "dinov2", "patch_size=14", "--force"])
    assert result.exit_code == 0, result.output
