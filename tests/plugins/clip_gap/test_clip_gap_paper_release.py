"""A CLIP the Gap release at the paper's configuration (Diverse Weather, ``model_final.pth``) fits vltk's model.

Shapes only, on the meta device (no memory, ~1 s): the released names and shapes are written from vidit09/domaingen
and the real libraries, independently of vltk's map. ``ClipRCNNWithClipBackboneWithOffsetGenTrainable``
holds: ``backbone`` = ``ClipRN101`` (``enc`` = CLIP RN101's visual tower, OpenAI names, here from open_clip's
``CLIP("RN101")``; ``proj``/``global_proj`` ``Linear(512, 512)``; ``backbone_unchanged`` = ``layer3[:19]`` again);
detectron2's ``StandardRPNHead`` on the 1024-wide ``res4`` with 5 x 3 = 15 anchors; ``Res5ROIHeads``' own ``res5``
(3 bottlenecks, FrozenBN); ``ClipFastRCNNOutputLayers`` with ``bbox_pred`` ``Linear(2048, 4 * 7)`` and ``cls_score`` =
``ClipPredictor`` (the whole CLIP as ``model``, a ``frozen_clip_model`` copy, ``visual_enc``, ``projection`` and
``projection_global`` ``Linear(2048, 512)``); ``offsets`` ``[15, 1024, 14, 14]`` (one per line of
``prunedprompts2.txt``). The converted checkpoint must fit, strictly, the model its recipe builds.
"""

from __future__ import annotations

import pytest
import torch

_CS = "roi_heads.box_predictor.cls_score."


def _paper_release(offsets: int = 15, classes: int = 7) -> dict[str, torch.Tensor]:
    import open_clip

    with torch.device("meta"):
        clip = open_clip.CLIP(**open_clip.get_model_config("RN101"))
    full = {key: tuple(value.shape) for key, value in clip.state_dict().items()}
    visual = {key.removeprefix("visual."): shape for key, shape in full.items() if key.startswith("visual.")}
    assert max(int(key.split(".")[1]) for key in visual if key.startswith("layer3.")) == 22  # RN101: 23 blocks
    shapes = {f"backbone.enc.{key}": shape for key, shape in visual.items()}
    shapes |= {
        f"backbone.backbone_unchanged.{key.removeprefix('layer3.')}": shape
        for key, shape in visual.items()
        if key.startswith("layer3.") and int(key.split(".")[1]) < 19
    }
    for name in ("proj", "global_proj"):
        shapes[f"backbone.{name}.weight"], shapes[f"backbone.{name}.bias"] = (512, 512), (512,)
    rpn = "proposal_generator.rpn_head."
    shapes[rpn + "conv.weight"], shapes[rpn + "conv.bias"] = (1024, 1024, 3, 3), (1024,)
    shapes[rpn + "objectness_logits.weight"], shapes[rpn + "objectness_logits.bias"] = (15, 1024, 1, 1), (15,)
    shapes[rpn + "anchor_deltas.weight"], shapes[rpn + "anchor_deltas.bias"] = (60, 1024, 1, 1), (60,)
    for block in range(3):  # detectron2's res5 of R101-C4: 3 BottleneckBlocks, FrozenBatchNorm2d
        convs = {
            "conv1": (512, 1024 if block == 0 else 2048, 1, 1),
            "conv2": (512, 512, 3, 3),
            "conv3": (2048, 512, 1, 1),
        }
        if block == 0:
            convs["shortcut"] = (2048, 1024, 1, 1)
        for conv, shape in convs.items():
            shapes[f"roi_heads.res5.{block}.{conv}.weight"] = shape
            for stat in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"roi_heads.res5.{block}.{conv}.norm.{stat}"] = (shape[0],)
    shapes |= {f"{_CS}model.{key}": shape for key, shape in full.items()}
    shapes |= {f"{_CS}frozen_clip_model.{key}": shape for key, shape in full.items()}
    shapes |= {f"{_CS}visual_enc.{key}": shape for key, shape in visual.items()}
    for name in ("projection", "projection_global"):
        shapes[f"{_CS}{name}.weight"], shapes[f"{_CS}{name}.bias"] = (512, 2048), (512,)
    shapes["roi_heads.box_predictor.bbox_pred.weight"] = (4 * classes, 2048)
    shapes["roi_heads.box_predictor.bbox_pred.bias"] = (4 * classes,)
    shapes["offsets"] = (offsets, 1024, 14, 14)
    return {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}


def test_a_paper_shaped_release_converts_and_fits_its_model_strictly(monkeypatch: pytest.MonkeyPatch) -> None:
    import vltk_plugins.common.releases.format as release_format
    from vltk.api import check_checkpoint
    from vltk_plugins.clip_gap.release import CLIP_GAP_RELEASE
    from vltk_plugins.common.releases import ReleaseFile

    state = _paper_release()
    release = ReleaseFile(path="model_final.pth", state=state, container="torch.save", meta={"iteration": 199999})
    monkeypatch.setattr(release_format, "read_release", lambda path: release)
    converted = CLIP_GAP_RELEASE.convert("model_final.pth", {"overrides": []})
    assert converted is not None and converted["num_classes"] == 7
    dropped = set(converted["release"]["dropped"])
    assert {key for key in state if key.startswith(("backbone.backbone_unchanged.", "roi_heads.res5."))} <= dropped
    model = converted["model"]
    assert model["decoder.rpn.head.cls_logits.weight"].shape == (15, 1024, 1, 1)
    assert model["decoder.bbox_pred.weight"].shape == (32, 2048)  # torchvision's background slot first
    assert model["augmenters.0.offsets"].shape == (15, 1024, 14, 14)
    checked = check_checkpoint(converted, [])  # strict: every key of the model, each with its shape
    config = checked["config"]
    assert (config["backbone"]["name"], config["backbone"]["variant"]) == ("clip-resnet", "RN101")
    augmenter = config["augmenters"][0]
    assert (augmenter["offset_size"], len(augmenter["target_prompts"])) == (14, 15)
    assert (config["decoder"]["anchor_sizes"], config["decoder"]["aspect_ratios"]) == (
        [32.0, 64.0, 128.0, 256.0, 512.0],
        [0.5, 1.0, 2.0],
    )
    assert not config["decoder"]["class_agnostic_box"]


def test_the_voc_to_comic_watercolor_model_gets_its_style_prompts(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ClipRCNNWithClipBackboneWithOffsetGenTrainableVOC`` (configs/comic_watercolor.yaml): 7 style offsets
    from "a realistic image", 6 classes."""
    import vltk_plugins.common.releases.format as release_format
    from vltk.api import check_checkpoint
    from vltk_plugins.clip_gap.release import CLIP_GAP_RELEASE
    from vltk_plugins.common.releases import ReleaseFile

    release = ReleaseFile(path="voc.pth", state=_paper_release(7, 6), container="torch.save")
    monkeypatch.setattr(release_format, "read_release", lambda path: release)
    converted = CLIP_GAP_RELEASE.convert("voc.pth", {"overrides": []})
    assert converted is not None and converted["num_classes"] == 6
    augmenter = check_checkpoint(converted, [])["config"]["augmenters"][0]
    assert augmenter["source_prompt"] == "a realistic image"
    assert augmenter["target_prompts"][0] == "an image in the comics style" and len(augmenter["target_prompts"]) == 7
    assert augmenter["target_prompts"][-1] == "an image in the oil painting style"
