"""Tests of the Semantic FPN decoder: shapes, loss semantics, gradients, parameter counts, training, options."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from vltk.context import BuildContext
from vltk.errors import UserError
from vltk.interfaces import Decoder
from vltk_plugins.decoders.fpn.model import FPNConfigError, SemanticFPN, build_fpn
from vltk_plugins.decoders.fpn.options import FPNOptions

STRIDES = (4, 8, 16, 32)


def pyramid(batch: int, in_channels: list[int], height: int, width: int, seed: int = 0) -> list[torch.Tensor]:
    """Random 4-level features for an image of ``height`` x ``width`` (ceil sizes, as conv backbones give)."""
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, c, math.ceil(height / s), math.ceil(width / s), generator=generator)
        for c, s in zip(in_channels, STRIDES, strict=True)
    ]


def expected_num_params(in_channels: list[int], num_classes: int, channels: int, head_channels: int) -> int:
    """Closed form of the parameter count (norm affine = 2 per channel for BN and GN alike).

    neck = sum_i (c_i C + C) + 4 (9 C^2 + C)                  lateral 1x1 + output 3x3 convs, with bias
    head = sum_i [9 C H + 2H + (n_i - 1)(9 H^2 + 2H)] + H K + K   n_i = max(1, log2(s_i / 4)) = 1, 1, 2, 3
    """
    c, h = channels, head_channels
    neck = sum(ci * c + c for ci in in_channels) + len(in_channels) * (9 * c * c + c)
    head = 0
    for stride in STRIDES:
        n = max(1, int(math.log2(stride // STRIDES[0])))
        head += 9 * c * h + 2 * h + (n - 1) * (9 * h * h + 2 * h)
    return neck + head + h * num_classes + num_classes


def small(**overrides: object) -> SemanticFPN:
    options = {"channels": 32, "head_channels": 32, **overrides}
    return build_fpn(FPNOptions(**options), BuildContext(in_channels=[16, 24, 40, 48], num_classes=5))


def test_is_a_decoder_with_mmseg_defaults() -> None:
    options = FPNOptions()
    assert (options.channels, options.head_channels, options.dropout, options.norm) == (256, 128, 0.1, "bn")
    assert (options.loss_weight, options.class_weight) == (1.0, None)
    model = build_fpn(options, BuildContext(in_channels=[8] * 4, num_classes=3))
    assert isinstance(model, Decoder)
    assert model.ignore_index == 255
    assert isinstance(model.dropout, nn.Dropout2d)


@pytest.mark.parametrize(("height", "width"), [(64, 96), (70, 100), (96, 64)])
def test_output_is_stride_4_for_non_square_and_odd_sizes(height: int, width: int) -> None:
    model = small().eval()
    features = pyramid(2, model.in_channels, height, width)
    logits = model(features)["seg_logits"]
    assert logits.shape == (2, 5, math.ceil(height / 4), math.ceil(width / 4))
    scores = model.predict({"seg_logits": logits}, (height, width))
    assert scores.shape == (2, 5, height, width)


def test_queries_and_text_embeddings_are_ignored() -> None:
    model = small().eval()
    features = pyramid(1, model.in_channels, 64, 96)
    plain = model(features)["seg_logits"]
    guided = model(features, queries=torch.randn(10, 32), text_embeddings=torch.randn(5, 64))["seg_logits"]
    torch.testing.assert_close(plain, guided)


def test_wrong_number_of_levels_is_a_clear_error() -> None:
    model = small()
    with pytest.raises(ValueError, match="4 feature maps"):
        model(pyramid(1, model.in_channels, 64, 96)[:3])


def test_loss_is_cross_entropy_at_label_size_averaged_over_all_pixels() -> None:
    torch.manual_seed(0)
    model = small(loss_weight=0.5)
    logits = torch.randn(2, 5, 16, 24)
    targets = torch.randint(0, 5, (2, 64, 96))
    targets[:, :10] = 255
    losses = model.loss({"seg_logits": logits}, targets)
    assert set(losses) == {"loss", "loss_ce"}
    up = nn.functional.interpolate(logits, size=(64, 96), mode="bilinear", align_corners=False)
    per_pixel = nn.functional.cross_entropy(up, targets, ignore_index=255, reduction="none")
    expected = 0.5 * per_pixel.sum() / targets.numel()
    torch.testing.assert_close(losses["loss"], expected)
    torch.testing.assert_close(losses["loss_ce"], expected)


def test_ignored_pixels_do_not_contribute() -> None:
    torch.manual_seed(0)
    model = small()
    logits = torch.randn(1, 5, 8, 8)
    targets = torch.randint(0, 5, (1, 32, 32))
    targets[0, :16] = 255
    changed = logits.clone()
    # Logit rows 0..2 feed only label rows <= 13 through the x4 bilinear upsampling: all of them ignored.
    changed[..., :3, :] = torch.randn(1, 5, 3, 8) * 10
    a = model.loss({"seg_logits": logits}, targets)["loss"]
    b = model.loss({"seg_logits": changed}, targets)["loss"]
    torch.testing.assert_close(a, b)


def test_all_ignored_target_gives_zero_loss_and_zero_gradient_not_nan() -> None:
    model = small()
    features = pyramid(2, model.in_channels, 64, 96)
    losses = model.loss(model(features), torch.full((2, 64, 96), 255, dtype=torch.long))
    assert losses["loss"].item() == 0.0
    losses["loss"].backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name


def test_custom_ignore_index_from_context() -> None:
    model = build_fpn(
        FPNOptions(channels=32, head_channels=32), BuildContext(in_channels=[8] * 4, num_classes=3, ignore_index=-1)
    )
    assert model.ignore_index == -1
    loss = model.loss({"seg_logits": torch.randn(1, 3, 4, 4)}, torch.full((1, 16, 16), -1))["loss"]
    assert loss.item() == 0.0


def test_class_weight_scales_pixels_without_renormalising() -> None:
    torch.manual_seed(0)
    weights = [1.0, 2.0, 0.0, 0.5, 3.0]
    model = small(class_weight=weights)
    logits = torch.randn(2, 5, 16, 16)
    targets = torch.randint(0, 5, (2, 16, 16))
    loss = model.loss({"seg_logits": logits}, targets)["loss"]
    per_pixel = nn.functional.cross_entropy(logits, targets, reduction="none")
    expected = (per_pixel * torch.tensor(weights)[targets]).mean()
    torch.testing.assert_close(loss, expected)
    assert "class_weight" not in model.state_dict()


def test_gradient_reaches_every_parameter() -> None:
    model = small().train()
    features = pyramid(2, model.in_channels, 64, 96)
    targets = torch.randint(0, 5, (2, 64, 96), generator=torch.Generator().manual_seed(1))
    model.loss(model(features), targets)["loss"].backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    ("in_channels", "num_classes", "options"),
    [
        ([1024] * 4, 19, FPNOptions()),
        ([16, 24, 40, 48], 7, FPNOptions(channels=48, head_channels=64, norm="gn", class_weight=[1.0] * 7)),
    ],
)
def test_parameter_count_matches_closed_form(in_channels: list[int], num_classes: int, options: FPNOptions) -> None:
    model = build_fpn(options, BuildContext(in_channels=in_channels, num_classes=num_classes))
    count = sum(p.numel() for p in model.parameters())
    assert count == expected_num_params(in_channels, num_classes, options.channels, options.head_channels)


def test_rein_semfpn_head_is_1_63m() -> None:
    """Rein reports a 1.63M SemFPN head (ViT-L, 19 classes): that is the FPNHead without the FPN neck."""
    model = build_fpn(FPNOptions(), BuildContext(in_channels=[1024] * 4, num_classes=19))
    head = sum(p.numel() for m in (model.scale_heads, model.conv_seg) for p in m.parameters())
    neck = sum(p.numel() for m in (model.lateral_convs, model.fpn_convs) for p in m.parameters())
    assert head == expected_num_params([1024] * 4, 19, 256, 128) - neck
    assert round(head / 1e6, 2) == 1.63


def test_initial_loss_is_near_log_k() -> None:
    """conv_seg starts at N(0, 0.01): near-uniform predictions, so training starts from ~log(K)."""
    torch.manual_seed(0)
    model = small().eval()
    features = pyramid(2, model.in_channels, 64, 96)
    loss = model.loss(model(features), torch.randint(0, 5, (2, 64, 96)))["loss"]
    assert abs(loss.item() - math.log(5)) < 0.2


def test_a_few_steps_lower_the_loss_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    model = small(dropout=0.0).train()
    features = pyramid(2, model.in_channels, 64, 96)
    # Blocky labels (8x8 cells) that logits at stride 4 can represent; a strip of ignored pixels.
    cells = torch.randint(0, 5, (2, 8, 12), generator=torch.Generator().manual_seed(2))
    targets = cells.repeat_interleave(8, dim=1).repeat_interleave(8, dim=2)
    targets[:, :8] = 255
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        loss = model.loss(model(features), targets)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.8 * losses[0]


def test_norm_choices() -> None:
    bn = small(norm="bn")
    assert any(isinstance(m, nn.BatchNorm2d) for m in bn.modules())
    syncbn = small(norm="syncbn")  # BatchNorm2d; the trainer converts it on several CUDA ranks (sync_bn)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in syncbn.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in syncbn.modules())
    assert syncbn.sync_bn and not bn.sync_bn
    gn = small(norm="gn", head_channels=64).train()
    norms = [m for m in gn.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 7 and all(m.num_groups == 32 for m in norms)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gn.modules())
    # GroupNorm does not depend on the batch: a batch of one trains.
    features = pyramid(1, gn.in_channels, 64, 96)
    loss = gn.loss(gn(features), torch.randint(0, 5, (1, 64, 96)))["loss"]
    loss.backward()
    assert math.isfinite(loss.item())


def test_gn_needs_channels_divisible_by_32() -> None:
    with pytest.raises(ValidationError, match="divisible by 32"):
        FPNOptions(norm="gn", head_channels=48)


def test_class_weight_length_is_checked_at_build_time() -> None:
    with pytest.raises(ValueError, match="class_weight has 3 entries but num_classes=5") as error:
        build_fpn(FPNOptions(class_weight=[1.0, 1.0, 1.0]), BuildContext(in_channels=[8] * 4, num_classes=5))
    assert isinstance(error.value, UserError)  # the CLI prints it as one line
    with pytest.raises(ValueError, match="3 entries but there are 5 classes"):
        SemanticFPN([8] * 4, 5, class_weight=[1.0, 1.0, 1.0])
    with pytest.raises(ValidationError):
        FPNOptions(class_weight=[1.0, -1.0])


def test_missing_context_is_a_clear_error() -> None:
    with pytest.raises(UserError, match="decoder 'fpn' needs num_classes"):
        build_fpn(FPNOptions(), BuildContext(in_channels=[8] * 4))
    with pytest.raises(UserError, match="decoder 'fpn' needs in_channels"):
        build_fpn(FPNOptions(), BuildContext(num_classes=3))
    with pytest.raises(FPNConfigError, match="4 pyramid widths"):
        build_fpn(FPNOptions(), BuildContext(in_channels=[8] * 3, num_classes=3))


def test_factory_ignores_unrelated_context_and_falls_back_to_embed_dim() -> None:
    model = build_fpn(
        FPNOptions(channels=32, head_channels=32),
        BuildContext(
            num_classes=3, embed_dim=24, num_layers=12, text_dim=512, query_dims=None, class_names=["a", "b", "c"]
        ),
    )
    assert model.in_channels == [24] * 4
    assert model.eval()(pyramid(1, [24] * 4, 32, 32))["seg_logits"].shape == (1, 3, 8, 8)


def test_options_forbid_unknown_keys_and_describe_every_field() -> None:
    with pytest.raises(ValidationError):
        FPNOptions(chanels=128)
    for name, field in FPNOptions.model_fields.items():
        assert field.description, name


def test_options_module_does_not_import_torch() -> None:
    code = "import sys; import vltk_plugins.decoders.fpn.options; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
