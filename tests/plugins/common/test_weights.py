"""Weight loading (``vltk_plugins.common.weights``): reading files, patch/grid conversion, fit checks, the loader.

The backbones' own loading paths (round trips, Rein's patch-14 -> 16 conversion, DINOv2's Meta layout) are tested
in ``tests/plugins/backbones``; here each public helper is checked directly, with fabricated checkpoints.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

from vltk.errors import UserError
from vltk_plugins.backbones.open_clip_vit.model import TINY_CLIP_CONFIG
from vltk_plugins.common.weights import (
    TEXT_TOWER,
    WeightSpec,
    check_fit,
    load_pretrained,
    load_pretrained_or_warn,
    read_state_dict,
    resample_spatial,
    warn_random,
)

#: What ``clip-vit`` tells the loader about the tiny CLIP: its layouts, patch kernel, position grid, text tower.
CLIP_VIT_SPEC = WeightSpec(
    backbone="clip-vit",
    label="test",
    what="open_clip checkpoint",
    patch_key="visual.conv1.weight",
    pos_key="visual.positional_embedding",
    grid=(14, 14),
    optional=(TEXT_TOWER,),
)


def _save(path: Path, value: object) -> str:
    torch.save(value, path)
    return str(path)


# --------------------------------------------------------------------------------------------- read_state_dict
def test_read_state_dict_unwraps_and_strips_module_prefix(tmp_path: Path) -> None:
    state = {"a.weight": torch.randn(2, 3), "b": torch.arange(4)}
    for name, stored in {
        "raw": state,
        "wrapped": {"state_dict": state, "epoch": 3},
        "model": {"model": state},
        "ddp": {"module." + key: value for key, value in state.items()},
    }.items():
        loaded = read_state_dict(_save(tmp_path / f"{name}.pt", stored), "test")
        assert loaded.keys() == state.keys(), name
        assert all(torch.equal(loaded[key], state[key]) for key in state), name


def test_read_state_dict_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = {"a.weight": torch.randn(2, 3)}
    path = tmp_path / "weights.safetensors"
    save_file(state, str(path))
    torch.testing.assert_close(read_state_dict(str(path), "test")["a.weight"], state["a.weight"], rtol=0, atol=0)


def test_read_state_dict_errors_say_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"lbl: pretrained file '.*nope\.pt' does not exist; pass pretrained=<path to"):
        read_state_dict(str(tmp_path / "nope.pt"), "lbl")
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(UserError, match=r"(?s)could not read .* as a state dict .*TorchScript"):
        read_state_dict(str(junk), "lbl")
    with pytest.raises(UserError, match="does not hold a state dict of tensors; pass pretrained=<path to a local DINO"):
        read_state_dict(_save(tmp_path / "mixed.pt", {"a": torch.ones(1), "b": 3}), "lbl", "DINO checkpoint")
    with pytest.raises(UserError, match="does not hold a state dict of tensors"):
        read_state_dict(_save(tmp_path / "empty.pt", {}), "lbl")


# --------------------------------------------------------------------------------------------- resample_spatial
def test_resample_spatial_leaves_fitting_entries_alone() -> None:
    kernel, positions = torch.randn(8, 3, 16, 16), torch.randn(1, 1 + 16, 8)
    state = {"patch": kernel, "pos": positions}
    resample_spatial(state, {"patch": kernel.clone(), "pos": positions.clone()}, "patch", "pos", (4, 4), "test")
    assert state["patch"] is kernel and state["pos"] is positions


@pytest.mark.parametrize("batched", [True, False])
def test_resample_spatial_position_grid(batched: bool) -> None:
    """A 4x4 grid becomes 6x6: the cls row is kept, a constant grid stays constant, a smooth one stays smooth."""
    cls = torch.randn(1, 8)
    rows = torch.linspace(0.0, 1.0, 4).view(4, 1, 1).expand(4, 4, 8)
    grid = torch.cat([cls, rows.reshape(16, 8)]), torch.cat([cls, torch.full((16, 8), 0.5)])
    for positions in grid:
        stored = positions.unsqueeze(0) if batched else positions
        target = torch.empty(1, 1 + 36, 8) if batched else torch.empty(1 + 36, 8)
        state = {"pos": stored}
        resample_spatial(state, {"pos": target}, "patch", "pos", (6, 6), "test")
        resampled = state["pos"].reshape(1 + 36, 8)
        assert state["pos"].shape == target.shape
        torch.testing.assert_close(resampled[:1], cls, rtol=0, atol=0)
        spatial = resampled[1:].reshape(6, 6, 8)
        if torch.all(positions[1:] == 0.5):
            torch.testing.assert_close(spatial, torch.full((6, 6, 8), 0.5))
        else:  # rows increase top to bottom, columns are equal
            assert torch.all(spatial[1:, :, 0] > spatial[:-1, :, 0])
            torch.testing.assert_close(spatial[:, :1].expand(6, 6, 8), spatial)


def test_resample_spatial_grid_without_prefix_rows() -> None:
    """DINOv2 with registers keeps no cls position (``num_prefix_tokens=0``): every row is part of the grid."""
    positions = torch.full((1, 16, 4), 2.0)
    state = {"pos": positions}
    resample_spatial(state, {"pos": torch.empty(1, 9, 4)}, "patch", "pos", (3, 3), "test", num_prefix_tokens=0)
    torch.testing.assert_close(state["pos"], torch.full((1, 9, 4), 2.0))


def test_resample_spatial_patch_kernel_keeps_patch_embeddings() -> None:
    """FlexiViT's PI-resize: a 14x14 patch upsampled bicubically to 16x16 and embedded with the converted kernel
    gives the same embedding as the original patch with the original kernel."""
    torch.manual_seed(0)
    kernel = torch.randn(6, 3, 14, 14)
    state = {"patch": kernel}
    resample_spatial(state, {"patch": torch.empty(6, 3, 16, 16)}, "patch", "pos", (2, 2), "test")
    converted = state["patch"]
    assert converted.shape == (6, 3, 16, 16) and converted.dtype == kernel.dtype
    patches = torch.randn(5, 3, 14, 14)
    upsampled = F.interpolate(patches, size=(16, 16), mode="bicubic", antialias=True, align_corners=False)
    original = torch.einsum("nchw,kchw->nk", patches, kernel)
    torch.testing.assert_close(torch.einsum("nchw,kchw->nk", upsampled, converted), original, rtol=1e-4, atol=1e-4)


def test_resample_spatial_leaves_unconvertible_shapes_for_check_fit() -> None:
    kernel, positions = torch.randn(8, 3, 14, 14), torch.randn(1, 1 + 15, 8)  # other width / non-square grid
    state = {"patch": kernel, "pos": positions}
    target = {"patch": torch.empty(4, 3, 16, 16), "pos": torch.empty(1, 1 + 16, 8)}
    resample_spatial(state, target, "patch", "pos", (4, 4), "test")
    assert state["patch"] is kernel and state["pos"] is positions
    with pytest.raises(UserError, match=r"'patch' has shape \(8, 3, 14, 14\) in the file but \(4, 3, 16, 16\)"):
        check_fit(state, target, path="w.pt", label="test")


# --------------------------------------------------------------------------------------------------- check_fit
def test_check_fit() -> None:
    target = {"a": torch.empty(2), "b": torch.empty(3)}
    assert check_fit({"a": torch.ones(2)}, target, path="w.pt", label="lbl") == ["b"]
    assert check_fit({"a": torch.ones(2), "b": torch.ones(3)}, target, path="w.pt", label="lbl") == []
    with pytest.raises(UserError, match=r"lbl: 'w\.pt' has 1 keys this model lacks \(first: \['c'\]\)"):
        check_fit({"a": torch.ones(2), "c": torch.ones(1)}, target, path="w.pt", label="lbl")
    with pytest.raises(UserError, match=r"'b' has shape \(4,\) in the file but \(3,\) in the model"):
        check_fit({"b": torch.ones(4)}, target, path="w.pt", label="lbl")


# ------------------------------------------------------------------------------------------------ the loader
@pytest.fixture(scope="module")
def plain_clip() -> open_clip.CLIP:
    """open_clip's ``CLIP`` layout (text keys on the model itself: ``transformer.*``, ``token_embedding``...)."""
    torch.manual_seed(7)
    return open_clip.CLIP(**TINY_CLIP_CONFIG).eval()


