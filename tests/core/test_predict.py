"""``vltk predict``: label PNGs and overlays from a trained checkpoint, open-vocabulary labels, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vltk.cli.predict import parse_labels, predict_images
from vltk.cli.run import build_checkpoint_model, load_checkpoint_config
from vltk.config import RunConfig, build_config, resolve
from vltk.errors import UserError
from vltk.plugins import get_plugin_manager
from vltk.predictor import label_color
from vltk.testing import invoke

TINY = [
    "backbone.variant=tiny",
    "dataset.size=64",
    "dataset.num_train=4",
    "dataset.num_val=1",
    "dataset.domains=[synthetic]",
    "train.iters=2",
    "train.batch_size=2",
    "train.eval_interval=0",
    "train.checkpoint_interval=2",
    "eval.batch_size=1",
    "eval.overlays=0",
]


def _config(recipe: str, overrides: tuple[str, ...], components: dict[str, str]) -> RunConfig:
    manager = get_plugin_manager()
    config = build_config(
        recipe,
        components={"backbone": "clip-vit", **components},
        overrides=[*TINY, *overrides],
        recipe_dirs=manager.recipe_dirs(),
    )
    return resolve(config, manager.get_registry())


def _train(output: Path, recipe: str, *overrides: str, **components: str) -> Path:
    """A real checkpoint from the Trainer with a tiny CLIP ViT: seconds on one core."""
    from vltk.engine.trainer import Trainer

    Trainer(_config(recipe, overrides, components), output, quiet=True).fit()
    return output / "last.pt"


def _untrained(output: Path, recipe: str, *overrides: str, **components: str) -> Path:
    """A checkpoint of a freshly built model, written as the Trainer writes it (no training: faster)."""
    from vltk.engine.checkpoint import save_atomic
    from vltk.pipeline import build_model

    config = _config(recipe, overrides, components)
    torch.manual_seed(0)
    model = build_model(config)
    state = {"model": model.state_dict(), "config": config.config.to_dict(), "class_names": list(model.class_names)}
    return save_atomic(state, output / "model.pt")


@pytest.fixture(scope="module")
def lseg_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(tmp_path_factory.mktemp("lseg"), "lseg/synthetic", "decoder.width=16")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = [folder / "street.png", folder / "field.jpg"]
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(paths[0])
    Image.fromarray(rng.integers(0, 255, (48, 33, 3), dtype=np.uint8)).save(paths[1])
    return paths


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_help_lists_the_options() -> None:
    result = invoke(["predict", "--help"])
    assert result.exit_code == 0
    for option in ("--checkpoint", "--labels", "--output", "--slide"):
        assert option in result.output


def test_training_labels_by_default(lseg_checkpoint: Path, images: list[Path], tmp_path: Path) -> None:
    result = invoke(["predict", *map(str, images), "--checkpoint", str(lseg_checkpoint), "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "labels.json").read_text())
    assert len(summary["labels"]) == 19 and summary["labels"][0] == "road"
    assert summary["palette"][0] == [128, 64, 128]  # the dataset's colours travel in the checkpoint
    street = _read(tmp_path / "street.png")
    assert street.dtype == np.uint8 and street.shape == (40, 56) and street.max() < 19
    assert _read(tmp_path / "field.png").shape == (48, 33)
    overlay = _read(tmp_path / "street_overlay.png")  # image | prediction, captioned, with a class legend
    assert overlay.ndim == 3 and overlay.shape[1] >= 2 * 56 + 4 and overlay.shape[0] > 40
    predicted = {int(index) for index in np.unique(street)}
    colours = {tuple(int(c) for c in pixel) for pixel in np.unique(overlay.reshape(-1, 3), axis=0)}
    assert all(tuple(summary["palette"][index]) in colours for index in predicted)  # a swatch per class shown


def test_new_labels_give_indices_into_the_new_list(lseg_checkpoint: Path, images: list[Path], tmp_path: Path) -> None:
    labels = ["car", "zebra crossing", "road", "sky"]  # "zebra crossing" was never a training class
    summary = predict_images(lseg_checkpoint, images[:1], tmp_path / "a", labels=labels)
    assert summary["labels"] == labels and summary["scores_from"] == "decoder"
    assert summary["palette"][0] == [0, 0, 142]  # car keeps its training colour
    assert summary["palette"][1] == list(label_color("zebra crossing"))  # new names: a fixed colour per name
    predicted = _read(tmp_path / "a" / "street.png")
    assert predicted.max() < len(labels)

    # the same as the model's own argmax over the new label list
    state, config = load_checkpoint_config(lseg_checkpoint)
    model = build_checkpoint_model(state, config, state["class_names"], 255)
    model.set_class_names(labels)
    image = torch.from_numpy(_read(images[0]).copy()).permute(2, 0, 1)[None].float() / 255
    expected = model.predict(image).argmax(1)[0].numpy()
    np.testing.assert_array_equal(predicted, expected)

    # a permuted list permutes the indices: every pixel keeps its class *name*
    order = [2, 0, 3, 1]
    predict_images(lseg_checkpoint, images[:1], tmp_path / "b", labels=[labels[i] for i in order])
    permuted = _read(tmp_path / "b" / "street.png")
    names = np.array(labels)
    np.testing.assert_array_equal(names[np.array(order)][permuted], names[predicted])


def test_many_labels_are_written_as_16_bit(lseg_checkpoint: Path, images: list[Path], tmp_path: Path) -> None:
    labels = [f"thing {i}" for i in range(300)]
    predict_images(lseg_checkpoint, images[1:], tmp_path, labels=labels)
    predicted = _read(tmp_path / "field.png")
    assert predicted.dtype == np.uint16 and predicted.max() < 300
    assert (tmp_path / "field_overlay.png").is_file()


def test_slide_and_folder_input(lseg_checkpoint: Path, images: list[Path], tmp_path: Path) -> None:
    result = invoke(
        ["predict", str(images[0].parent), "--checkpoint", str(lseg_checkpoint), "--output", str(tmp_path), "--slide"]
    )
    assert result.exit_code == 0, result.output
    assert {p.name for p in tmp_path.glob("*.png")} >= {"street.png", "field.png"}
    assert json.loads((tmp_path / "labels.json").read_text())["mode"] == "slide"


@pytest.mark.parametrize(
    ("labels", "message"),
    [("", "--labels is empty"), (" , ", "--labels is empty"), ("road,,car", "empty name"), ("a,b,a", "a more than")],
)
def test_bad_label_lists_exit_2(labels: str, message: str, images: list[Path], tmp_path: Path) -> None:
    result = invoke(["predict", str(images[0]), "--checkpoint", "x.pt", "--output", str(tmp_path), "--labels", labels])
    assert result.exit_code == 2 and message in result.output


def test_missing_and_corrupt_images_are_named(lseg_checkpoint: Path, tmp_path: Path) -> None:
    missing = invoke(["predict", "nowhere.png", "--checkpoint", str(lseg_checkpoint), "--output", str(tmp_path)])
    assert missing.exit_code == 2 and "image 'nowhere.png' does not exist" in missing.output
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    result = invoke(["predict", str(corrupt), "--checkpoint", str(lseg_checkpoint), "--output", str(tmp_path)])
    assert result.exit_code == 2 and "broken.png" in result.output and "cannot be read" in result.output
    assert not (tmp_path / "labels.json").exists()


def test_labels_need_a_prompter(images: list[Path], tmp_path: Path) -> None:
    checkpoint = _untrained(tmp_path, "default", "decoder.channels=16", "decoder.head_channels=16")
    result = invoke(
        ["predict", str(images[0]), "--checkpoint", str(checkpoint), "--output", str(tmp_path), "--labels", "a,b"]
    )
    assert result.exit_code == 2 and "--labels needs a model with a prompter" in result.output


def test_closed_set_decoder_predicts_from_the_score_map(images: list[Path], tmp_path: Path) -> None:
    # DenseCLIP-style: FPN whose input carries the K-channel score map; new labels bypass the decoder
    checkpoint = _untrained(
        tmp_path,
        "default",
        "decoder.channels=16",
        "decoder.head_channels=16",
        "prompter.score_concat_index=2",
        prompter="clip-template",
    )
    summary = predict_images(checkpoint, images[:1], tmp_path / "out", labels=["sky", "lake", "road"])
    assert summary["scores_from"] == "pixel-text score map"
    assert _read(tmp_path / "out" / "street.png").max() < 3
    with pytest.raises(UserError, match="--labels is empty"):
        parse_labels(",")


def test_real_subprocess(lseg_checkpoint: Path, images: list[Path], tmp_path: Path) -> None:
    # as a user runs it: no Triton interpreter (tests/conftest.py sets it for in-process kernel tests)
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    completed = subprocess.run(
        [sys.executable, "-m", "vltk", "predict", str(images[0]), "--checkpoint", str(lseg_checkpoint)]
        + ["--labels", "road,sky,pink elephant", "--output", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["labels"] == ["road", "sky", "pink elephant"]
    assert _read(tmp_path / "street.png").max() < 3


# ------------------------------------------------------------------------------------- vltk eval --labels
def _eval(checkpoint: Path, output: Path, *extra: str) -> dict:
    result = invoke(["eval", "--checkpoint", str(checkpoint), "--output", str(output), "--json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads((output / "eval.json").read_text())


def test_eval_labels_rename_the_classes_zero_shot(lseg_checkpoint: Path, tmp_path: Path) -> None:
    from vltk.api import CITYSCAPES_CLASSES
    from vltk_plugins.datasets.synthetic.captions import held_out_class_names

    plain = _eval(lseg_checkpoint, tmp_path / "plain")
    same = _eval(lseg_checkpoint, tmp_path / "same", "--labels", ",".join(CITYSCAPES_CLASSES))
    assert same["domains"]["synthetic"]["iou"] == plain["domains"]["synthetic"]["iou"]  # same words, same scores
    names = held_out_class_names()
    held_out = _eval(lseg_checkpoint, tmp_path / "held", "--labels", ",".join(names))
    assert held_out["labels"]["car"] == "automobile" and held_out["labels"]["road"] == "road"
    assert held_out["domains"]["synthetic"]["iou"] != plain["domains"]["synthetic"]["iou"]  # other words, other text
    assert "labels" not in plain


@pytest.mark.parametrize(
    ("recipe", "overrides", "components", "labels", "expected"),
    [
        ("lseg/synthetic", ("decoder.width=16",), {}, "road,car", "--labels gives 2 names but the dataset has 19"),
        ("default", ("decoder.channels=16", "decoder.head_channels=16"), {}, None, "needs a model with a prompter"),
        (
            "default",
            ("decoder.channels=16", "decoder.head_channels=16", "prompter.score_concat_index=2"),
            {"prompter": "clip-template"},
            None,
            "needs a decoder that classifies with the text",
        ),
    ],
)
def test_eval_labels_refusals_are_one_line_and_write_nothing(
    recipe: str,
    overrides: tuple[str, ...],
    components: dict[str, str],
    labels: str | None,
    expected: str,
    tmp_path: Path,
) -> None:
    from vltk.api import CITYSCAPES_CLASSES

    checkpoint = _untrained(tmp_path, recipe, *overrides, **components)
    out = tmp_path / "out"
    result = invoke(
        [
            "eval",
            "--checkpoint",
            str(checkpoint),
            "--output",
            str(out),
            "--labels",
            labels or ",".join(CITYSCAPES_CLASSES),
        ]
    )
    assert result.exit_code == 2 and expected in result.output, result.output
    assert result.output.strip().startswith("Error:") and len(result.output.strip().splitlines()) == 1
    assert not out.exists()
