"""The ``eva02`` and ``clip-vit`` backbones: pyramid shapes at any size, hooks, text space, weight loading.

Everything runs on tiny random models (milliseconds per forward); the big variants are built on the meta
device, which checks their facts and shapes without allocating or initialising hundreds of millions of weights.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from vltk.api import BuildContext
from vltk.errors import UserError
from vltk_plugins.backbones.open_clip_vit.model import ClipViTBackbone, Eva02Backbone, build_clip_vit, build_eva02
from vltk_plugins.backbones.open_clip_vit.options import ClipViTOptions, Eva02Options
from vltk_plugins.common.vit import InputSizeError


def _quiet(build, options, context: BuildContext | None = None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build(options) if context is None else build(options, context)


@pytest.fixture(scope="module")
def eva() -> Eva02Backbone:
    torch.manual_seed(0)
    return _quiet(build_eva02, Eva02Options(variant="tiny")).eval()


@pytest.fixture(scope="module")
def clip() -> ClipViTBackbone:
    torch.manual_seed(0)
    return _quiet(build_clip_vit, ClipViTOptions(variant="tiny")).eval()


@pytest.fixture(params=["eva", "clip"])
def backbone(request: pytest.FixtureRequest):
    return request.getfixturevalue(request.param)


def test_facts(eva: Eva02Backbone, clip: ClipViTBackbone) -> None:
    assert (eva.embed_dim, eva.num_layers, eva.patch_size, eva.text_dim) == (192, 12, 16, 256)
    assert eva.out_indices == (3, 5, 7, 11)
    assert (clip.embed_dim, clip.num_layers, clip.patch_size, clip.text_dim) == (64, 4, 16, 64)
    for backbone in (eva, clip):
        assert backbone.has_cls_token and backbone.strides == (4, 8, 16, 32)
        assert len(backbone.mean) == len(backbone.std) == 3


@pytest.mark.parametrize("size", [(64, 96), (96, 64), (48, 80)])
def test_pyramid_shapes_any_multiple_of_patch(backbone, size: tuple[int, int]) -> None:
    height, width = size
    with torch.no_grad():
        features = backbone.forward_features(torch.randn(2, 3, height, width))
    assert [tuple(f.shape) for f in features] == [
        (2, backbone.embed_dim, max(1, height // s), max(1, width // s)) for s in (4, 8, 16, 32)
    ]


def test_hooks_called_after_every_block_in_order(backbone) -> None:
    calls: list[tuple[str, int, tuple[int, ...]]] = []

    def first(x: torch.Tensor, layer_idx: int) -> torch.Tensor:
        calls.append(("first", layer_idx, tuple(x.shape)))
        return x

    def second(x: torch.Tensor, layer_idx: int) -> torch.Tensor:
        calls.append(("second", layer_idx, tuple(x.shape)))
        return x

    with torch.no_grad():
        backbone.forward_features(torch.randn(2, 3, 64, 96), block_hooks=[first, second])
    tokens = (2, 1 + 4 * 6, backbone.embed_dim)
    expected = [(name, i, tokens) for i in range(backbone.num_layers) for name in ("first", "second")]
    assert calls == expected


def test_hook_changes_output(backbone) -> None:
    x = torch.randn(1, 3, 64, 64)
    last = backbone.num_layers - 1

    offset = torch.linspace(-1.0, 1.0, backbone.embed_dim)  # not constant: LayerNorm would undo a constant

    def shift(tokens: torch.Tensor, layer_idx: int) -> torch.Tensor:
        return tokens + offset if layer_idx == last else tokens

    with torch.no_grad():
        plain = backbone.forward_features(x)
        hooked = backbone.forward_features(x, block_hooks=[shift])
        # the last level comes from the last block: its patch tokens moved by exactly `offset` before pooling
        torch.testing.assert_close(hooked[-1], plain[-1] + offset.view(1, -1, 1, 1))
        global_plain, _ = backbone.embed(x)
        global_hooked, _ = backbone.embed(x, block_hooks=[shift])
    assert not torch.allclose(global_plain, global_hooked)


def test_hook_with_wrong_shape_is_reported(clip: ClipViTBackbone) -> None:
    with pytest.raises(ValueError, match="block hook"):
        clip.forward_features(torch.randn(1, 3, 32, 32), block_hooks=[lambda x, i: x[:, 1:]])


def test_out_indices_override_and_validation(clip: ClipViTBackbone) -> None:
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        last = clip.forward_features(x, out_indices=[-1, -1, -1, -1])
        default = clip.forward_features(x)
    torch.testing.assert_close(last[-1], default[-1])  # default level 4 is the last block too
    with pytest.raises(UserError, match="out of range"):
        clip.forward_features(x, out_indices=[0, 1, 2, 9])
    with pytest.raises(UserError, match="4 block indices"):
        clip.forward_features(x, out_indices=[0, 1])


def test_embed_shapes_and_global_matches_open_clip(backbone) -> None:
    with torch.no_grad():
        global_embedding, dense = backbone.embed(torch.randn(2, 3, 64, 96))
        assert global_embedding.shape == (2, backbone.text_dim)
        assert dense.shape == (2, backbone.text_dim, 4, 6)
        image = torch.randn(1, 3, 224, 224)  # open_clip's own size: our loop must give its image embedding
        torch.testing.assert_close(backbone.embed(image)[0], backbone.open_clip_model().encode_image(image))


def test_input_not_multiple_of_patch(backbone) -> None:
    with pytest.raises(InputSizeError, match="not a multiple of the patch size 16"):
        backbone.forward_features(torch.randn(1, 3, 64, 70))
    assert issubclass(InputSizeError, UserError) and issubclass(InputSizeError, ValueError)


def test_text_tower_and_tokenizer(clip: ClipViTBackbone) -> None:
    tokens = clip.tokenizer()(["a photo of a road", "a car"])
    assert tokens.shape == (2, 77)
    with torch.no_grad():
        text = clip.text_tower()(tokens)
    assert text.shape == (2, clip.text_dim)
    torch.testing.assert_close(clip.encode_text(["a photo of a road", "a car"]), text)
    # the text tower is frozen and not a parameter of the backbone (adapters and optimizers never see it)
    assert not any(p.requires_grad for p in clip.text_tower().parameters())
    text_ids = {id(p) for p in clip.text_tower().parameters()}
    assert not text_ids & {id(p) for p in clip.parameters()}
    assert all(name.startswith("visual.") for name, _ in clip.named_parameters())


def test_state_dict_is_an_open_clip_checkpoint_with_text(clip: ClipViTBackbone) -> None:
    state = clip.state_dict()
    assert state.keys() == clip.open_clip_model().state_dict().keys()
    torch.manual_seed(5)
    other = _quiet(build_clip_vit, ClipViTOptions(variant="tiny")).eval()
    assert not torch.equal(other.encode_text(["road"]), clip.encode_text(["road"]))
    other.load_state_dict(state, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(other.encode_text(["road"]), clip.encode_text(["road"]), rtol=0, atol=0)
    # older vision-only state dicts still load (the text tower is left as it is)
    other.load_state_dict({k: v for k, v in state.items() if k.startswith("visual.")}, strict=True)
    bad = dict(state, **{"text.ln_final.weight": torch.ones(3)})
    with pytest.raises(RuntimeError, match="ln_final"):
        other.load_state_dict(bad)


def test_text_tower_follows_dtype_moves() -> None:
    torch.manual_seed(0)
    backbone = _quiet(build_clip_vit, ClipViTOptions(variant="tiny")).double()
    assert next(backbone.text_tower().parameters()).dtype == torch.float64
    assert backbone.open_clip_model().logit_scale.dtype == torch.float64
    with torch.no_grad():
        assert backbone.encode_text(["x"]).dtype == torch.float64


def test_random_weights_warn_once() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_clip_vit(ClipViTOptions(variant="tiny"))
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "random weights" in messages[0]


def test_factories_ignore_the_build_context() -> None:
    context = BuildContext(embed_dim=1, num_classes=19)
    backbone = _quiet(build_clip_vit, ClipViTOptions(variant="tiny"), context)
    assert backbone.embed_dim == 64
    assert _quiet(build_eva02, Eva02Options(), context).embed_dim == 192
    assert _quiet(build_clip_vit, {"variant": "tiny", "out_indices": [0, 1, 2, 3]}).out_indices == (0, 1, 2, 3)


@pytest.mark.parametrize("which", ["eva", "clip"])
def test_pretrained_round_trip(tmp_path, which: str) -> None:
    build, options = {
        "eva": (build_eva02, Eva02Options),
        "clip": (build_clip_vit, lambda **kw: ClipViTOptions(variant="tiny", **kw)),
    }[which]
    torch.manual_seed(1)
    source = _quiet(build, options()).eval()
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": source.state_dict()}, path)  # the backbone's state dict is an open_clip checkpoint
    torch.manual_seed(2)
    loaded = _quiet(build, options(pretrained=str(path))).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(source.forward_features(x), loaded.forward_features(x), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(source.embed(x)[1], loaded.embed(x)[1], rtol=0, atol=0)
        torch.testing.assert_close(source.encode_text(["road"]), loaded.encode_text(["road"]), rtol=0, atol=0)

    # a vision-only file (the backbone's own state dict) loads too; the text tower stays random, with a warning
    vision_only = tmp_path / "vision.pt"
    torch.save({k: v for k, v in source.state_dict().items() if k.startswith("visual.")}, vision_only)
    with pytest.warns(UserWarning, match="no text tower"):
        partial = build(options(pretrained=str(vision_only)))
    with torch.no_grad():
        torch.testing.assert_close(source.eval().forward_features(x)[0], partial.eval().forward_features(x)[0])


def test_pretrained_missing_file(tmp_path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(UserError, match=r"does not exist.*pretrained=") as error:
        build_clip_vit(ClipViTOptions(variant="tiny", pretrained=str(missing)))
    assert str(missing) in str(error.value)


def test_pretrained_wrong_shape_names_key(tmp_path, clip: ClipViTBackbone) -> None:
    state = dict(clip.open_clip_model().state_dict())
    state["visual.ln_post.weight"] = torch.ones(65)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(UserError, match=r"'visual\.ln_post\.weight' has shape \(65,\) in the file but \(64,\)"):
        build_clip_vit(ClipViTOptions(variant="tiny", pretrained=str(path)))


def test_pretrained_of_another_model(tmp_path, eva: Eva02Backbone) -> None:
    """The layout is detected and named, with the backbone that reads it (was: a key diff, 'check variant/model')."""
    path = tmp_path / "eva.pt"
    torch.save(eva.open_clip_model().state_dict(), path)
    with pytest.raises(UserError, match=r"holds open_clip EVA02 .* weights, which backbone eva02 reads, not clip-vit"):
        build_clip_vit(ClipViTOptions(variant="tiny", pretrained=str(path)))


def test_pretrained_not_a_state_dict(tmp_path) -> None:
    path = tmp_path / "junk.pt"
    path.write_text("not a checkpoint")
    with pytest.raises(UserError, match="could not read"):
        build_clip_vit(ClipViTOptions(variant="tiny", pretrained=str(path)))


def test_patch14_checkpoint_converted_to_patch16(tmp_path) -> None:
    """Rein's conversion: a patch-14 checkpoint loads into a patch-16 model (kernel and position grid resampled)."""
    torch.manual_seed(0)
    source = _quiet(build_clip_vit, ClipViTOptions(variant="tiny", patch_size=14))
    path = tmp_path / "p14.pt"
    torch.save(source.open_clip_model().state_dict(), path)
    target = _quiet(build_clip_vit, ClipViTOptions(variant="tiny", pretrained=str(path)))
    assert target.patch_size == 16
    torch.testing.assert_close(target.visual.ln_post.weight, source.visual.ln_post.weight)
    assert target.visual.conv1.weight.shape[-2:] == (16, 16)


