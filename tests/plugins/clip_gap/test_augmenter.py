"""The clip-gap augmenter: the paper's prompts, identity at init and in eval, the per-channel shift, the
probability gate, the fit phase (lowers L_opt, touches nothing but the offsets), segmentation levels."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from vltk.context import BuildContext
from vltk.errors import UserError
from vltk_plugins.clip_gap.augmenter import ClipGapAugmenter, build_clip_gap, fit_modes
from vltk_plugins.clip_gap.options import SOURCE_PROMPT, VOC_STYLE_PROMPTS, ClipGapOptions, diverse_weather_prompts
from vltk_plugins.prompters.clip_prompts.model import build_clip_template

PAPER_TARGETS = [  # prunedprompts2.txt of the released code, in order
    "an image taken on a snow night",
    "an image taken on a fog night",
    "an image taken on a cloudy night",
    "an image taken on a rain night",
    "an image taken on a stormy night",
    "an image taken on a snow day",
    "an image taken on a fog day",
    "an image taken on a cloudy day",
    "an image taken on a rain day",
    "an image taken on a stormy day",
    "an image taken on a snow evening",
    "an image taken on a fog evening",
    "an image taken on a cloudy evening",
    "an image taken on a rain evening",
    "an image taken on a stormy evening",
]


def test_prompts_reproduce_the_paper() -> None:
    options = ClipGapOptions()
    assert options.source_prompt == SOURCE_PROMPT == "an image taken during the day"
    assert options.target_prompts == diverse_weather_prompts() == PAPER_TARGETS
    assert VOC_STYLE_PROMPTS[0] == "an image in the comics style" and len(VOC_STYLE_PROMPTS) == 7
    # paper parity defaults
    assert (options.probability, options.fit_steps, options.fit_lr) == (0.5, None, 0.01)
    assert (options.crops_per_image, options.crop_size, options.offset_size) == (15, 400, 14)
    augmenter = build_clip_gap(options, BuildContext(channels_a=1024))
    assert augmenter.fit_budget() == 1000  # OFFSET_OPT_ITERS, unless the run is shorter
    assert (augmenter.fit_budget(run_iters=30), augmenter.fit_budget(run_iters=90_000)) == (30, 1000)
    explicit = build_clip_gap(ClipGapOptions(fit_steps=7), BuildContext(channels_a=8))
    assert explicit.fit_budget(run_iters=3) == 7
    assert augmenter.offsets.shape == (15, 1024, 14, 14) and augmenter.offsets.numel() == 3_010_560
    assert augmenter.stage == "feature" and augmenter.crop_resolution == 224
    with pytest.raises(ValueError, match="empty"):
        ClipGapOptions(target_prompts=["a", " "])


def augmenter(channels: int = 8, **options: object) -> ClipGapAugmenter:
    return build_clip_gap(
        {"target_prompts": ["a", "b", "c"], "offset_size": 4, **options}, BuildContext(channels_a=channels)
    )


def test_zero_offsets_are_an_identity_and_eval_is_identity() -> None:
    aug = augmenter(probability=1.0).train()
    x = torch.randn(2, 8, 5, 7)
    torch.testing.assert_close(aug(x), x)  # zero-initialised offsets
    with torch.no_grad():
        aug.offsets.normal_()
    assert not torch.equal(aug(x), x)  # training, p = 1: shifted
    aug.eval()
    assert aug(x) is x  # eval: identity
    aug.train()
    other = torch.randn(2, 6, 5, 7)
    assert aug(other) is other  # maps of another width pass through
    assert augmenter(probability=0.0).train()(x) is x


def test_augment_adds_a_per_channel_constant() -> None:
    aug = augmenter()
    with torch.no_grad():
        aug.offsets.normal_()
    x = torch.randn(3, 8, 6, 9)
    indices = torch.tensor([2, 0, 2])
    delta = aug.augment(x, indices) - x
    assert float(delta.var(dim=(2, 3)).max()) < 1e-10  # constant over space (spatial variance 0)
    expected = aug.offsets.detach().mean(dim=(2, 3))[indices]
    torch.testing.assert_close(delta[:, :, 0, 0], expected)
    gated = aug.augment(x, indices, gate=torch.tensor([True, False, True])) - x
    assert float(gated[1].abs().max()) == 0.0 and torch.allclose(gated[0], delta[0])


def test_probability_gate_per_batch_and_per_image() -> None:
    torch.manual_seed(0)
    aug = augmenter(probability=0.5).train()
    with torch.no_grad():
        aug.offsets.normal_()
    x = torch.randn(4, 8, 3, 3)
    changed = [not torch.equal(aug(x), x) for _ in range(200)]
    assert 0.35 < sum(changed) / 200 < 0.65
    per_image = augmenter(probability=0.5, per_image=True).train()
    per_image.load_state_dict(aug.state_dict())
    rows = torch.stack([(per_image(x) != x).flatten(1).any(1) for _ in range(200)]).float()
    assert 0.35 < float(rows.mean()) < 0.65
    assert bool(((rows.sum(1) > 0) & (rows.sum(1) < 4)).any())  # some batches only partly shifted


class Holder(nn.Module):
    """What the engine passes: the whole predictor with a backbone and a prompter."""

    def __init__(self, backbone: nn.Module, prompter: nn.Module, aug: ClipGapAugmenter) -> None:
        super().__init__()
        self.backbone, self.prompter = backbone, prompter
        self.augmenters = nn.ModuleList([aug])


@pytest.mark.parametrize("fit_bn", ["train", "eval"])
def test_fit_lowers_l_opt_and_leaves_backbone_and_prompter_untouched(make_backbone, fit_bn: str) -> None:
    torch.manual_seed(0)
    backbone = make_backbone(trainable=["layer3", "layer4", "attnpool"])
    prompter = build_clip_template(None, BuildContext.from_backbone(backbone, class_names=["car", "person"]))
    aug = build_clip_gap(
        {
            "target_prompts": PAPER_TARGETS[:4],
            "crops_per_image": 3,
            "crop_size": 48,
            "offset_size": 4,
            "fit_lr": 0.05,
            "fit_steps": 8,
            "fit_bn": fit_bn,
        },
        BuildContext.from_backbone(backbone),
    )
    assert aug.offsets.shape == (4, backbone.channels_a, 4, 4)
    model = Holder(backbone, prompter, aug).train()
    before_backbone = copy.deepcopy(backbone.state_dict())  # includes the text tower and BN statistics
    before_text = prompter().clone()
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    images = [torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    crops = aug.random_crops(images, backbone.mean, backbone.std)
    assert crops.shape == (6, 3, 64, 64)
    directions = aug.text_directions(model)
    torch.testing.assert_close(directions.norm(dim=-1), torch.ones(4))
    initial = float(aug.objective(backbone, crops, directions))
    summary = aug.fit(model, iter([images] * 100), log=lambda line: None)
    final = float(aug.objective(backbone, crops, directions))
    assert summary["steps"] == 8 and final < initial  # on the same crops
    if fit_bn == "eval":  # per-step losses are on fresh random crops; with batch statistics they are noisier
        assert summary["final_loss"] < summary["initial_loss"]
    assert aug.is_fitted and float(aug.offsets.abs().sum()) > 0
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, before_backbone[key]), key
    torch.testing.assert_close(prompter(), before_text)
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags  # offsets stay frozen
    assert not aug.offsets.requires_grad and aug.offsets.grad is None
    assert model.training and backbone.training  # modes restored
    assert all(p.grad is None for p in backbone.parameters())
    # the fitted flag is state: a resumed run knows the phase is done
    fresh = build_clip_gap(aug.options, BuildContext.from_backbone(backbone))
    fresh.load_state_dict(aug.state_dict())
    assert fresh.is_fitted


def test_chunked_passes_give_the_same_objective(backbone) -> None:
    """With stored BN statistics (fit_bn=eval) offsets share passes; with batch statistics each has its own."""
    options = {"target_prompts": PAPER_TARGETS[:5], "offset_size": 4}
    assert len(build_clip_gap(options, BuildContext.from_backbone(backbone))._chunks(3)) == 5  # fit_bn=train
    aug = build_clip_gap({**options, "fit_bn": "eval"}, BuildContext.from_backbone(backbone))
    assert len(aug._chunks(3)) == 1
    with torch.no_grad():
        aug.offsets.normal_(std=0.5)
    crops = torch.randn(3, 3, 64, 64)
    directions = aug.text_directions(backbone)
    whole = aug.objective(backbone, crops, directions)
    small = build_clip_gap(
        {**aug.options.model_dump(), "fit_chunk": 4}, BuildContext.from_backbone(backbone)
    )  # one offset per pass
    small.load_state_dict(aug.state_dict())
    assert len(small._chunks(3)) == 5
    torch.testing.assert_close(small.objective(backbone, crops, directions), whole)


def offsets_and_crops(backbone, fit_bn: str) -> tuple[ClipGapAugmenter, torch.Tensor, torch.Tensor]:
    aug = build_clip_gap(
        {"target_prompts": PAPER_TARGETS[:3], "offset_size": 4, "fit_bn": fit_bn}, BuildContext.from_backbone(backbone)
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        aug.offsets.copy_(torch.randn(aug.offsets.shape, generator=generator))
    return aug, torch.randn(4, 3, 64, 64, generator=generator), aug.text_directions(backbone)


@pytest.mark.parametrize("fit_bn", ["train", "eval"])
def test_what_the_fit_objective_sees_of_the_per_channel_mean(backbone, fit_bn: str) -> None:
    """Training adds only mean_hw(A_j). With batch statistics (the released code) L_opt cannot see it: adding a
    per-(j, channel) constant to A leaves L_opt unchanged and its gradient has zero spatial mean per channel. With
    stored statistics it can, so the fit moves exactly the part training uses."""
    aug, crops, directions = offsets_and_crops(backbone, fit_bn)
    before = aug.objective(backbone, crops, directions)
    shift = torch.randn(aug.offsets.shape[:2], generator=torch.Generator().manual_seed(1))[:, :, None, None]
    with torch.no_grad():
        aug.offsets.add_(shift)
    after = aug.objective(backbone, crops, directions)
    aug.offsets.requires_grad_(True)
    with fit_modes(backbone, fit_bn):
        features, z, z_star = aug._targets(backbone, crops, directions)
        sum(aug._offset_loss(backbone, features, z, z_star, part) for part in aug._chunks(len(crops))).backward()
    grad = aug.offsets.grad
    mean_share = float(grad.mean(dim=(2, 3)).abs().max() / grad.abs().max())
    if fit_bn == "train":
        torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)
        assert mean_share < 1e-4
    else:
        assert abs(float(after - before)) > 1e-3
        assert mean_share > 1e-2


@pytest.mark.parametrize("fit_bn", ["train", "eval"])
def test_fit_restores_weights_modes_and_batch_norm_statistics(make_backbone, fit_bn: str) -> None:
    torch.manual_seed(0)
    backbone = make_backbone(trainable=["layer3", "layer4", "attnpool"])
    prompter = build_clip_template(None, BuildContext.from_backbone(backbone, class_names=["car", "person"]))
    options = {"target_prompts": PAPER_TARGETS[:2], "crops_per_image": 2, "crop_size": 48, "offset_size": 4}
    aug = build_clip_gap({**options, "fit_steps": 3, "fit_bn": fit_bn}, BuildContext.from_backbone(backbone))
    model = Holder(backbone, prompter, aug).train()
    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():  # statistics a train-mode pass would visibly move
        for norm in norms:
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2.0)
    before = copy.deepcopy(backbone.state_dict())
    seen: dict[str, set[bool]] = {"norm": set(), "other": set()}
    hooks = [m.register_forward_pre_hook(lambda m, _: seen["norm"].add(m.training)) for m in norms]
    hooks.append(backbone.visual.layer4.register_forward_pre_hook(lambda m, _: seen["other"].add(m.training)))
    images = [torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    aug.fit(model, iter([images] * 3))
    for hook in hooks:
        hook.remove()
    assert seen == {"norm": {fit_bn == "train"}, "other": {False}}
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, before[key]), key  # weights, running statistics, num_batches_tracked
    assert all(module.training for module in model.modules())
    assert aug.is_fitted and float(aug.offsets.abs().sum()) > 0


def test_fit_bn_train_keeps_frozen_batch_norms_frozen(make_backbone) -> None:
    """Batch statistics only where the model itself uses them in training: clip-resnet's bn=frozen stays frozen."""
    frozen = make_backbone(bn="frozen").train()
    with fit_modes(frozen, "train"):
        assert not any(m.training for m in frozen.modules() if isinstance(m, torch.nn.BatchNorm2d))
    trainable = make_backbone().train()
    norms = [m for m in trainable.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with fit_modes(trainable, "train"):
        assert all(norm.training for norm in norms) and not trainable.visual.layer4.training
    assert all(module.training for module in trainable.modules())  # restored
    with pytest.raises(ValueError, match="fit_bn"):
        with fit_modes(trainable, "frozen"):
            pass


def test_segmentation_pyramid_only_the_stage_a_level_moves(backbone) -> None:
    aug = build_clip_gap({"probability": 1.0, "offset_size": 4}, BuildContext.from_backbone(backbone)).train()
    with torch.no_grad():
        aug.offsets.normal_()
        levels = backbone.forward_features(torch.randn(1, 3, 64, 64))
    out = [aug(level) for level in levels]  # what DensePredictor does with feature augmenters
    moved = [not torch.equal(a, b) for a, b in zip(out, levels, strict=True)]
    assert moved == [False, False, True, False]  # the layer3 (channels_a, stride 16) level


def test_build_errors() -> None:
    with pytest.raises(UserError, match="channels_a"):
        build_clip_gap({}, BuildContext())
    aug = augmenter()
    with pytest.raises(UserError, match="stage_a"):
        aug.fit(nn.Linear(2, 2), iter([]))


def test_a_stop_request_ends_the_fit_phase_unfitted_and_progress_has_an_estimate(make_backbone) -> None:
    torch.manual_seed(0)
    backbone = make_backbone(trainable=[])
    prompter = build_clip_template(None, BuildContext.from_backbone(backbone, class_names=["car", "person"]))
    options = {"target_prompts": PAPER_TARGETS[:2], "crops_per_image": 2, "crop_size": 32, "offset_size": 2}
    aug = build_clip_gap(options, BuildContext.from_backbone(backbone))
    model = Holder(backbone, prompter, aug).train()
    images = [torch.rand(3, 48, 48)]
    lines: list[str] = []
    asked = []

    def stop_after_three() -> bool:
        asked.append(1)
        return len(lines) >= 3

    summary = aug.fit(
        model, iter([images] * 100), run_iters=50, log=lines.append, log_interval=1, should_stop=stop_after_three
    )
    assert summary["stopped"] and summary["steps"] == 3 and not aug.is_fitted  # a resume fits again
    assert lines[0].startswith("clip-gap fit 1/50: L_opt") and "s/step, ETA" in lines[0]
    done = aug.fit(model, iter([images] * 4), run_iters=4, log=lines.append, should_stop=lambda: False)
    assert not done["stopped"] and done["steps"] == 4 and aug.is_fitted
