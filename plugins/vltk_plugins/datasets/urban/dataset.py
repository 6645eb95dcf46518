"""The ``urban`` dataset: GTAV, Cityscapes, BDD100K, Mapillary and ACDC read from local folders.

Every paper of the toolkit evaluates domain generalisation on these street-scene datasets with Cityscapes' 19
classes, so one reader with per-layout file discovery serves them all. Training items get the mmseg augmentation
the papers use (random short-edge resize, crop with ``cat_max_ratio``, flip, photometric distortion); val items
are resized to the evaluation size of the DG protocols (Cityscapes at 1024x512).

Nothing is downloaded: a missing folder or an empty layout is a :class:`~vltk.api.UserError` that says which
files were expected where.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from vltk.api import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    IGNORE_INDEX,
    BuildContext,
    DenseDataSource,
    DenseSample,
    UserError,
    coerce_options,
)
from vltk_plugins.datasets.urban.options import UrbanDomain, UrbanOptions

#: Cityscapes label id -> train id (the official table; everything else is ignored). GTAV labels use label ids.
CITYSCAPES_ID_TO_TRAIN_ID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip

_ID_LUT = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _label_id, _train_id in CITYSCAPES_ID_TO_TRAIN_ID.items():
    _ID_LUT[_label_id] = _train_id

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Pair:
    """One image and its label file; ``label_ids`` says how the label is encoded."""

    image: Path
    label: Path
    label_ids: str = "train"


# ------------------------------------------------------------------------------------------------ file discovery


def _require_dir(path: Path, domain: UrbanDomain, what: str) -> Path:
    if not path.is_dir():
        raise UserError(
            f"dataset folder '{path}' for domain '{domain.name}' ({domain.kind}) does not exist: expected {what}; "
            f"check dataset.*.root (now '{domain.root}')"
        )
    return path


def _by_stem(files: list[Path], suffix: str) -> dict[str, Path]:
    return {path.name[: -len(suffix)] if suffix and path.name.endswith(suffix) else path.stem: path for path in files}


def _match(
    images: list[Path], labels: list[Path], image_suffix: str, label_suffix: str, domain: UrbanDomain, where: str
) -> list[Pair]:
    """Pair files that share a key after removing the layout's suffixes; an image without a label is an error."""
    label_map = _by_stem(labels, label_suffix)
    pairs = []
    for image in sorted(images):
        key = image.name[: -len(image_suffix)] if image_suffix and image.name.endswith(image_suffix) else image.stem
        label = label_map.get(key)
        if label is None:
            raise UserError(
                f"image '{image}' of domain '{domain.name}' has no label file "
                f"(looked for '{key}{label_suffix or '.png'}' in {where})"
            )
        pairs.append(Pair(image, label, "cityscapes" if domain.kind == "gtav" else domain.label_ids))
    if not pairs:
        raise UserError(f"no images found for domain '{domain.name}' ({domain.kind}) under '{domain.root}'")
    return pairs


def _images_in(folder: Path, recursive: bool = False) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    return [path for path in folder.glob(pattern) if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()]


def _holdout(pairs: list[Pair], split: str, holdout: int) -> list[Pair]:
    if holdout == 0:
        return pairs
    if holdout >= len(pairs):
        raise UserError(f"holdout={holdout} leaves no training images ({len(pairs)} files)")
    return pairs[-holdout:] if split == "val" else pairs[:-holdout]


def _gtav(domain: UrbanDomain, split: str) -> list[Pair]:
    root = Path(domain.root)
    images = _require_dir(root / "images", domain, "images/*.png and labels/*.png")
    labels = _require_dir(root / "labels", domain, "images/*.png and labels/*.png")
    pairs = _match(_images_in(images), _images_in(labels), "", "", domain, str(labels))
    return _holdout(pairs, split, domain.holdout)