def test_clip_position_cache_sees_new_weights(clip: ClipViTBackbone) -> None:
    backbone = _quiet(build_clip_vit, ClipViTOptions(variant="tiny")).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        before = backbone.forward_features(x)[0]
        backbone.visual.positional_embedding.add_(1.0)
        after = backbone.forward_features(x)[0]
    assert not torch.allclose(before, after)


def test_grad_checkpointing_same_gradients() -> None:
    torch.manual_seed(0)
    backbone = _quiet(build_clip_vit, ClipViTOptions(variant="tiny")).train()
    x = torch.randn(1, 3, 32, 64)

    def grads() -> list[torch.Tensor]:
        backbone.zero_grad()
        sum(f.square().mean() for f in backbone.forward_features(x)).backward()
        return [p.grad.clone() for p in backbone.parameters() if p.grad is not None]  # ln_post/proj: embed only

    plain = grads()
    backbone.set_grad_checkpointing(True)
    checkpointed = grads()
    assert len(plain) == len(checkpointed) > 0
    for a, b in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(a, b)


def test_eva02_drop_path_reaches_timm() -> None:
    backbone = _quiet(build_eva02, Eva02Options(drop_path_rate=0.2))
    assert backbone.trunk.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)


def test_clip_vit_unknown_or_unsupported_model() -> None:
    with pytest.raises(UserError, match="did you mean 'ViT-B-16'"):
        build_clip_vit(ClipViTOptions(model="ViT-B-61"))
    with pytest.raises(UserError, match="eva02 backbone"):
        build_clip_vit(ClipViTOptions(model="EVA02-B-16"))


