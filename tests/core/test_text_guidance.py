"""Text guidance as reusable parts: score map, concatenation, auxiliary loss, and how DensePredictor and the pipeline
use them with any decoder (one backbone pass, widened decoder input, ``loss_aux_text``, open-vocabulary output)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vltk
from vltk.errors import UserError
from vltk.interfaces import Backbone
from vltk.models.text_guidance import concat_score_map, pixel_text_loss, widen_in_channels
from vltk_kernels import use_backend

NAMES = ["road", "car", "sky"]


@pytest.fixture(autouse=True)
def torch_kernels() -> Iterator[None]:
    """The reference op: the fused Triton kernel has its own tests and is slow in interpreter mode."""
    with use_backend("torch"):
        yield


def _model(prompter: dict | str = "clip-template", backbone: str = "clip-resnet", decoder: dict | str | None = None):
    config = {
        "backbone": {"name": backbone, "variant": "tiny"},
        "adapter": "frozen",
        "prompter": prompter,
        "decoder": decoder or {"name": "fpn", "channels": 16, "head_channels": 16},
    }
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return vltk.build_model(config, class_names=NAMES)


def test_score_map_is_cosine_similarity() -> None:
    score_map = _model().prompter.score_map  # the prompter calls the fused op; the core does not
    dense = torch.randn(2, 8, 3, 5)
    text = torch.randn(4, 8)
    expected = F.cosine_similarity(dense.unsqueeze(1), text.view(1, 4, 8, 1, 1), dim=2)
    torch.testing.assert_close(score_map(dense, text), expected)
    per_image = torch.randn(2, 4, 8)
    expected = F.cosine_similarity(dense.unsqueeze(1), per_image.view(2, 4, 8, 1, 1), dim=2)
    torch.testing.assert_close(score_map(dense, per_image), expected)


def test_concat_score_map() -> None:
    levels = [torch.randn(1, 5, 16 // s, 16 // s) for s in (1, 2, 4, 8)]
    scores = torch.randn(1, 3, 4, 4)
    out = concat_score_map(levels, scores, 2)
    assert [level.shape[1] for level in out] == [5, 5, 8, 5]
    torch.testing.assert_close(out[2][:, 5:], scores)
    assert out[0] is levels[0] and len(levels[2].shape) == 4  # input list untouched
    resized = concat_score_map(levels, torch.randn(1, 3, 3, 3), 3)[3]
    assert tuple(resized.shape) == (1, 8, 2, 2)
    assert widen_in_channels([5, 5, 5, 5], 3, 19) == [5, 5, 5, 24]
    assert widen_in_channels([5, 5, 5, 5], None, 19) == [5, 5, 5, 5]
    with pytest.raises(ValueError, match="pyramid level"):
        widen_in_channels([5, 5, 5, 5], 4, 2)


def test_pixel_text_loss_by_hand() -> None:
    """CE of score/τ, bilinearly upsampled to the labels, averaged over all pixels (ignored ones count as 0)."""
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(2, 3, 2, 3, generator=generator) * 2 - 1
    labels = torch.randint(0, 3, (2, 8, 12), generator=generator)
    labels[0, :2] = 255
    logits = F.interpolate(scores / 0.07, size=(8, 12), mode="bilinear", align_corners=False)
    log_probs = logits.log_softmax(dim=1)
    total = 0.0
    for b in range(2):
        for i in range(8):
            for j in range(12):
                if labels[b, i, j] != 255:
                    total -= float(log_probs[b, labels[b, i, j], i, j])
    expected = total / labels.numel()
    assert pixel_text_loss(scores, labels, temperature=0.07) == pytest.approx(expected, rel=1e-5)
    assert float(pixel_text_loss(scores, torch.full((2, 8, 12), 255), temperature=0.07)) == 0.0


class _TwoPass(Backbone):
    """A backbone without a token head: the base forward_with_embeddings falls back to two passes."""

    embed_dim, num_layers, patch_size, mean, std, text_dim = 4, 1, 8, (0.0,) * 3, (1.0,) * 3, 4

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.conv = nn.Conv2d(3, 4, 8, stride=8)

    def forward_features(self, x, block_hooks=(), out_indices=None):
        self.calls.append("features")
        y = self.conv(x)
        return [F.interpolate(y, scale_factor=2.0 / s * 4) for s in (1, 2, 4, 8)]

    def embed(self, x):
        self.calls.append("embed")
        y = self.conv(x)
        return y.mean(dim=(2, 3)), y


def test_forward_with_embeddings_default() -> None:
    backbone = _TwoPass()
    levels, global_embedding, dense = backbone.forward_with_embeddings(torch.randn(1, 3, 32, 32))
    assert backbone.calls == ["features", "embed"] and len(levels) == 4
    assert tuple(global_embedding.shape) == (1, 4) and tuple(dense.shape) == (1, 4, 4, 4)
    assert backbone.restrict_trainable() is None and backbone.is_vit


def test_forward_with_embeddings_vit_single_pass_includes_hooks() -> None:
    from vltk_plugins.backbones.open_clip_vit.model import build_clip_vit

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = build_clip_vit({"variant": "tiny"}).eval()
    calls: list[int] = []

    def hook(tokens: torch.Tensor, index: int) -> torch.Tensor:
        calls.append(index)
        return tokens * 1.1

    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        levels, global_embedding, dense = backbone.forward_with_embeddings(x, block_hooks=(hook,))
        assert calls == [0, 1, 2, 3]  # one pass through the 4 blocks
        expected_levels = backbone.forward_features(x, block_hooks=(hook,))
        expected_global, expected_dense = backbone.embed(x, block_hooks=(hook,))
    for got, want in zip(levels, expected_levels, strict=True):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(global_embedding, expected_global)
    torch.testing.assert_close(dense, expected_dense)
    assert tuple(dense.shape) == (1, 64, 4, 6)


def test_pipeline_widens_decoder_input_and_model_adds_scores_and_aux_loss() -> None:
    model = _model()
    assert model.decoder.in_channels == [32, 64, 128, 256 + 3]  # auto = stride-32 level for a CNN
    model.train()
    images = torch.rand(2, 3, 50, 70)
    labels = torch.randint(0, 3, (2, 50, 70))
    labels[:, :5] = 255
    outputs = model(images)
    x = model._pad((images - model.pixel_mean) / model.pixel_std)
    with torch.no_grad():
        _, dense = model.backbone.embed(x)
        text = model.prompter()
    scores = F.cosine_similarity(dense.unsqueeze(1), text.view(1, 3, -1, 1, 1), dim=2)
    torch.testing.assert_close(outputs["text_scores"], scores, rtol=1e-4, atol=1e-5)
    assert tuple(outputs["text_scores"].shape) == (2, 3, 2, 3)  # padded 64x96 at stride 32

    torch.manual_seed(1)
    losses = model.loss(images, labels)
    padded = F.pad(labels, (0, 96 - 70, 0, 64 - 50), value=255)
    aux = (
        0.4
        * F.cross_entropy(
            F.interpolate(scores / 0.07, size=(64, 96), mode="bilinear", align_corners=False),
            padded,
            ignore_index=255,
            reduction="sum",
        )
        / padded.numel()
    )
    torch.testing.assert_close(losses["loss_aux_text"], aux, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(losses["loss"], losses["loss_ce"] + losses["loss_aux_text"])


def test_guidance_off_uses_plain_pyramid(monkeypatch) -> None:
    model = _model({"name": "clip-template", "score_concat_index": None, "aux_loss_weight": 0})
    assert model.decoder.in_channels == [32, 64, 128, 256]

    def fail(*args, **kwargs):
        raise AssertionError("no embeddings needed")

    monkeypatch.setattr(model.backbone, "forward_with_embeddings", fail)
    model.train()
    outputs = model(torch.rand(1, 3, 64, 64))
    assert "text_scores" not in outputs
    assert set(model.loss(torch.rand(1, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.long))) == {"loss", "loss_ce"}

    aux_only = _model({"name": "clip-template", "score_concat_index": None})
    aux_only.train()
    assert "loss_aux_text" in aux_only.loss(torch.rand(1, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.long))
    aux_only.eval()
    assert "text_scores" not in aux_only(torch.rand(1, 3, 64, 64))  # the aux loss is a training-time term


def test_vit_concatenates_at_stride_16() -> None:
    model = _model("coop", backbone="clip-vit").eval()
    assert model.decoder.in_channels == [64, 64, 64 + 3, 64]
    with torch.no_grad():
        outputs = model(torch.rand(1, 3, 64, 64))
    assert tuple(outputs["text_scores"].shape) == (1, 3, 4, 4)
    assert tuple(outputs["seg_logits"].shape[:2]) == (1, 3)


def test_open_vocabulary_prediction() -> None:
    model = _model().eval()
    images = torch.rand(1, 3, 50, 70)
    logits = model.predict_open_vocabulary(images)
    assert tuple(logits.shape) == (1, 3, 50, 70)
    with torch.no_grad():
        scores = model(images)["text_scores"]
    expected = F.interpolate(scores / 0.07, size=(64, 96), mode="bilinear", align_corners=False)[..., :50, :70]
    torch.testing.assert_close(logits, expected)
    model.set_class_names(["tree", "bus", "person", "sign"])
    assert model.class_names == ("tree", "bus", "person", "sign")
    assert tuple(model.predict_open_vocabulary(images).shape) == (1, 4, 50, 70)
    with pytest.raises(UserError, match="predict_open_vocabulary"):
        model.predict(images)  # the decoder input was sized for 3 score channels
    with pytest.raises(UserError, match="repeated"):
        model.set_class_names(["a", "a"])


def test_mask2former_takes_widened_input() -> None:
    decoder = {
        "name": "mask2former",
        "hidden_dim": 32,
        "num_queries": 4,
        "num_heads": 2,
        "enc_layers": 1,
        "enc_ffn": 32,
        "dec_layers": 1,
        "dec_ffn": 32,
        "num_points": 64,
    }
    model = _model("coop", decoder=decoder).eval()
    with torch.no_grad():
        scores = model.predict(torch.rand(1, 3, 64, 64))
    assert tuple(scores.shape) == (1, 3, 64, 64)
