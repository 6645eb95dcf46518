"""The clip-faster-rcnn decoder and the Detector: parity settings, the constant-zero background logit, RoI and logit
shapes, aligned RoIAlign, losses and gradients, predictions, errors."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import roi_align

import vltk
from vltk.context import BuildContext
from vltk.errors import UserError
from vltk.interfaces import DetectionDecoder
from vltk.models.detector import Detector
from vltk_plugins.adapters.finetune.model import build_frozen, build_full
from vltk_plugins.clip_gap.options import ClipFasterRCNNOptions
from vltk_plugins.clip_gap.rcnn import ClipFasterRCNN, TextClassifier, build_clip_faster_rcnn
from vltk_plugins.prompters.clip_prompts.model import build_clip_template

K = 3
SMALL = {"rpn_post_nms_top_n_train": 50, "rpn_post_nms_top_n_test": 20, "box_batch_size_per_image": 16}


def test_parity_defaults_are_set_explicitly(backbone) -> None:
    options = ClipFasterRCNNOptions()
    assert (options.rpn_pre_nms_top_n_train, options.rpn_pre_nms_top_n_test) == (12000, 6000)
    assert (options.rpn_post_nms_top_n_train, options.rpn_post_nms_top_n_test) == (2000, 1000)
    assert options.rpn_smooth_l1_beta == options.box_smooth_l1_beta == 0.0
    assert (options.roi_size, options.sampling_ratio, options.aligned) == (14, 0, True)
    assert (options.logit_scale, options.background) == (100.0, "zero")
    assert options.bbox_reg_weights == (10.0, 10.0, 5.0, 5.0)
    decoder = build_clip_faster_rcnn(options, BuildContext.from_backbone(backbone, num_classes=7))
    rpn = decoder.rpn
    assert rpn._pre_nms_top_n == {"training": 12000, "testing": 6000} and rpn.smooth_l1_beta == 0.0
    assert rpn.anchor_generator.num_anchors_per_location() == [15]
    assert decoder.roi_heads.fg_bg_sampler.batch_size_per_image == 512
    assert decoder.bbox_pred.out_features == 4 * 8  # class-specific, torchvision layout (background slot)


def test_background_logit_is_constant_zero() -> None:
    classifier = TextClassifier(text_dim=16, logit_scale=100.0)
    regions = torch.randn(9, 16, requires_grad=True)
    texts = torch.randn(K, 16)
    logits = classifier(regions, texts)
    assert logits.shape == (9, K + 1)
    assert torch.equal(logits[:, 0], torch.zeros(9))  # torchvision's background index
    cosine = torch.nn.functional.normalize(regions, dim=-1) @ torch.nn.functional.normalize(texts, dim=-1).t()
    torch.testing.assert_close(logits[:, 1:], 100.0 * cosine)
    assert not list(classifier.parameters())  # nothing to learn with the zero background
    learned = TextClassifier(text_dim=16, background="learned")
    assert learned(regions, texts)[:, 0].abs().sum() > 0 and len(list(learned.parameters())) == 1


def test_roi_and_logit_shapes(backbone) -> None:
    decoder = build_clip_faster_rcnn({}, BuildContext.from_backbone(backbone, num_classes=K)).eval()
    features = torch.randn(2, backbone.channels_a, 6, 8)  # a 96 x 128 image at stride 16
    proposals = [
        torch.tensor([[0.0, 0.0, 40.0, 30.0], [10.0, 5.0, 90.0, 60.0]]),
        torch.tensor([[3.0, 4.0, 50.0, 70.0]]),
    ]
    rois = decoder.roi_features(features, proposals)
    assert rois.shape == (3, backbone.channels_a, 14, 14)
    expected = roi_align(features, proposals, (14, 14), spatial_scale=1 / 16, sampling_ratio=0, aligned=True)
    torch.testing.assert_close(rois, expected)
    assert not torch.allclose(rois, roi_align(features, proposals, (14, 14), 1 / 16, 0, aligned=False))
    with torch.no_grad():
        assert backbone.stage_b(rois).shape == (3, backbone.channels_b, 7, 7)
        text = torch.randn(K, backbone.text_dim)
        logits, deltas = decoder.box_head(rois, backbone, text)
    assert logits.shape == (3, K + 1) and deltas.shape == (3, 4 * (K + 1))
    assert torch.equal(logits[:, 0], torch.zeros(3))
    agnostic = build_clip_faster_rcnn({"class_agnostic_box": True}, BuildContext.from_backbone(backbone, num_classes=K))
    assert agnostic.bbox_pred.out_features == 4
    with torch.no_grad():
        assert agnostic.box_head(rois, backbone, text)[1].shape == (3, 4 * (K + 1))


def make_detector(backbone, adapter=None, **decoder_options: object) -> Detector:
    names = ["car", "person", "sign"]
    decoder = build_clip_faster_rcnn(
        {**SMALL, **decoder_options},
        BuildContext.from_backbone(backbone, num_classes=K, text_dim=backbone.text_dim, task="detection"),
    )
    prompter = build_clip_template(
        {"templates": ["a photo of a {}"]}, BuildContext.from_backbone(backbone, class_names=names)
    )
    return Detector(backbone, adapter or build_full(None), decoder, prompter=prompter, class_names=names)


def targets() -> list[dict[str, torch.Tensor]]:
    return [
        {
            "boxes": torch.tensor([[10.0, 12.0, 60.0, 50.0], [70.0, 8.0, 90.0, 60.0], [0.0, 0.0, 4.0, 4.0]]),
            "labels": torch.tensor([0, 1, 2]),
            "difficult": torch.tensor([False, False, True]),
        },
        {
            "boxes": torch.zeros(0, 4),
            "labels": torch.zeros(0, dtype=torch.long),
            "difficult": torch.zeros(0, dtype=torch.bool),
        },
    ]


def test_training_losses_gradients_and_predictions(make_backbone) -> None:
    torch.manual_seed(0)
    backbone = make_backbone(trainable=["layer3", "layer4", "attnpool"])
    model = make_detector(backbone, score_thresh=0.0)
    images = [torch.rand(3, 64, 96), torch.rand(3, 50, 70)]  # different sizes: padded into one batch
    batch, sizes = model.batch_images(images)
    assert batch.shape == (2, 3, 64, 96) and sizes == [(64, 96), (50, 70)]
    assert float(batch[1, :, 50:, :].abs().max()) == 0.0  # zero padding after normalisation
    model.train()
    losses = model.loss(images, targets())
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss"}
    assert all(torch.isfinite(value) for value in losses.values())
    losses["loss"].backward()
    visual = backbone.visual
    assert visual.layer4[0].conv1.weight.grad is not None and visual.layer3[0].conv1.weight.grad is not None
    assert visual.attnpool.q_proj.weight.grad is not None  # the classification branch reaches the pool
    assert visual.layer1[0].conv1.weight.grad is None  # not in `trainable`
    assert model.decoder.rpn.head.conv[0][0].weight.grad is not None and model.decoder.bbox_pred.weight.grad is not None
    detections = model.predict(images)
    assert model.training  # predict restores the mode
    assert len(detections) == 2
    for detection, (height, width) in zip(detections, sizes, strict=True):
        assert detection["boxes"].shape[1] == 4 and len(detection["scores"]) == len(detection["labels"])
        assert len(detection["labels"]) > 0  # score_thresh 0: every proposal gives detections
        assert all(0 <= label < K for label in detection["labels"].tolist())  # 0-based, background removed
        assert float(detection["boxes"][:, 2].max()) <= width and float(detection["boxes"][:, 3].max()) <= height


def test_difficult_boxes_are_dropped_from_training_targets(backbone) -> None:
    model = make_detector(backbone)
    kept = model._trainable_boxes(targets()[0], torch.device("cpu"))
    assert kept["labels"].tolist() == [0, 1] and kept["boxes"].shape == (2, 4)
    empty = {"boxes": torch.tensor([[5.0, 5.0, 5.0, 9.0], [1.0, 1.0, 9.0, 9.0]]), "labels": torch.tensor([2, 1])}
    assert model._trainable_boxes(empty, torch.device("cpu"))["labels"].tolist() == [1]  # zero width dropped


def test_frozen_adapter_keeps_backbone_in_eval(make_backbone) -> None:
    backbone = make_backbone()
    adapter = build_frozen(None)
    adapter.setup(backbone)
    model = make_detector(backbone, adapter=adapter).train()
    assert not backbone.training and model.decoder.training


def test_errors(backbone) -> None:
    decoder = build_clip_faster_rcnn(SMALL, BuildContext.from_backbone(backbone, num_classes=K))
    features = torch.randn(1, backbone.channels_a, 4, 4)
    with pytest.raises(UserError, match="text embeddings"):
        decoder.eval()(features, [(64, 64)], backbone=backbone, text_embeddings=torch.randn(K + 1, backbone.text_dim))
    with pytest.raises(UserError, match="split into stage_a/stage_b/pool"):
        build_clip_faster_rcnn({}, BuildContext(num_classes=K))  # segmentation-style context: no split facts
    with pytest.raises(UserError, match="does not predict label maps; task segmentation"):  # the task's one check
        vltk.build_model(
            {"backbone": {"name": "clip-resnet", "variant": "tiny"}, "adapter": "full", "decoder": "clip-faster-rcnn"}
        )
    with pytest.raises(UserError, match="stage_a"):
        Detector(torch.nn.Linear(2, 2), build_full(None), decoder)  # type: ignore[arg-type]
    assert isinstance(decoder, ClipFasterRCNN) and isinstance(decoder, DetectionDecoder)