def test_clip_vit_variant_wins_over_model_and_out_indices_are_checked() -> None:
    # resolved configs carry the default model next to variant=tiny; that must stay valid and build the tiny one
    options = ClipViTOptions.model_validate(ClipViTOptions(variant="tiny").model_dump())
    assert build_clip_vit(options).embed_dim == 64
    with pytest.raises(ValueError, match="exactly 4"):
        Eva02Options(out_indices=[1, 2, 3])


@pytest.mark.parametrize(
    ("build", "options", "facts", "size"),
    [
        (build_eva02, Eva02Options(variant="large"), (1024, 24, 14, 768, (7, 11, 15, 23)), (448, 672)),
        (build_eva02, Eva02Options(variant="large", patch_size=16), (1024, 24, 16, 768, (7, 11, 15, 23)), (512, 512)),
        (build_eva02, Eva02Options(variant="base"), (768, 12, 16, 512, (3, 5, 7, 11)), (512, 1024)),
        (build_eva02, Eva02Options(variant="small"), (384, 12, 16, 384, (3, 5, 7, 11)), (512, 512)),
        (build_clip_vit, ClipViTOptions(model="ViT-L-14"), (1024, 24, 14, 768, (7, 11, 15, 23)), (448, 448)),
    ],
)
def test_big_variants_on_meta_device(build, options, facts, size) -> None:
    """Facts and pyramid shapes of the real-size models, built on the meta device (no memory, ~1 s)."""
    with torch.device("meta"):
        backbone = _quiet(build, options)
        features = backbone.forward_features(torch.empty(1, 3, *size))
        global_embedding, dense = backbone.embed(torch.empty(1, 3, *size))
    embed_dim, num_layers, patch, text_dim, out_indices = facts
    assert (backbone.embed_dim, backbone.num_layers, backbone.patch_size) == (embed_dim, num_layers, patch)
    assert (backbone.text_dim, backbone.out_indices) == (text_dim, out_indices)
    assert [tuple(f.shape) for f in features] == [(1, embed_dim, size[0] // s, size[1] // s) for s in (4, 8, 16, 32)]
    assert global_embedding.shape == (1, text_dim)
    assert dense.shape == (1, text_dim, size[0] // patch, size[1] // patch)


def test_eva02_base_and_large_match_open_clip_checkpoint_layout() -> None:
    """Same keys and shapes as open_clip's EVA02-B-16 / EVA02-L-14, so released open_clip weights load as-is."""
    import open_clip

    for variant, name in (("base", "EVA02-B-16"), ("large", "EVA02-L-14")):
        with torch.device("meta"):
            ours = _quiet(build_eva02, Eva02Options(variant=variant)).open_clip_model().state_dict()
            config = {k: v for k, v in open_clip.get_model_config(name).items() if k != "custom_text"}
            reference = open_clip.CustomTextCLIP(**config).state_dict()
        assert ours.keys() == reference.keys()
        assert all(ours[key].shape == reference[key].shape for key in ours)
