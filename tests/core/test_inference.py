"""Sliding-window inference: mmseg window placement, averaging of overlaps, equality with whole inference."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from vltk.config import EvalConfig
from vltk.models.inference import inference_from_config, slide_inference, window_starts


class OffsetModel:
    """Fake model: every window predicts one class map filled with the window's top-left offset (y * 100 + x).

    It reads the offset from a coordinate image, so the averaged result can be computed by hand.
    """

    def predict(self, images: Tensor) -> Tensor:
        top = images[:, 0, :1, :1]
        left = images[:, 1, :1, :1]
        return (top * 100 + left).unsqueeze(1).expand(-1, 1, *images.shape[-2:]).clone()


def _coordinates(height: int, width: int) -> Tensor:
    ys = torch.arange(height, dtype=torch.float32).view(height, 1).expand(height, width)
    xs = torch.arange(width, dtype=torch.float32).view(1, width).expand(height, width)
    return torch.stack([ys, xs, torch.zeros_like(ys)]).unsqueeze(0)


def test_window_starts_follow_mmseg() -> None:
    assert window_starts(10, 4, 3) == [0, 3, 6]  # 3 windows: 0-4, 3-7, 6-10 (last shifted back)
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]  # ceil((11-4)/3)+1 = 4 windows, last ends at 11
    assert window_starts(4, 8, 5) == [0]  # image smaller than the crop: one window, the whole axis
    assert window_starts(1024, 512, 341) == [0, 341, 512]


def test_overlapping_windows_average_by_hand() -> None:
    # 1 x 6 image, crop 4, stride 2: windows start at x=0 and x=2, overlapping on x = 2, 3.
    images = _coordinates(1, 6)
    scores = slide_inference(OffsetModel(), images, crop=(1, 4), stride=(1, 2))
    expected = torch.tensor([0.0, 0.0, 1.0, 1.0, 2.0, 2.0])  # window values 0 and 2, averaged to 1 on overlap
    torch.testing.assert_close(scores[0, 0, 0], expected)


def test_three_window_overlap_2d() -> None:
    images = _coordinates(5, 5)
    scores = slide_inference(OffsetModel(), images, crop=3, stride=1)
    # pixel (2, 2) is covered by all 9 windows with offsets y, x in {0, 1, 2}: mean offset 1 -> 1*100 + 1
    assert scores[0, 0, 2, 2].item() == pytest.approx(101.0)
    # pixel (0, 0) only by the window at (0, 0); pixel (0, 4) only by (0, 2)
    assert scores[0, 0, 0, 0].item() == 0.0 and scores[0, 0, 0, 4].item() == 2.0


def test_windows_per_call_does_not_change_the_result() -> None:
    images = torch.rand(2, 3, 7, 9)
    weight = torch.randn(4, 3, 1, 1)

    def model(x: Tensor) -> Tensor:
        return torch.nn.functional.conv2d(x, weight)

    one = slide_inference(model, images, crop=4, stride=3)
    many = slide_inference(model, images, crop=4, stride=3, windows_per_call=5)
    torch.testing.assert_close(one, many)
    # a per-pixel model gives the same scores whatever the windows
    torch.testing.assert_close(one, model(images))


def test_crop_at_least_the_image_equals_whole_inference() -> None:
    from vltk.config import build_config
    from vltk.pipeline import build_model
    from vltk.plugins import get_plugin_manager

    config = build_config(
        overrides=["dataset.size=64", "dataset.num_train=2", "dataset.num_val=1"],
        recipe_dirs=get_plugin_manager().recipe_dirs(),
    )
    torch.manual_seed(0)
    model = build_model(config).eval()
    images = torch.rand(2, 3, 48, 64)
    whole = model.predict(images)
    torch.testing.assert_close(slide_inference(model, images, crop=64, stride=32), whole)
    torch.testing.assert_close(slide_inference(model, images, crop=(100, 200), stride=50), whole)
    slide_config = EvalConfig(mode="slide", crop_size=64, stride=40)
    torch.testing.assert_close(inference_from_config(model, images, slide_config), whole)
    assert inference_from_config(model, images, EvalConfig()).shape == (2, 19, 48, 64)


def test_bad_windows_are_rejected() -> None:
    with pytest.raises(ValueError, match="stride"):
        slide_inference(OffsetModel(), torch.zeros(1, 3, 4, 4), crop=2, stride=3)
    with pytest.raises(ValueError, match="stride"):
        EvalConfig(crop_size=[4, 4], stride=[2, 5])


def test_evaluate_uses_the_eval_mode() -> None:
    from vltk.config import build_config
    from vltk.engine.evaluation import evaluate
    from vltk.pipeline import build_data_source, build_model
    from vltk.plugins import get_plugin_manager
    from vltk.tasks import get_task

    base = ["dataset.size=64", "dataset.num_train=2", "dataset.num_val=2", "dataset.domains=[synthetic]"]
    recipe_dirs = get_plugin_manager().recipe_dirs()
    whole = build_config(overrides=base, recipe_dirs=recipe_dirs)
    covering = build_config(overrides=[*base, "eval.mode=slide", "eval.crop_size=64", "eval.stride=32"])
    small = build_config(overrides=[*base, "eval.mode=slide", "eval.crop_size=32", "eval.stride=16"])
    torch.manual_seed(0)
    model = build_model(whole)
    source = build_data_source(whole)
    device = torch.device("cpu")
    task = get_task("segmentation")
    reference = evaluate(model, source, task, whole.eval, device)["domains"]["synthetic"]
    assert evaluate(model, source, task, covering.eval, device)["domains"]["synthetic"] == reference
    windowed = evaluate(model, source, task, small.eval, device)["domains"]["synthetic"]
    assert windowed["images"] == 2 and windowed["iou"] != reference["iou"]  # 9 windows of 32: other predictions


class ColumnModel:
    """Fake model whose class-0 score is the pixel's x channel and class-1 score its position in the window.

    The position term does not mirror with the content, so the flipped view differs and the TTA average can be
    written down by hand.
    """

    def predict(self, images: Tensor) -> Tensor:
        content = images[:, 1:2]  # the coordinate image's x channel
        position = torch.arange(images.shape[-1], dtype=images.dtype).expand_as(content)
        return torch.cat([content * 0.1, position * 0.3], dim=1)


def test_flip_tta_averages_softmax_of_both_views_by_hand() -> None:
    from vltk.models.inference import inference

    images = _coordinates(2, 5)
    plain = ColumnModel().predict(images)
    # mirrored view: the model sees x reversed, its scores are mirrored back before averaging
    mirrored = ColumnModel().predict(images.flip(-1)).flip(-1)
    expected = (plain.softmax(1) + mirrored.softmax(1)) / 2
    result = inference(ColumnModel(), images, flip=True)
    torch.testing.assert_close(result, expected)
    assert not torch.allclose(result, plain.softmax(1))  # the flipped view really contributed


def test_multi_scale_tta_resizes_views_back_and_averages() -> None:
    from torch.nn import functional as F

    from vltk.models.inference import inference

    images = torch.rand(1, 3, 8, 8)

    def model(batch: Tensor) -> Tensor:
        return batch[:, :2] * 3.0

    views = []
    for scale in (0.5, 1.0):
        size = (round(8 * scale), round(8 * scale))
        scaled = F.interpolate(images, size, mode="bilinear", align_corners=False) if scale != 1.0 else images
        scores = F.interpolate(model(scaled), (8, 8), mode="bilinear", align_corners=False)
        views.append(scores.softmax(1))
    expected = (views[0] + views[1]) / 2
    torch.testing.assert_close(inference(model, images, scales=[0.5, 1.0]), expected)
    # no augmentation: the raw scores, not probabilities
    torch.testing.assert_close(inference(model, images), model(images))


def test_tta_options_are_read_from_eval_config_and_checked() -> None:
    config = EvalConfig(flip=True, scales=[1.0])
    images = _coordinates(2, 5)
    torch.testing.assert_close(
        inference_from_config(ColumnModel(), images, config),
        (ColumnModel().predict(images).softmax(1) + ColumnModel().predict(images.flip(-1)).flip(-1).softmax(1)) / 2,
    )
    with pytest.raises(ValueError, match="positive factors"):
        EvalConfig(scales=[0.0])
    with pytest.raises(ValueError, match="positive factors"):
        EvalConfig(scales=[])
