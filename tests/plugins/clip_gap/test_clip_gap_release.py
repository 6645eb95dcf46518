"""CLIP the Gap's released checkpoints (detectron2) convert into vltk and give the same detections."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vltk.errors import UserError

#: What the synthetic recipe sets beyond the release's dwd recipe (the data and the anchors the head was built for).
RUN = [
    "dataset=synthetic-det",
    "dataset.num_train=2",
    "dataset.num_val=2",
    "decoder.anchor_sizes=[8,16,32,64]",
    "decoder.roi_size=8",
    "decoder.rpn_pre_nms_top_n_test=500",
    "decoder.rpn_post_nms_top_n_test=100",
]
SIZES, RATIOS = 4, 3

_CS = "roi_heads.box_predictor.cls_score."
#: vltk name -> detectron2 name in CLIP the Gap's model (ClipRN101 backbone ``enc``, detectron2's RPN head,
#: FastRCNNOutputLayers.bbox_pred, ClipPredictor's CLIP ``model``), written independently of the plugin's map.
INVERSE = [
    (r"backbone\.visual\.(.*)", r"backbone.enc.\1"),
    (r"backbone\.text\.(.*)", _CS + r"model.\1"),
    (r"backbone\.logit_scale", _CS + "model.logit_scale"),
    (r"decoder\.rpn\.head\.conv\.0\.0\.(.*)", r"proposal_generator.rpn_head.conv.\1"),
    (r"decoder\.rpn\.head\.cls_logits\.(.*)", r"proposal_generator.rpn_head.objectness_logits.\1"),
    (r"decoder\.rpn\.head\.bbox_pred\.(.*)", r"proposal_generator.rpn_head.anchor_deltas.\1"),
    (r"decoder\.bbox_pred\.(.*)", r"roi_heads.box_predictor.bbox_pred.\1"),
    (r"augmenters\.0\.offsets", "offsets"),
]


def _size_major(value: torch.Tensor, per_anchor: int) -> torch.Tensor:
    """torchvision's ratio-major anchors (r, s) -> detectron2's size-major (s, r), per_anchor rows each."""
    grouped = value.reshape(RATIOS, SIZES, per_anchor, *value.shape[1:])
    return grouped.transpose(0, 1).reshape(value.shape)


def _fabricate(release_tools, folder: Path):
    model = release_tools.model("clip-gap/synthetic", ["dataset.num_train=2", "dataset.num_val=2"], ["car", "bus"])
    state = model.state_dict()
    with torch.no_grad():  # torchvision's background box slot: detectron2 has none, the converter writes zeros
        state["decoder.bbox_pred.weight"][:4] = 0
        state["decoder.bbox_pred.bias"][:4] = 0
    state = {key: value for key, value in state.items() if key != "augmenters.0.fitted"}
    upstream = release_tools.rename(state, INVERSE)
    for name, per in (("objectness_logits", 1), ("anchor_deltas", 4)):
        for kind in ("weight", "bias"):
            key = f"proposal_generator.rpn_head.{name}.{kind}"
            upstream[key] = _size_major(upstream[key], per)
    for kind in ("weight", "bias"):
        upstream[f"roi_heads.box_predictor.bbox_pred.{kind}"] = upstream[f"roi_heads.box_predictor.bbox_pred.{kind}"][
            4:
        ]
    # the rest of a detectron2 CLIP the Gap file: the visual tower under two more names, a frozen CLIP copy, unused
    # projections and res5, the pixel statistics
    for key, value in list(upstream.items()):
        if key.startswith("backbone.enc."):
            upstream[_CS + "model.visual." + key.removeprefix("backbone.enc.")] = value
            upstream[_CS + "visual_enc." + key.removeprefix("backbone.enc.")] = value
        if key.startswith(_CS + "model."):
            upstream[_CS + "frozen_clip_model." + key.removeprefix(_CS + "model.")] = value.clone()
    upstream[_CS + "projection.weight"] = torch.randn(512, 64)
    upstream["backbone.proj.weight"] = torch.randn(512, 512)
    upstream["roi_heads.res5.0.conv1.weight"] = torch.randn(8, 8, 1, 1)
    upstream["pixel_mean"] = torch.randn(3, 1, 1)
    release = folder / "clip_gap_model_final.pth"
    torch.save({"model": upstream, "iteration": 100000}, release)
    return model, release


def test_clip_gap_release_gives_the_same_detections(release_tools, tmp_path: Path) -> None:
    from vltk_plugins.common.releases.convert import convert_release

    model, release = _fabricate(release_tools, tmp_path)
    with torch.no_grad():
        model.decoder.bbox_pred.weight[:4] = 0
        model.decoder.bbox_pred.bias[:4] = 0
    lines = convert_release(str(release), str(tmp_path / "gap.pt"), tuple(RUN))
    assert any("--from clip-gap" in line for line in lines), lines
    saved = torch.load(tmp_path / "gap.pt", weights_only=True)
    assert bool(saved["model"]["augmenters.0.fitted"])
    assert saved["config"]["augmenters"][0]["offset_size"] == 7
    expected = {key: value for key, value in model.state_dict().items() if key != "augmenters.0.fitted"}
    for key, value in expected.items():
        torch.testing.assert_close(saved["model"][key], value, msg=key)
    converted = release_tools.load_converted(tmp_path / "gap.pt", (), None, ["car", "bus"])
    images = [torch.rand(3, 96, 128), torch.rand(3, 64, 64)]
    with torch.no_grad():
        for ours, theirs in zip(converted.predict(images), model.eval().predict(images), strict=True):
            assert ours.keys() == theirs.keys()
            for key in ours:
                torch.testing.assert_close(ours[key], theirs[key])


def test_anchor_order_is_a_permutation_and_other_files_are_refused(release_tools, tmp_path: Path) -> None:
    from vltk_plugins.clip_gap.release import anchor_rows
    from vltk_plugins.common.releases.convert import convert_release

    rows = anchor_rows(5, 3, 4)
    assert sorted(rows) == list(range(60)) and rows[:8] == (0, 1, 2, 3, 12, 13, 14, 15)
    _, release = _fabricate(release_tools, tmp_path)
    with pytest.raises(
        UserError, match=r"objectness_logits\.weight has 12 rows where 15 are expected .*decoder\.anchor_sizes"
    ):
        convert_release(str(release), str(tmp_path / "x.pt"), tuple(RUN[:3]))  # the dwd recipe's 5 x 3 anchors
    with pytest.raises(UserError, match=r"not a CLIP the Gap release .*backbone\.enc"):
        torch.save({"model": {"backbone.enc.conv1.weight": torch.zeros(1)}}, tmp_path / "bare.pth")
        convert_release(str(tmp_path / "bare.pth"), str(tmp_path / "x.pt"), tuple(RUN), from_format="clip-gap")
    assert not (tmp_path / "x.pt").exists()