def _cityscapes(domain: UrbanDomain, split: str) -> list[Pair]:
    root = Path(domain.root)
    images = _require_dir(root / "leftImg8bit" / split, domain, f"leftImg8bit/{split}/<city>/*_leftImg8bit.png")
    labels = _require_dir(root / "gtFine" / split, domain, f"gtFine/{split}/<city>/*_gtFine_labelTrainIds.png")
    label_files = list(labels.glob("*/*_gtFine_labelTrainIds.png"))
    suffix, encoding = "_gtFine_labelTrainIds.png", "train"
    if not label_files:  # raw download: map the label ids ourselves
        label_files, suffix, encoding = (
            list(labels.glob("*/*_gtFine_labelIds.png")),
            "_gtFine_labelIds.png",
            "cityscapes",
        )
    pairs = _match(
        list(images.glob("*/*_leftImg8bit.png")), label_files, "_leftImg8bit.png", suffix, domain, str(labels)
    )
    return [Pair(pair.image, pair.label, encoding) for pair in pairs]


def _bdd100k(domain: UrbanDomain, split: str) -> list[Pair]:
    root = Path(domain.root)
    images = _require_dir(root / "images" / "10k" / split, domain, f"images/10k/{split}/*.jpg")
    labels = _require_dir(root / "labels" / "sem_seg" / "masks" / split, domain, f"labels/sem_seg/masks/{split}/*.png")
    return _match(_images_in(images), _images_in(labels), "", "", domain, str(labels))


def _mapillary(domain: UrbanDomain, split: str) -> list[Pair]:
    folder = Path(domain.root) / ("training" if split == "train" else "validation")
    images = _require_dir(folder / "images", domain, f"{folder.name}/images/*.jpg")
    labels = _require_dir(
        folder / domain.mapillary_labels,
        domain,
        f"{folder.name}/{domain.mapillary_labels}/*.png in Cityscapes train ids (convert Mapillary's labels first)",
    )
    return _match(_images_in(images), _images_in(labels), "", "", domain, str(labels))


def _acdc(domain: UrbanDomain, split: str) -> list[Pair]:
    root = Path(domain.root)
    conditions = [domain.condition] if domain.condition else ["fog", "night", "rain", "snow"]
    pairs: list[Pair] = []
    for condition in conditions:
        images = _require_dir(root / "rgb_anon" / condition / split, domain, f"rgb_anon/{condition}/{split}/<seq>/")
        labels = _require_dir(root / "gt" / condition / split, domain, f"gt/{condition}/{split}/<seq>/")
        pairs += _match(
            list(images.glob("*/*_rgb_anon.png")),
            list(labels.glob("*/*_gt_labelTrainIds.png")),
            "_rgb_anon.png",
            "_gt_labelTrainIds.png",
            domain,
            str(labels),
        )
    return pairs


def _folder(domain: UrbanDomain, split: str) -> list[Pair]:
    root = Path(domain.root)
    images = _require_dir(root / domain.images, domain, f"{domain.images}/ with images")
    labels = _require_dir(root / domain.labels, domain, f"{domain.labels}/ with label PNGs named like the images")
    pairs = _match(_images_in(images, True), _images_in(labels, True), "", "", domain, str(labels))
    return _holdout(pairs, split, domain.holdout)


#: kind -> function listing the (image, label) pairs of a split.
LAYOUTS: dict[str, Callable[[UrbanDomain, str], list[Pair]]] = {
    "gtav": _gtav,
    "cityscapes": _cityscapes,
    "bdd100k": _bdd100k,
    "mapillary": _mapillary,
    "acdc": _acdc,
    "folder": _folder,
}


# ------------------------------------------------------------------------------------------------ image ops


