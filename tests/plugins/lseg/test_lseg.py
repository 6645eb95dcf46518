"""LSeg decoder: shapes, outputs follow the label list, the fixed 1/0.07 scale, equivariance, training, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vltk.context import BuildContext
from vltk.errors import UserError
from vltk.interfaces import Decoder
from vltk_plugins.lseg.decoder import LSegDecoder, build_lseg
from vltk_plugins.lseg.options import LSegOptions

IN_CHANNELS = [16, 24, 32, 40]
TEXT_DIM = 12


def pyramid(batch: int, height: int, width: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, c, math.ceil(height / s), math.ceil(width / s), generator=generator)
        for c, s in zip(IN_CHANNELS, (4, 8, 16, 32), strict=True)
    ]


def small(**options: object) -> LSegDecoder:
    torch.manual_seed(0)
    return build_lseg(
        LSegOptions(width=16, **options), BuildContext(in_channels=IN_CHANNELS, text_dim=TEXT_DIM, num_classes=3)
    )


def test_defaults_and_contract() -> None:
    options = LSegOptions()
    assert (options.width, options.output_stride, options.num_spatial_blocks) == (256, 2, 0)
    assert (options.spatial_block, options.activation, options.norm) == ("bottleneck", "lrelu", "bn")
    decoder = small()
    assert isinstance(decoder, Decoder) and decoder.open_vocabulary
    assert decoder.logit_scale == pytest.approx(1 / 0.07)
    assert not any("logit" in name for name, _ in decoder.named_parameters())  # the scale is not learned


@pytest.mark.parametrize(("stride", "size"), [(2, (64, 96)), (4, (64, 96)), (2, (50, 70))])
def test_shapes(stride: int, size: tuple[int, int]) -> None:
    decoder = small(output_stride=stride)
    texts = torch.randn(5, TEXT_DIM)
    out = decoder(pyramid(2, *size), text_embeddings=texts)
    finest = (math.ceil(size[0] / 4), math.ceil(size[1] / 4))
    expected = (finest[0] * 4 // stride, finest[1] * 4 // stride)
    assert out["seg_logits"].shape == (2, 5, *expected)
    assert out["pixel_embeddings"].shape == (2, TEXT_DIM, *expected)
    assert decoder.predict(out, size).shape == (2, 5, *size)


def test_number_of_outputs_follows_the_text_list() -> None:
    decoder = small(num_spatial_blocks=2).eval()
    features = pyramid(2, 64, 64)
    three = decoder(features, text_embeddings=torch.randn(3, TEXT_DIM))["seg_logits"]
    seven_texts = torch.randn(7, TEXT_DIM)
    seven = decoder(features, text_embeddings=seven_texts)["seg_logits"]
    assert three.shape[1] == 3 and seven.shape[1] == 7
    per_image = decoder(features, text_embeddings=seven_texts.expand(2, 7, TEXT_DIM))["seg_logits"]
    torch.testing.assert_close(per_image, seven)  # [B, K, D] with identical rows = shared [K, D]


def test_scale_is_exactly_one_over_0_07_on_cosine() -> None:
    decoder = small().eval()
    texts = torch.randn(4, TEXT_DIM) * 5  # norms far from 1: only the direction may count
    out = decoder(pyramid(1, 32, 32), text_embeddings=texts)
    pixels = F.normalize(out["pixel_embeddings"], dim=1)
    cosine = torch.einsum("bchw,kc->bkhw", pixels, F.normalize(texts, dim=-1))
    torch.testing.assert_close(out["seg_logits"], cosine / 0.07)
    assert out["seg_logits"].abs().max() <= 1 / 0.07 + 1e-4
    doubled = decoder(pyramid(1, 32, 32), text_embeddings=texts * 3)["seg_logits"]
    torch.testing.assert_close(doubled, out["seg_logits"])


@pytest.mark.parametrize("kind", ["bottleneck", "depthwise"])
def test_spatial_blocks_are_label_equivariant(kind: str) -> None:
    decoder = small(num_spatial_blocks=2, spatial_block=kind).eval()
    assert sum(p.numel() for p in decoder.spatial.parameters()) == 10  # one shared 3x3 conv 1 -> 1 with bias
    features = pyramid(1, 32, 32)
    texts = torch.randn(5, TEXT_DIM)
    order = torch.tensor([3, 0, 4, 1, 2])
    logits = decoder(features, text_embeddings=texts)["seg_logits"]
    permuted = decoder(features, text_embeddings=texts[order])["seg_logits"]
    torch.testing.assert_close(permuted, logits[:, order])
    plain = small().eval()(features, text_embeddings=texts)["seg_logits"]
    assert not torch.allclose(plain, logits)  # the blocks do change the logits


def test_bottleneck_adds_the_max_over_labels() -> None:
    decoder = small(num_spatial_blocks=1, spatial_block="bottleneck")
    with torch.no_grad():
        decoder.spatial.conv.weight.zero_()
        decoder.spatial.conv.bias.zero_()
    logits = torch.randn(1, 3, 4, 4)
    out = decoder.spatial(logits, activate=False)
    torch.testing.assert_close(out, logits.max(dim=1, keepdim=True).values.expand_as(logits))


def test_parameter_count_closed_form() -> None:
    width, text_dim = 16, TEXT_DIM
    decoder = small()
    scratch = sum(9 * c * width for c in IN_CHANNELS)
    unit = 2 * 9 * width * width + 2 * 2 * width  # two 3x3 convs without bias, two BatchNorms
    # every level: output unit + 1x1 conv; every level but the coarsest (DPT's refinenet4) also a lateral unit
    fusion = len(IN_CHANNELS) * (unit + width * width + width) + (len(IN_CHANNELS) - 1) * unit
    head = width * text_dim + text_dim
    assert sum(p.numel() for p in decoder.parameters()) == scratch + fusion + head


def test_train_steps_lower_the_loss() -> None:
    decoder = small(num_spatial_blocks=1).train()
    features = pyramid(2, 32, 32)
    texts = torch.randn(3, TEXT_DIM)
    generator = torch.Generator().manual_seed(1)
    targets = torch.randint(0, 3, (2, 32, 32), generator=generator)
    targets[:, :4] = 255
    optimizer = torch.optim.Adam(decoder.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = decoder.loss(decoder(features, text_embeddings=texts), targets)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_loss_averages_over_labelled_pixels_and_is_zero_without_labels() -> None:
    decoder = small()
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    targets = torch.randint(0, 3, (1, 4, 4))
    targets[0, 0] = 255
    expected = F.cross_entropy(logits, targets, ignore_index=255)
    torch.testing.assert_close(decoder.loss({"seg_logits": logits}, targets)["loss"], expected)
    empty = decoder.loss({"seg_logits": logits}, torch.full((1, 4, 4), 255))["loss"]
    assert empty.item() == 0.0
    empty.backward()
    assert torch.count_nonzero(logits.grad) == 0


def test_errors_are_clear() -> None:
    decoder = small()
    with pytest.raises(UserError, match="--prompter clip-template"):
        decoder(pyramid(1, 32, 32))
    with pytest.raises(UserError, match="12-d text embeddings"):
        decoder(pyramid(1, 32, 32), text_embeddings=torch.randn(3, 7))
    with pytest.raises(UserError, match="text space"):
        build_lseg(None, BuildContext(in_channels=IN_CHANNELS, text_dim=None))
    with pytest.raises(ValueError, match="class indices outside"):
        decoder.loss({"seg_logits": torch.randn(1, 3, 4, 4)}, torch.full((1, 4, 4), 5))
    with pytest.raises(ValueError):
        LSegOptions(num_spatial_blocks=3)


def test_registered_and_built_through_the_registry() -> None:
    import vltk

    assert "lseg" in vltk.list_components("decoder")
    decoder = vltk.create("decoder", "lseg", width=8, in_channels=IN_CHANNELS, text_dim=TEXT_DIM, num_classes=2)
    assert isinstance(decoder, LSegDecoder) and decoder.head.out_channels == TEXT_DIM
