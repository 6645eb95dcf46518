"""CLIP the Gap's released checkpoints (detectron2) convert into vltk and give the same detections.

Two sizes: the synthetic recipe's head (4 x 3 anchors, 7x7 offsets, 2 classes) and the paper's head on the tiny
backbone (detectron2's C4 5 x 3 anchors, the 15 Diverse Weather offsets at 14x14, its 7 classes), both with every
extra tensor a detectron2 file of ``ClipRCNNWithClipBackboneWithOffsetGenTrainable`` holds.
``test_clip_gap_paper_release.py`` checks the RN101 shapes themselves.
"""

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
#: The paper's head (configs/diverse_weather.yaml + detectron2's C4 defaults) on the tiny backbone: only the
#: backbone's widths are shrunk; anchors, offsets and classes are the released ones.
DWD_CLASSES = ["bus", "bike", "car", "motor", "person", "rider", "truck"]
PAPER_HEAD = ["dataset.num_train=2", "dataset.num_val=2", "decoder.anchor_sizes=[32,64,128,256,512]"]
PAPER_HEAD += ["augmenters.0.offset_size=14", "decoder.rpn_post_nms_top_n_test=50"]
PAPER_RUN = [*RUN[:3], *PAPER_HEAD[2:], "decoder.roi_size=8", "decoder.rpn_pre_nms_top_n_test=500"]

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


def _size_major(value: torch.Tensor, per_anchor: int, sizes: int = SIZES) -> torch.Tensor:
    """torchvision's ratio-major anchors (r, s) -> detectron2's size-major (s, r), per_anchor rows each."""
    grouped = value.reshape(RATIOS, sizes, per_anchor, *value.shape[1:])
    return grouped.transpose(0, 1).reshape(value.shape)


def _fabricate(release_tools, folder: Path, overrides=("dataset.num_train=2", "dataset.num_val=2"), classes=None):
    classes = classes or ["car", "bus"]
    model = release_tools.model("clip-gap/synthetic", list(overrides), classes)
    state = model.state_dict()
    with torch.no_grad():  # torchvision's background box slot: detectron2 has none, the converter writes zeros
        state["decoder.bbox_pred.weight"][:4] = 0
        state["decoder.bbox_pred.bias"][:4] = 0
    state = {key: value for key, value in state.items() if key != "augmenters.0.fitted"}
    upstream = release_tools.rename(state, INVERSE)
    sizes = upstream["proposal_generator.rpn_head.objectness_logits.bias"].shape[0] // RATIOS
    for name, per in (("objectness_logits", 1), ("anchor_deltas", 4)):
        for kind in ("weight", "bias"):
            key = f"proposal_generator.rpn_head.{name}.{kind}"
            upstream[key] = _size_major(upstream[key], per, sizes)
    for kind in ("weight", "bias"):
        upstream[f"roi_heads.box_predictor.bbox_pred.{kind}"] = upstream[f"roi_heads.box_predictor.bbox_pred.{kind}"][
            4:
        ]
    # the rest of a detectron2 CLIP the Gap file: the visual tower under two more names (and layer3's first 19
    # blocks under a third, ClipRN101.backbone_unchanged), a frozen CLIP copy, unused projections and res5, the
    # pixel statistics
    for key, value in list(upstream.items()):
        if key.startswith("backbone.enc."):
            upstream[_CS + "model.visual." + key.removeprefix("backbone.enc.")] = value
            upstream[_CS + "visual_enc." + key.removeprefix("backbone.enc.")] = value
        if key.startswith("backbone.enc.layer3.") and int(key.split(".")[3]) < 19:
            upstream["backbone.backbone_unchanged." + key.removeprefix("backbone.enc.layer3.")] = value
        if key.startswith(_CS + "model."):
            upstream[_CS + "frozen_clip_model." + key.removeprefix(_CS + "model.")] = value.clone()
    upstream[_CS + "projection.weight"] = torch.randn(512, 64)
    upstream["backbone.proj.weight"] = torch.randn(512, 512)
    upstream["roi_heads.res5.0.conv1.weight"] = torch.randn(8, 8, 1, 1)
    upstream["pixel_mean"] = torch.randn(3, 1, 1)
    release = folder / "clip_gap_model_final.pth"
    torch.save({"model": upstream, "iteration": 100000}, release)
    return model, release


@pytest.mark.parametrize(
    ("overrides", "classes", "run", "offsets"),
    [
        (("dataset.num_train=2", "dataset.num_val=2"), ["car", "bus"], RUN, (15, 7)),
        (PAPER_HEAD, DWD_CLASSES, PAPER_RUN, (15, 14)),
    ],
    ids=["synthetic-head", "paper-head"],
)
def test_clip_gap_release_gives_the_same_detections(release_tools, tmp_path: Path, overrides, classes, run, offsets):
    from vltk_plugins.common.releases.convert import convert_release

    model, release = _fabricate(release_tools, tmp_path, overrides, classes)
    with torch.no_grad():
        model.decoder.bbox_pred.weight[:4] = 0
        model.decoder.bbox_pred.bias[:4] = 0
    lines = convert_release(str(release), str(tmp_path / "gap.pt"), tuple(run))
    assert any("--from clip-gap" in line for line in lines), lines
    saved = torch.load(tmp_path / "gap.pt", weights_only=True)
    assert bool(saved["model"]["augmenters.0.fitted"])
    assert saved["config"]["augmenters"][0]["offset_size"] == offsets[1]
    assert saved["num_classes"] == len(classes)
    assert (
        len(saved["config"]["augmenters"][0]["target_prompts"]),
        *saved["model"]["augmenters.0.offsets"].shape[::2],
    ) == (offsets[0], offsets[0], offsets[1])
    expected = {key: value for key, value in model.state_dict().items() if key != "augmenters.0.fitted"}
    for key, value in expected.items():
        torch.testing.assert_close(saved["model"][key], value, msg=key)
    converted = release_tools.load_converted(tmp_path / "gap.pt", (), None, classes)
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