def read_pair(pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    """``(image uint8 [H,W,3], label uint8 [H,W] in train ids)``; unreadable files name themselves."""
    image = label = None
    try:
        with Image.open(pair.image) as handle:
            image = np.asarray(handle.convert("RGB"))
        with Image.open(pair.label) as handle:
            label = np.asarray(handle)
    except Image.DecompressionBombError as error:  # a header claiming e.g. 40000x40000 pixels
        path = pair.image if image is None else pair.label
        raise UserError(
            f"image '{path}' claims more pixels than PIL decodes safely ({error}); replace the file or resize it"
        ) from None
    except (OSError, UnidentifiedImageError) as error:
        raise UserError(
            f"cannot read '{error.filename or pair.image}': {error}; the file is corrupt or not an image"
        ) from None
    if label.ndim != 2:
        raise UserError(f"label '{pair.label}' has shape {label.shape}: expected a single-channel class-index PNG")
    if label.shape != image.shape[:2]:
        raise UserError(
            f"label '{pair.label}' is {label.shape[1]}x{label.shape[0]} but image '{pair.image}' is "
            f"{image.shape[1]}x{image.shape[0]}"
        )
    label = label.astype(np.uint8) if label.max(initial=0) < 256 else np.minimum(label, 255).astype(np.uint8)
    if pair.label_ids == "cityscapes":
        label = _ID_LUT[label]  # every id outside the 34 Cityscapes label ids becomes ignore
    else:
        check_train_ids(label, pair.label)
    return image, label


def check_train_ids(label: np.ndarray, path: Path) -> None:
    """Train-id labels hold 0..18 and 255 (ignore) only; anything else would fail inside the loss (``Target 26 is
    out of bounds``) without naming the file, or, worse, count as a wrong class in evaluation."""
    invalid = (label >= len(CITYSCAPES_CLASSES)) & (label != IGNORE_INDEX)
    if invalid.any():
        found = sorted({int(value) for value in np.unique(label[invalid])})
        shown = ", ".join(map(str, found[:6])) + (", ..." if len(found) > 6 else "")
        last = len(CITYSCAPES_CLASSES) - 1
        raise UserError(
            f"label '{path}' holds class id(s) {shown}, outside the Cityscapes train ids 0..{last}"
            f" (and {IGNORE_INDEX} = ignore); convert the labels to train ids, or set label_ids: cityscapes for "
            "the 34 Cityscapes label ids"
        )


def resize_pair(image: np.ndarray, label: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize to ``(height, width)``: bilinear for the image, nearest for the label (class ids stay valid)."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image, label
    image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    label = np.asarray(Image.fromarray(label).resize((width, height), Image.NEAREST))
    return image, label


def fit_size(height: int, width: int, long_edge: int, short_edge: int) -> tuple[int, int]:
    """mmseg ``keep_ratio`` rescale: the largest size with long side <= long_edge and short side <= short_edge."""
    scale = min(long_edge / max(height, width), short_edge / min(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def random_crop(
    image: np.ndarray, label: np.ndarray, crop: tuple[int, int], cat_max_ratio: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Crop ``crop`` (padding with 0 / ignore when the image is smaller), retrying up to 10 times while one class
    covers more than ``cat_max_ratio`` of the labelled pixels (mmseg's RandomCrop), so crops are not all road."""
    crop_h, crop_w = crop
    pad_h, pad_w = max(0, crop_h - image.shape[0]), max(0, crop_w - image.shape[1])
    if pad_h or pad_w:
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)))
        label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=IGNORE_INDEX)
    height, width = label.shape
    for _ in range(10):
        top = int(rng.integers(0, height - crop_h + 1))
        left = int(rng.integers(0, width - crop_w + 1))
        window = label[top : top + crop_h, left : left + crop_w]
        _, counts = np.unique(window[window != IGNORE_INDEX], return_counts=True)
        if cat_max_ratio >= 1 or (len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio):
            break
    return image[top : top + crop_h, left : left + crop_w], label[top : top + crop_h, left : left + crop_w]


def photometric_distortion(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """mmseg PhotoMetricDistortion: brightness ±32, contrast and saturation ×[0.5, 1.5], hue ±18°, each p = 0.5."""
    out = image.astype(np.float32)
    if rng.random() < 0.5:
        out += rng.uniform(-32, 32)
    if rng.random() < 0.5:
        out *= rng.uniform(0.5, 1.5)
    out = np.clip(out, 0, 255)
    saturation = rng.uniform(0.5, 1.5) if rng.random() < 0.5 else None
    hue = rng.uniform(-18, 18) * 256 / 360 if rng.random() < 0.5 else None
    if saturation is not None or hue is not None:
        hsv = np.asarray(Image.fromarray(out.astype(np.uint8)).convert("HSV")).astype(np.float32)
        if saturation is not None:
            hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 255)
        if hue is not None:
            hsv[..., 0] = (hsv[..., 0] + hue) % 256
        out = np.asarray(Image.fromarray(hsv.astype(np.uint8), mode="HSV").convert("RGB")).astype(np.float32)
    return out.astype(np.uint8)


# ------------------------------------------------------------------------------------------------ datasets


class UrbanSplit(Dataset):
    """The pairs of one split of one domain, with training augmentation or evaluation resizing."""

    def __init__(self, pairs: list[Pair], domain: str, options: UrbanOptions, train: bool) -> None:
        self.pairs = pairs
        self.domain = domain
        self.options = options
        self.train = train
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Augmentation draws from ``(epoch, index)``, so resumed runs replay the same crops."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> DenseSample:
        image, label = read_pair(self.pairs[index])
        if self.train:
            image, label = self._augment(image, label, np.random.default_rng([self.epoch, index, 11]))
        else:
            long_edge, short_edge = self.options.eval_size
            image, label = resize_pair(image, label, fit_size(*label.shape, long_edge, short_edge))
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "label": torch.from_numpy(label.astype(np.int64)),
            "domain": self.domain,
            "index": index,
        }

    def _augment(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        options = self.options
        short = int(rng.integers(options.short_edge_range[0], options.short_edge_range[1] + 1))
        image, label = resize_pair(image, label, fit_size(*label.shape, options.max_long_edge, short))
        image, label = random_crop(image, label, options.crop, options.cat_max_ratio, rng)
        if options.flip and rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        if options.photometric:
            image = photometric_distortion(np.ascontiguousarray(image), rng)
        return image, label


class UrbanScenes(DenseDataSource):
    """Source domains under ``train``, targets under ``test``; files are listed lazily, once per split."""

    classes = CITYSCAPES_CLASSES
    palette = CITYSCAPES_PALETTE
    ignore_index = IGNORE_INDEX

    def __init__(self, options: UrbanOptions) -> None:
        self.options = options
        self._domains = {domain.name: domain for domain in [*options.train, *options.test]}
        self.domains = tuple(self._domains)
        self.train_domains = tuple(domain.name for domain in options.train)
        self._pairs: dict[tuple[str, str], list[Pair]] = {}

    def pairs(self, split: str, domain: str) -> list[Pair]:
        self.check_split(split, domain)
        key = (split, domain)
        if key not in self._pairs:
            spec = self._domains[domain]
            pairs = LAYOUTS[spec.kind](spec, split)
            if split == "val" and self.options.max_val_images is not None:
                pairs = pairs[: self.options.max_val_images]
            self._pairs[key] = pairs
        return self._pairs[key]

    def split(self, split: str, domain: str) -> UrbanSplit:
        return UrbanSplit(self.pairs(split, domain), domain, self.options, train=split == "train")

    def __repr__(self) -> str:
        return f"UrbanScenes(train={list(self.train_domains)}, test={list(self.target_domains)})"


def build_urban(options: UrbanOptions | dict[str, Any] | None, context: BuildContext | None = None) -> UrbanScenes:
    """Factory registered as dataset ``urban``; Python callers may pass the options as a plain mapping."""
    if options is None:
        raise UserError("the urban dataset needs at least one train domain: dataset.train=[{name, kind, root}]")
    return UrbanScenes(coerce_options(options, UrbanOptions, "urban"))


__all__ = [
    "CITYSCAPES_ID_TO_TRAIN_ID",
    "LAYOUTS",
    "Pair",
    "UrbanScenes",
    "UrbanSplit",
    "build_urban",
    "fit_size",
    "photometric_distortion",
    "random_crop",
    "read_pair",
    "resize_pair",
]
