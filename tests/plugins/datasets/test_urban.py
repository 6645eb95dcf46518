"""The ``urban`` dataset: file discovery for every layout on fabricated trees, label-id mapping, augmentation,
and the errors a user sees for missing folders, unpaired or corrupt files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from vltk.errors import UserError
from vltk_plugins.datasets.urban.dataset import CITYSCAPES_ID_TO_TRAIN_ID, build_urban, fit_size, random_crop, read_pair


def _write(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def _image(height: int = 40, width: int = 60, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _train_id_label(height: int = 40, width: int = 60) -> np.ndarray:
    label = np.zeros((height, width), dtype=np.uint8)
    label[: height // 2] = 10  # sky
    label[height // 2 :, : width // 2] = 13  # car
    label[0, 0] = 255
    return label


def make_gtav(root: Path, count: int = 3) -> None:
    for index in range(count):
        _write(root / "images" / f"{index:05d}.png", _image(seed=index))
        label = np.full((40, 60), 7, dtype=np.uint8)  # road (label id 7 -> train id 0)
        label[:10] = 23  # sky
        label[10:12] = 3  # "out of roi": ignored
        _write(root / "labels" / f"{index:05d}.png", label)


def make_cityscapes(root: Path, train_ids: bool) -> None:
    for split in ("train", "val"):
        for index in range(2):
            stem = f"aachen_{index:06d}_000019"
            _write(root / "leftImg8bit" / split / "aachen" / f"{stem}_leftImg8bit.png", _image(seed=index))
            if train_ids:
                _write(root / "gtFine" / split / "aachen" / f"{stem}_gtFine_labelTrainIds.png", _train_id_label())
            else:
                label = np.full((40, 60), 26, dtype=np.uint8)  # car id
                _write(root / "gtFine" / split / "aachen" / f"{stem}_gtFine_labelIds.png", label)


def make_bdd(root: Path) -> None:
    for index in range(2):
        _write(root / "images" / "10k" / "val" / f"b{index}.jpg", _image(seed=index))
        _write(root / "labels" / "sem_seg" / "masks" / "val" / f"b{index}.png", _train_id_label())


def make_mapillary(root: Path) -> None:
    for index in range(2):
        _write(root / "validation" / "images" / f"m{index}.jpg", _image(50, 70, seed=index))
        _write(root / "validation" / "labels_trainid" / f"m{index}.png", _train_id_label(50, 70))


def make_acdc(root: Path) -> None:
    for condition in ("fog", "night", "rain", "snow"):
        stem = f"GOPR0475_frame_000041_{condition}"
        _write(root / "rgb_anon" / condition / "val" / "GOPR0475" / f"{stem}_rgb_anon.png", _image())
        _write(root / "gt" / condition / "val" / "GOPR0475" / f"{stem}_gt_labelTrainIds.png", _train_id_label())


def test_gtav_label_ids_map_to_train_ids(tmp_path: Path) -> None:
    make_gtav(tmp_path / "gtav")
    source = build_urban({"train": [{"name": "gtav", "kind": "gtav", "root": str(tmp_path / "gtav")}]})
    pair = source.pairs("train", "gtav")[0]
    image, label = read_pair(pair)
    assert image.shape == (40, 60, 3)
    assert set(np.unique(label)) == {CITYSCAPES_ID_TO_TRAIN_ID[7], CITYSCAPES_ID_TO_TRAIN_ID[23], 255}
    assert label[0, 0] == 10 and label[-1, -1] == 0 and label[10, 0] == 255


def test_every_layout_is_discovered(tmp_path: Path) -> None:
    make_gtav(tmp_path / "gtav", count=5)
    make_cityscapes(tmp_path / "city", train_ids=True)
    make_bdd(tmp_path / "bdd")
    make_mapillary(tmp_path / "map")
    make_acdc(tmp_path / "acdc")
    source = build_urban(
        {
            "train": [{"name": "gtav", "kind": "gtav", "root": str(tmp_path / "gtav"), "holdout": 2}],
            "test": [
                {"name": "citys", "kind": "cityscapes", "root": str(tmp_path / "city")},
                {"name": "bdd", "kind": "bdd100k", "root": str(tmp_path / "bdd")},
                {"name": "map", "kind": "mapillary", "root": str(tmp_path / "map")},
                {"name": "acdc-fog", "kind": "acdc", "root": str(tmp_path / "acdc"), "condition": "fog"},
                {"name": "acdc", "kind": "acdc", "root": str(tmp_path / "acdc")},
            ],
        }
    )
    assert source.train_domains == ("gtav",)
    assert source.target_domains == ("citys", "bdd", "map", "acdc-fog", "acdc")
    assert len(source.split("train", "gtav")) == 3 and len(source.split("val", "gtav")) == 2
    assert not set(source.pairs("train", "gtav")) & set(source.pairs("val", "gtav"))
    assert [len(source.split("val", name)) for name in source.target_domains] == [2, 2, 2, 1, 4]


def test_cityscapes_label_ids_fallback(tmp_path: Path) -> None:
    make_cityscapes(tmp_path / "city", train_ids=False)
    source = build_urban({"train": [{"name": "citys", "kind": "cityscapes", "root": str(tmp_path / "city")}]})
    sample = source.split("val", "citys")[0]
    assert set(sample["label"].unique().tolist()) == {13}  # label id 26 (car) -> train id 13


def test_train_items_are_cropped_and_val_items_resized(tmp_path: Path) -> None:
    make_cityscapes(tmp_path / "city", train_ids=True)
    source = build_urban(
        {
            "train": [{"name": "citys", "kind": "cityscapes", "root": str(tmp_path / "city")}],
            "crop_size": [32, 48],
            "short_edge_range": [30, 50],
            "max_long_edge": 200,
            "eval_size": [30, 20],
        }
    )
    train_item = source.split("train", "citys")[1]
    assert train_item["image"].shape == (3, 32, 48) and train_item["label"].shape == (32, 48)
    assert set(train_item["label"].unique().tolist()) <= {0, 10, 13, 255}
    val_item = source.split("val", "citys")[0]
    assert val_item["image"].shape == (3, 20, 30) and val_item["label"].shape == (20, 30)


def test_fit_size_keeps_the_ratio() -> None:
    assert fit_size(1024, 2048, 1024, 512) == (512, 1024)  # Cityscapes -> 1024x512
    assert fit_size(720, 1280, 1024, 512) == (512, 910)  # BDD: the short side binds


def _balanced_share(cat_max_ratio: float, crops: int = 200) -> float:
    """Share of ``crops`` random 20x16 crops in which no class covers 75% or more of the pixels.

    Only the right quarter of the 20x40 label holds a second class, so 6 of the 25 crop positions (left edge
    19..24) are balanced: one draw is balanced 24% of the time, and up to 10 draws (mmseg's retries while one
    class covers more than ``cat_max_ratio``) 1 - 0.76**10 = 94% of the time.
    """
    label = np.zeros((20, 40), dtype=np.uint8)
    label[:, 30:] = 5
    image = np.zeros((20, 40, 3), dtype=np.uint8)
    rng = np.random.default_rng(0)
    balanced = 0
    for _ in range(crops):
        _, crop = random_crop(image, label, (20, 16), cat_max_ratio, rng)
        _, counts = np.unique(crop, return_counts=True)
        balanced += int(counts.max() / counts.sum() < 0.75)
    return balanced / crops


def test_random_crop_retries_crops_dominated_by_one_class() -> None:
    """cat_max_ratio makes balanced crops common: a crop function that drew once would score ~0.24, not ~0.94."""
    assert _balanced_share(1.0) < 0.4  # no retries: the fixture really is dominated by one class
    assert _balanced_share(0.75) > 0.85


def test_random_crop_pads_smaller_images_with_ignore() -> None:
    label = np.zeros((20, 40), dtype=np.uint8)
    image = np.zeros((20, 40, 3), dtype=np.uint8)
    _, padded = random_crop(image[:10, :10], label[:10, :10], (16, 16), 1.0, np.random.default_rng(0))
    assert padded.shape == (16, 16) and (padded == 255).sum() == 16 * 16 - 100


def test_missing_folder_says_what_is_expected(tmp_path: Path) -> None:
    source = build_urban({"train": [{"name": "citys", "kind": "cityscapes", "root": str(tmp_path / "nowhere")}]})
    with pytest.raises(UserError, match=r"leftImg8bit/train/<city>/\*_leftImg8bit.png"):
        source.split("train", "citys")


def test_unpaired_and_corrupt_files_are_named(tmp_path: Path) -> None:
    make_gtav(tmp_path / "gtav", count=2)
    (tmp_path / "gtav" / "labels" / "00001.png").unlink()
    source = build_urban({"train": [{"name": "gtav", "kind": "gtav", "root": str(tmp_path / "gtav")}]})
    with pytest.raises(UserError, match="00001.png.*has no label file"):
        source.split("train", "gtav")
    make_gtav(tmp_path / "gtav2", count=1)
    (tmp_path / "gtav2" / "images" / "00000.png").write_bytes(b"not a png")
    source = build_urban({"train": [{"name": "gtav", "kind": "gtav", "root": str(tmp_path / "gtav2")}]})
    with pytest.raises(UserError, match="00000.png.*corrupt"):
        source.split("val", "gtav")[0]


def test_duplicate_domain_names_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unique.*citys"):
        build_urban(
            {
                "train": [{"name": "citys", "kind": "cityscapes", "root": str(tmp_path)}],
                "test": [{"name": "citys", "kind": "bdd100k", "root": str(tmp_path)}],
            }
        )


def test_trains_end_to_end_through_the_cli(tmp_path: Path) -> None:
    """A recipe on fabricated GTAV -> Cityscapes folders trains and reports both domains."""
    from click.testing import CliRunner

    from vltk.cli import cli

    make_gtav(tmp_path / "gtav", count=4)
    make_cityscapes(tmp_path / "city", train_ids=True)
    recipe = {
        "backbone": {"name": "eva02", "variant": "tiny"},
        "adapter": "frozen",
        "decoder": "fpn",
        "dataset": {
            "name": "urban",
            "train": [{"name": "gtav", "kind": "gtav", "root": str(tmp_path / "gtav")}],
            "test": [{"name": "citys", "kind": "cityscapes", "root": str(tmp_path / "city")}],
            "crop_size": 32,
            "short_edge_range": [32, 48],
            "eval_size": [64, 32],
        },
        "train": {"iters": 2, "batch_size": 2, "checkpoint_interval": 1},
        "eval": {"batch_size": 1},
        "device": "cpu",
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(cli, ["train", "--recipe", str(path), f"output={tmp_path / 'run'}"])
    assert result.exit_code == 0, result.output
    assert "citys" in result.output and (tmp_path / "run" / "metrics.json").is_file()
