"""The datasets the papers use, on tiny fabricated copies of their real layouts: Synthia (raw 16-bit labels, 16- and
19-class protocols), Mapillary Vistas with raw v1.2 labels, ADE20K (reduce_zero_label) and GTAV's capped val split.

Expected train ids are written out by hand from the tables the papers use (Synthia README / DAFormer, Rein's
Mapillary name rules, mmseg's reduce_zero_label), not computed from the code under test.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from vltk.errors import UserError
from vltk_plugins.datasets.ade20k.dataset import build_ade20k
from vltk_plugins.datasets.urban.dataset import build_urban


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def make_gtav(root: Path, count: int) -> None:
    for index in range(count):
        _write(root / "images" / f"{index:05d}.png", _image(12, 16, seed=index))
        _write(root / "labels" / f"{index:05d}.png", np.full((12, 16), 7, dtype=np.uint8))


def make_cityscapes_val(root: Path, label_id: int) -> None:
    """One Cityscapes val image whose raw label (``*_gtFine_labelIds.png``) is ``label_id`` everywhere."""
    stem = "aachen_000000_000019"
    _write(root / "leftImg8bit" / "val" / "aachen" / f"{stem}_leftImg8bit.png", _image(20, 24))
    _write(root / "gtFine" / "val" / "aachen" / f"{stem}_gtFine_labelIds.png", np.full((20, 24), label_id, np.uint8))


def write_png16(path: Path, channels: np.ndarray) -> None:
    """A 16-bit RGB PNG (as Synthia ships its labels), which Pillow cannot write: signature, IHDR, IDAT, IEND."""
    height, width, _ = channels.shape
    rows = b"".join(b"\x00" + channels[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )


#: Synthia class id -> expected Cityscapes train id, by hand from the dataset's README class list.
SYNTHIA_CASES = {3: 0, 4: 1, 2: 2, 21: 3, 1: 10, 10: 11, 8: 13, 19: 15, 11: 18, 0: 255, 13: 255, 22: 255}


def make_synthia(root: Path, count: int = 4) -> None:
    ids = np.array(list(SYNTHIA_CASES), dtype=np.uint16)
    for index in range(count):
        _write(root / "RGB" / f"{index:07d}.png", _image(20, 24, seed=index))
        channels = np.zeros((20, 24, 3), dtype=np.uint16)
        channels[..., 0] = np.resize(ids, (20, 24))  # class id in the first channel
        channels[..., 1] = 300 + index  # instance ids above 255: must not leak into the class
        write_png16(root / "GT" / "LABELS" / f"{index:07d}.png", channels)
    # DAFormer's converted copies lie beside the raw labels and must be skipped
    _write(root / "GT" / "LABELS" / "0000000_labelTrainIds.png", np.zeros((20, 24), dtype=np.uint8))


def test_synthia_raw_labels_map_to_train_ids(tmp_path: Path) -> None:
    make_synthia(tmp_path / "syn")
    domain = {"name": "syn", "kind": "synthia", "root": str(tmp_path / "syn"), "holdout": 1}
    source = build_urban({"train": [domain], "eval_size": [24, 20]})
    assert len(source.split("train", "syn")) == 3 and len(source.split("val", "syn")) == 1
    assert source.pairs("val", "syn")[0].image.name == "0000003.png"  # the held-out tail
    label = source.split("val", "syn")[0]["label"].numpy()
    assert (label == np.resize(np.array(list(SYNTHIA_CASES.values())), (20, 24))).all()


def test_folder_kind_reads_raw_synthia_labels(tmp_path: Path) -> None:
    make_synthia(tmp_path / "syn", count=1)
    folder = {"name": "f", "kind": "folder", "root": str(tmp_path / "syn"), "images": "RGB", "labels": "GT/LABELS"}
    source = build_urban({"train": [{**folder, "label_ids": "synthia"}], "eval_size": [24, 20]})
    label = source.split("val", "f")[0]["label"].numpy()
    assert (label == np.resize(np.array(list(SYNTHIA_CASES.values())), (20, 24))).all()


def test_synthia_16_class_protocol_drops_terrain_truck_train(tmp_path: Path) -> None:
    make_synthia(tmp_path / "syn", count=2)
    make_cityscapes_val(tmp_path / "city", 26)  # car label id (26 -> train id 13)
    options = {
        "train": [{"name": "syn", "kind": "synthia", "root": str(tmp_path / "syn")}],
        "test": [{"name": "citys", "kind": "cityscapes", "root": str(tmp_path / "city")}],
        "protocol": 16,
        "eval_size": [24, 20],
    }
    source = build_urban(options)
    assert len(source.classes) == 16 and {"terrain", "truck", "train"}.isdisjoint(source.classes)
    assert source.classes[9] == "sky" and source.classes[12] == "car" and len(source.palette) == 16
    synthia = source.split("val", "syn")[0]["label"].numpy()
    # 19-class train ids 0,1,2,3,10,11,13,15,18 -> 16-class 0,1,2,3,9,10,12,13,15 (each id after 9/14/16 shifts)
    sixteen = {0: 0, 1: 1, 2: 2, 3: 3, 10: 9, 11: 10, 13: 12, 15: 13, 18: 15, 255: 255}
    expected = np.resize(np.array([sixteen[v] for v in SYNTHIA_CASES.values()]), (20, 24))
    assert (synthia == expected).all()
    assert set(source.split("val", "citys")[0]["label"].unique().tolist()) == {12}  # car is class 12 of 16
    make_cityscapes_val(tmp_path / "city", 27)  # Cityscapes truck label id: not a class of the protocol
    assert set(build_urban(options).split("val", "citys")[0]["label"].unique().tolist()) == {255}
    assert len(build_urban({**options, "protocol": 19}).classes) == 19


def test_synthia_missing_folder_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "syn" / "RGB").mkdir(parents=True)
    source = build_urban({"train": [{"name": "syn", "kind": "synthia", "root": str(tmp_path / "syn")}]})
    with pytest.raises(UserError, match=r"GT.LABELS.*does not exist: expected RGB/\*.png and GT/LABELS/\*.png"):
        source.split("train", "syn")


#: Mapillary v1.2 class index -> expected train id, by hand from the 66 names and Rein's rules.
MAPILLARY_CASES = {
    13: 0,  # road
    24: 0,  # lane marking - general -> road
    2: 1,  # curb -> sidewalk
    15: 1,  # sidewalk
    17: 2,  # building
    45: 5,  # pole
    47: 5,  # utility pole -> pole
    50: 7,  # traffic sign (front)
    30: 8,  # vegetation
    27: 10,  # sky
    20: 12,  # bicyclist -> rider
    55: 13,  # car
    58: 16,  # on rails -> train
    52: 18,  # bicycle
    0: 255,  # bird
    51: 255,  # trash can
    64: 255,  # ego vehicle
    65: 255,  # unlabeled
}


def _mapillary_label(height: int, width: int) -> Image.Image:
    ids = np.resize(np.array(list(MAPILLARY_CASES), dtype=np.uint8), (height, width))
    label = Image.fromarray(ids, mode="L").convert("P")
    label.putpalette([value for index in range(256) for value in (index, 255 - index, 7)])
    label.frombytes(ids.tobytes())  # keep the indices exactly (convert() may reorder the palette)
    return label


def make_mapillary_raw(root: Path, nested: bool) -> None:
    for split in ("training", "validation"):
        for index in range(2):
            _write(root / split / "images" / f"m{index}.jpg", _image(18, 24, seed=index))
            path = root / split / ("v1.2/labels" if nested else "labels") / f"m{index}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            _mapillary_label(18, 24).save(path)


@pytest.mark.parametrize("nested", [True, False], ids=["v1.2-labels", "labels"])
def test_mapillary_raw_labels_map_to_the_19_classes(tmp_path: Path, nested: bool) -> None:
    make_mapillary_raw(tmp_path / "map", nested)
    domain = {"name": "map", "kind": "mapillary", "root": str(tmp_path / "map")}
    source = build_urban({"train": [domain], "eval_size": [24, 18]})
    assert len(source.split("train", "map")) == 2 and len(source.split("val", "map")) == 2
    label = source.split("val", "map")[1]["label"].numpy()
    assert (label == np.resize(np.array(list(MAPILLARY_CASES.values())), (18, 24))).all()
    forced = build_urban({"train": [{**domain, "mapillary_labels": "trainid"}], "eval_size": [24, 18]})
    with pytest.raises(UserError, match="labels_trainid"):  # no converted labels here
        forced.split("val", "map")


def test_mapillary_prefers_converted_labels_and_detects_a_named_raw_folder(tmp_path: Path) -> None:
    make_mapillary_raw(tmp_path / "map", nested=False)
    converted = np.full((18, 24), 13, dtype=np.uint8)
    for index in range(2):
        _write(tmp_path / "map" / "validation" / "labels_trainid" / f"m{index}.png", converted)
    domain = {"name": "map", "kind": "mapillary", "root": str(tmp_path / "map")}
    auto = build_urban({"train": [domain], "eval_size": [24, 18]})
    assert set(auto.split("val", "map")[0]["label"].unique().tolist()) == {13}
    raw = build_urban({"train": [{**domain, "mapillary_labels": "raw"}], "eval_size": [24, 18]})
    assert set(raw.split("val", "map")[0]["label"].unique().tolist()) == set(MAPILLARY_CASES.values())
    named = build_urban({"train": [{**domain, "mapillary_label_folder": "labels"}], "eval_size": [24, 18]})
    assert set(named.split("val", "map")[0]["label"].unique().tolist()) == set(MAPILLARY_CASES.values())


def test_gtav_val_is_capped_and_evenly_spaced_by_default(tmp_path: Path) -> None:
    make_gtav(tmp_path / "gtav", count=7)
    domain = {"name": "gtav", "kind": "gtav", "root": str(tmp_path / "gtav")}
    capped = build_urban({"train": [{**domain, "max_val_images": 3}]})
    assert [pair.image.name for pair in capped.pairs("val", "gtav")] == ["00000.png", "00003.png", "00006.png"]
    assert len(capped.split("train", "gtav")) == 7  # training keeps every image
    default = build_urban({"train": [domain], "test": [{**domain, "name": "g2", "kind": "folder"}]})
    assert default.options.train[0].max_val_images == 500 and default.options.test[0].max_val_images is None


def make_ade20k(root: Path, train: int = 3, val: int = 2) -> None:
    for split, count in (("training", train), ("validation", val)):
        for index in range(count):
            stem = f"ADE_{split[:5]}_{index:08d}"
            _write(root / "images" / split / f"{stem}.jpg", _image(40, 48, seed=index))
            label = np.zeros((40, 48), dtype=np.uint8)  # 0 = "other": ignored
            label[10:20] = 1  # wall -> class 0
            label[20:30] = 150  # flag -> class 149
            label[30:] = 21  # car -> class 20
            label[39, 47] = 151  # no ADE20K class: ignored
            _write(root / "annotations" / split / f"{stem}.png", label)


def test_ade20k_counts_reduce_zero_label_and_crops(tmp_path: Path) -> None:
    make_ade20k(tmp_path / "ade")
    source = build_ade20k({"root": str(tmp_path / "ade"), "crop_size": 32, "scale": [96, 48]})
    assert len(source.classes) == 150 and source.classes[0] == "wall" and source.classes[149] == "flag"
    assert len(set(source.palette)) == 150 and (0, 0, 0) not in source.palette
    assert source.domains == ("ade20k",) and source.target_domains == ()
    assert len(source.split("train", "ade20k")) == 3 and len(source.split("val", "ade20k")) == 2
    val = source.split("val", "ade20k")[0]
    assert val["image"].shape == (3, 48, 58)  # 40x48 fit into (long 96, short 48): x1.2, the short side binds
    rows = val["label"][:, 0].tolist()
    assert rows[0] == 255 and rows[18] == 0 and rows[30] == 149 and rows[-1] == 20
    assert val["label"][-1, -1] == 255 and set(val["label"].unique().tolist()) == {0, 20, 149, 255}
    train = source.split("train", "ade20k")[1]
    assert train["image"].shape == (3, 32, 32) and set(train["label"].unique().tolist()) <= {0, 20, 149, 255}


def test_ade20k_missing_folder_and_label_are_one_error_each(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"annotations/training/\*.png"):
        build_ade20k({"root": str(tmp_path / "nowhere")}).split("train", "ade20k")
    make_ade20k(tmp_path / "ade", train=1)
    (tmp_path / "ade" / "annotations" / "validation" / "ADE_valid_00000001.png").unlink()
    with pytest.raises(UserError, match="ADE_valid_00000001.jpg' has no label"):
        build_ade20k({"root": str(tmp_path / "ade")}).split("val", "ade20k")


def test_ade20k_trains_through_the_cli(tmp_path: Path) -> None:
    """Two iterations of a tiny EVA02 + FPN on fabricated ADE20K, through a real ``vltk train`` process."""
    import os
    import subprocess
    import sys

    make_ade20k(tmp_path / "ade", train=2, val=1)
    recipe = {
        "backbone": {"name": "eva02", "variant": "tiny"},
        "adapter": "frozen",
        "decoder": "fpn",
        "dataset": {"name": "ade20k", "root": str(tmp_path / "ade"), "crop_size": 32, "scale": [64, 32]},
        "train": {"iters": 2, "batch_size": 2, "checkpoint_interval": 1},
        "eval": {"batch_size": 1},
        "device": "cpu",
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "vltk", "train", "--recipe", str(tmp_path / "recipe.yaml")]
    result = subprocess.run([*command, f"output={tmp_path / 'run'}"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    final = json.loads((tmp_path / "run" / "metrics.json").read_text())["final"]["domains"]
    assert list(final) == ["ade20k"] and final["ade20k"]["images"] == 1 and 0 <= final["ade20k"]["miou"] <= 100
    missing = subprocess.run(
        [*command, "dataset.root=" + str(tmp_path / "none"), f"output={tmp_path / 'run2'}"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert missing.returncode == 2 and "Error: ADE20K folder" in missing.stderr and "Traceback" not in missing.stderr
    assert not (tmp_path / "run2").exists()