def _custom_text_clip(seed: int) -> open_clip.CustomTextCLIP:
    torch.manual_seed(seed)
    return open_clip.CustomTextCLIP(**TINY_CLIP_CONFIG).eval()


def test_open_clip_checkpoint_loads_through_the_public_loader(tmp_path: Path, plain_clip: open_clip.CLIP) -> None:
    """A DDP-saved checkpoint with open_clip's key names loads into the ``CustomTextCLIP`` the backbones build."""
    stored = {"state_dict": {"module." + key: value for key, value in plain_clip.state_dict().items()}}
    path = _save(tmp_path / "open_clip.pt", stored)
    clip = _custom_text_clip(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete checkpoint loads without a warning
        load_pretrained(clip, path, CLIP_VIT_SPEC)
    image, tokens = torch.randn(1, 3, 224, 224), open_clip.tokenize(["a road"])
    with torch.no_grad():
        torch.testing.assert_close(clip.encode_image(image), plain_clip.encode_image(image), rtol=0, atol=0)
        torch.testing.assert_close(clip.encode_text(tokens), plain_clip.encode_text(tokens), rtol=0, atol=0)
    assert clip.logit_scale.item() == plain_clip.logit_scale.item()


def test_vision_only_checkpoint_with_bare_keys(tmp_path: Path, plain_clip: open_clip.CLIP) -> None:
    """Image-tower keys without ``visual.`` get ``vision_prefix``; the text tower keeps its weights, with a warning."""
    bare = {key[len("visual.") :]: value for key, value in plain_clip.state_dict().items() if key.startswith("visual.")}
    path = _save(tmp_path / "vision.pt", bare)
    clip = _custom_text_clip(0)
    text_before = clip.text.ln_final.weight.clone()
    with pytest.warns(UserWarning, match="has no text tower; the text tower keeps random weights"):
        load_pretrained(clip, path, CLIP_VIT_SPEC)
    torch.testing.assert_close(clip.visual.conv1.weight, plain_clip.visual.conv1.weight, rtol=0, atol=0)
    torch.testing.assert_close(clip.text.ln_final.weight, text_before, rtol=0, atol=0)


def test_loader_refuses_incomplete_towers(tmp_path: Path, plain_clip: open_clip.CLIP) -> None:
    full = _custom_text_clip(3).state_dict()
    no_ln_post = {key: value for key, value in full.items() if key != "visual.ln_post.bias"}
    with pytest.raises(UserError, match=r"lacks 1 image-tower keys \(first: \['visual\.ln_post\.bias'\]\)"):
        load_pretrained(_custom_text_clip(0), _save(tmp_path / "a.pt", no_ln_post), CLIP_VIT_SPEC)
    no_ln_final = {key: value for key, value in full.items() if key != "text.ln_final.bias"}
    with pytest.raises(UserError, match="incomplete text tower"):
        load_pretrained(_custom_text_clip(0), _save(tmp_path / "b.pt", no_ln_final), CLIP_VIT_SPEC)


def test_loader_converts_patch_size(tmp_path: Path) -> None:
    config = {**TINY_CLIP_CONFIG, "vision_cfg": {**TINY_CLIP_CONFIG["vision_cfg"], "patch_size": 14}}
    torch.manual_seed(0)
    source = open_clip.CustomTextCLIP(**config)
    clip = _custom_text_clip(1)
    load_pretrained(clip, _save(tmp_path / "p14.pt", source.state_dict()), CLIP_VIT_SPEC)
    assert clip.visual.conv1.weight.shape == (64, 3, 16, 16)
    assert clip.visual.positional_embedding.shape == (1 + 14 * 14, 64)
    torch.testing.assert_close(clip.visual.positional_embedding[0], source.visual.positional_embedding[0])


# -------------------------------------------------------------------------------------- random or pretrained
def test_warn_random_and_load_pretrained_or_warn(tmp_path: Path, plain_clip: open_clip.CLIP) -> None:
    with pytest.warns(UserWarning, match=r"^lbl: pretrained=None, so the backbone has random weights; pass "):
        warn_random("lbl")
    with pytest.warns(UserWarning, match="pretrained=<local DINO checkpoint>"):
        warn_random("lbl", "DINO checkpoint")

    clip = _custom_text_clip(0)
    before = clip.visual.conv1.weight.clone()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_pretrained_or_warn(clip, None, replace(CLIP_VIT_SPEC, label="lbl"))
    messages = [str(w.message).split(";")[0] for w in caught]
    assert messages == ["lbl: pretrained=None, so the backbone has random weights"]
    assert "pretrained=<local open_clip checkpoint>" in str(caught[0].message)  # the spec's ``what``
    torch.testing.assert_close(clip.visual.conv1.weight, before, rtol=0, atol=0)

    load_pretrained_or_warn(
        clip, _save(tmp_path / "w.pt", plain_clip.state_dict()), replace(CLIP_VIT_SPEC, label="lbl")
    )
    torch.testing.assert_close(clip.visual.conv1.weight, plain_clip.visual.conv1.weight, rtol=0, atol=0)
