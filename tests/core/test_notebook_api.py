"""``vltk.train`` and ``vltk.load(...).predict``: the notebook API gives what the CLI gives."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_runs import TINY_API

import vltk
from vltk.errors import UserError

TINY = TINY_API


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("api") / "run"
    results = vltk.train(overrides=TINY, output=out)
    return out, results


def test_train_returns_the_final_results_it_wrote(run_folder: tuple[Path, dict]) -> None:
    out, results = run_folder
    written = json.loads((out / "metrics.json").read_text())["final"]
    assert set(results["domains"]) == {"synthetic", "night"}
    assert results["domains"]["night"]["miou"] == pytest.approx(written["domains"]["night"]["miou"])
    assert results["summary"]["source"] == pytest.approx(written["summary"]["source"])


def test_train_takes_cli_style_overrides_and_refuses_bad_ones(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="train.itres"):
        vltk.train(overrides=["train.itres=2"], output=tmp_path / "bad")
    with pytest.raises(UserError, match="one string"):
        vltk.train(overrides="train.iters=2", output=tmp_path / "bad")
    with pytest.raises(UserError, match="output="):
        vltk.train(resume=True)
    assert not (tmp_path / "bad").exists()


def test_load_predict_matches_vltk_predict(run_folder: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = run_folder
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(50, 70, 3), dtype=np.uint8)  # not the training size
    path = tmp_path / "street.png"
    Image.fromarray(image).save(path)
    done = subprocess.run(
        [sys.executable, "-m", "vltk", "predict", str(path), "--checkpoint", str(out / "best.pt"), "--output",
         str(tmp_path / "preds")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    from_cli = np.asarray(Image.open(tmp_path / "preds" / "street.png"))

    segmenter = vltk.load(out / "best.pt")
    assert segmenter.class_names == json.loads((tmp_path / "preds" / "labels.json").read_text())["labels"]
    from_array = segmenter.predict(image)
    assert from_array.shape == (50, 70)
    np.testing.assert_array_equal(from_array, from_cli)
    np.testing.assert_array_equal(segmenter.predict(Image.fromarray(image)), from_cli)
    np.testing.assert_array_equal(segmenter.predict(str(path)), from_cli)
    tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    np.testing.assert_array_equal(segmenter.predict(tensor), from_cli)
    batch = segmenter.predict(torch.stack([tensor, tensor]))
    assert batch.shape == (2, 50, 70)
    several = segmenter.predict([image, image[:32, :40]])
    assert [item.shape for item in several] == [(50, 70), (32, 40)]
    flipped = segmenter.scores(image, flip=True)
    assert flipped.shape == (1, len(segmenter.class_names), 50, 70)
    torch.testing.assert_close(flipped.sum(1), torch.ones(1, 50, 70))  # averaged probabilities


def test_load_refuses_what_is_not_an_image(run_folder: tuple[Path, dict]) -> None:
    segmenter = vltk.load(run_folder[0] / "best.pt")
    with pytest.raises(UserError, match=r"\[H, W, 3\]"):
        segmenter.predict(np.zeros((4, 4, 5), dtype=np.uint8))
    with pytest.raises(UserError, match="cannot read a dict"):
        segmenter.predict({"image": 1})
