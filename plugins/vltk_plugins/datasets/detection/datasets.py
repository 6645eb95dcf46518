"""Detection datasets: the :class:`DetectionDataSource` contract, ``synthetic-det`` boxes and the DWD reader.

A detection source is the detection twin of :class:`vltk.data.base.DenseDataSource`: class names, the domains
evaluated and the ones trained on, and ``split(split, domain)`` giving a ``Dataset`` of
:class:`DetectionSample` dicts. ``task = "detection"`` lets the pipeline refuse a segmentation dataset in a
detection run (and the reverse) with a clear message instead of a ``KeyError`` deep in a collate function.

Boxes are continuous ``(x1, y1, x2, y2)`` pixel coordinates in the returned image, labels are 0-based indices into
``classes`` (the detector adds the background class itself), ``difficult`` marks boxes that are neither trained
on nor counted by the VOC evaluator.

``synthetic-det`` — where the boxes come from: the synthetic renderer paints every object as an *instance*
(its layout packs the instance id into a per-pixel code, with a class per instance), so a box is the extent of
the **visible** pixels of one instance — exact, occlusion-aware, and identical in all six domains because the
layout is shared. No connected-component guessing is needed. The renderer's layout and per-domain painters are
private functions of :mod:`vltk_plugins.datasets.synthetic.renderer`; this module calls them with the same seeds as
:func:`~vltk_plugins.datasets.synthetic.renderer.render_scene`, so an image here is pixel-identical to the
segmentation dataset's.

``dwd`` — the Diverse Weather Dataset (Single-DGOD, Wu & Deng CVPR 2022) as CLIP the Gap uses it: VOC XML
annotations, 7 classes, one folder per weather domain. Images are resized as detectron2 does (shortest side
``min_size``, longest at most ``max_size``); boxes follow, so the IoU-based metrics are unchanged. VOC's 1-based
inclusive pixel boxes become continuous ones with ``x1 = xmin - 1, x2 = xmax`` (detectron2's reading; the original
loader instead rewrites the XML files in place, which vltk never does).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from vltk.api import DetectionDataSource, DetectionSample, UserError, collate_detection, did_you_mean
from vltk_plugins.datasets.detection.options import DWD_CLASSES, DWDOptions, SyntheticDetectionOptions
from vltk_plugins.datasets.synthetic.options import SYNTHETIC_DOMAINS, VAL_INDEX_OFFSET
from vltk_plugins.datasets.synthetic.renderer import _RENDERERS, CITYSCAPES_CLASSES, _layout


def flip_boxes(boxes: Tensor, width: int) -> Tensor:
    """Mirror xyxy boxes in an image of ``width`` pixels."""
    flipped = boxes.clone()
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return flipped


# --------------------------------------------------------------------------------------------------------------
# synthetic-det
# --------------------------------------------------------------------------------------------------------------


def instance_boxes(
    instance_map: np.ndarray, instance_class: np.ndarray, class_ids: Sequence[int], min_pixels: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of the visible pixels of every instance whose class is in ``class_ids``.

    ``instance_map`` ``[H, W]`` holds instance ids, ``instance_class[id]`` their class. Returns
    ``(boxes float32 [N, 4] continuous xyxy, classes int64 [N])``, ordered by instance id.
    """
    wanted = np.isin(instance_class[instance_map], np.asarray(class_ids))
    ys, xs = np.nonzero(wanted)
    if len(ys) == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    ids = instance_map[ys, xs]
    order = np.argsort(ids, kind="stable")
    ids, ys, xs = ids[order], ys[order], xs[order]
    starts = np.concatenate(([0], np.nonzero(np.diff(ids))[0] + 1))
    counts = np.diff(np.concatenate((starts, [len(ids)])))
    boxes = np.stack(
        [
            np.minimum.reduceat(xs, starts),
            np.minimum.reduceat(ys, starts),
            np.maximum.reduceat(xs, starts) + 1,
            np.maximum.reduceat(ys, starts) + 1,
        ],
        axis=1,
    ).astype(np.float32)
    keep = counts >= min_pixels
    return boxes[keep], instance_class[ids[starts]][keep].astype(np.int64)


def render_detection_scene(
    seed: int, index: int, size: tuple[int, int], domain: str, classes: Sequence[str], min_pixels: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image uint8 [3, H, W], boxes [N, 4], labels [N])`` of scene ``index`` in ``domain``.

    The image equals ``render_scene(seed, index, size, domain)[0]`` (same layout, same appearance seed);
    labels index ``classes`` (Cityscapes names).
    """
    if domain not in _RENDERERS:
        raise UserError(
            f"unknown synthetic domain '{domain}';{did_you_mean(domain, SYNTHETIC_DOMAINS)} "
            f"domains: {', '.join(SYNTHETIC_DOMAINS)}"
        )
    layout = _layout(seed, index, size)
    rng = np.random.default_rng([seed, index, 1 + SYNTHETIC_DOMAINS.index(domain)])
    image = _RENDERERS[domain](layout, rng).transpose(2, 0, 1)  # the painters return an HWC view of a CHW buffer
    city_ids = [CITYSCAPES_CLASSES.index(name) for name in classes]
    boxes, city_classes = instance_boxes(layout.code >> 7, layout.inst_class, city_ids, min_pixels)
    lookup = {city: label for label, city in enumerate(city_ids)}
    labels = np.array([lookup[int(c)] for c in city_classes], dtype=np.int64)
    return np.ascontiguousarray(image), boxes, labels


class SyntheticDetectionSplit(Dataset):
    """``length`` scenes from layout index ``offset``; training splits flip left-right with a per-epoch coin."""

    def __init__(
        self, options: SyntheticDetectionOptions, *, offset: int, length: int, domain: str, flip: bool = False
    ) -> None:
        self.options = options
        self.offset, self.length, self.domain, self.flip = offset, length, domain, flip
        self.size = options.image_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> DetectionSample:
        if not 0 <= int(i) < self.length:
            raise IndexError(f"index {i} out of range for a split of {self.length} scenes")
        seed = self.options.seed
        index = self.offset + int(i)
        image, boxes, labels = render_detection_scene(
            seed, index, self.size, self.domain, self.options.classes, self.options.min_pixels
        )
        image_t = torch.from_numpy(image)
        boxes_t = torch.from_numpy(boxes)
        if self.flip and np.random.default_rng([seed, index, self.epoch, 7]).random() < 0.5:
            image_t = image_t.flip(-1)
            boxes_t = flip_boxes(boxes_t, self.size[1])
        sides = torch.minimum(boxes_t[:, 2] - boxes_t[:, 0], boxes_t[:, 3] - boxes_t[:, 1])
        return {
            "image": image_t,
            "boxes": boxes_t,
            "labels": torch.from_numpy(labels),
            "difficult": sides < self.options.min_size,
            "domain": self.domain,
            "index": index,
        }


class SyntheticDetection(DetectionDataSource):
    """``synthetic-det``: instance boxes of the procedural street scenes in six appearance domains."""

    def __init__(self, options: SyntheticDetectionOptions | None = None) -> None:
        self.options = options or SyntheticDetectionOptions()
        self.classes = tuple(self.options.classes)
        self.domains = tuple(self.options.domains)
        self.train_domains = tuple(self.options.train_domains)

    def split(self, split: str, domain: str) -> SyntheticDetectionSplit:
        self.check_split(split, domain)
        if split == "train":
            return SyntheticDetectionSplit(
                self.options, offset=0, length=self.options.num_train, domain=domain, flip=True
            )
        return SyntheticDetectionSplit(
            self.options, offset=VAL_INDEX_OFFSET, length=self.options.num_val, domain=domain
        )

    def __repr__(self) -> str:
        return (
            f"SyntheticDetection(size={self.options.image_size}, classes={self.classes}, domains={self.domains}, "
            f"train_domains={self.train_domains})"
        )


def build_synthetic_detection(options: SyntheticDetectionOptions, context: Any = None) -> SyntheticDetection:
    """Factory registered as dataset ``synthetic-det``."""
    return SyntheticDetection(options)


# --------------------------------------------------------------------------------------------------------------
# dwd: VOC-style reader
# --------------------------------------------------------------------------------------------------------------

_EXPECTED_LAYOUT = "<root>/<domain>/VOC2007/{Annotations/<id>.xml, JPEGImages/<id>.jpg, ImageSets/Main/<list>.txt}"


def parse_voc_xml(path: str | Path, classes: Sequence[str]) -> dict[str, Any]:
    """Read one VOC annotation: ``{"boxes" [N, 4] continuous xyxy, "labels", "difficult", "size" (h, w) or None,
    "skipped" (names not in ``classes``)}``. Malformed files raise :class:`UserError` naming the file."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as error:
        raise UserError(f"cannot read VOC annotation '{path}': {error}") from None
    size = None
    size_node = root.find("size")
    if size_node is not None and size_node.findtext("width") and size_node.findtext("height"):
        size = (int(float(size_node.findtext("height"))), int(float(size_node.findtext("width"))))
    boxes, labels, difficult, skipped = [], [], [], []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in classes:
            skipped.append(name)
            continue
        box = obj.find("bndbox")
        try:
            xmin, ymin, xmax, ymax = (float(box.findtext(key)) for key in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            raise UserError(f"VOC annotation '{path}': object '{name}' has no valid bndbox") from None
        boxes.append([max(xmin - 1.0, 0.0), max(ymin - 1.0, 0.0), xmax, ymax])
        labels.append(classes.index(name))
        difficult.append(int(float(obj.findtext("difficult") or 0)) == 1)
    return {
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "labels": np.asarray(labels, np.int64),
        "difficult": np.asarray(difficult, bool),
        "size": size,
        "skipped": skipped,
    }


def resize_scale(height: int, width: int, min_size: int, max_size: int) -> float:
    """detectron2's ResizeShortestEdge: shortest side to ``min_size`` unless the longest would exceed ``max_size``."""
    scale = min_size / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return scale


class VOCDetectionSplit(Dataset):
    """The images of one VOC image list; annotations are parsed when an item is read (no cache files written)."""

    def __init__(
        self,
        folder: Path,
        ids: list[str],
        classes: Sequence[str],
        domain: str,
        *,
        min_size: int,
        max_size: int,
        flip: bool = False,
        seed: int = 0,
    ) -> None:
        self.folder, self.ids, self.classes, self.domain = folder, ids, tuple(classes), domain
        self.min_size, self.max_size, self.flip, self.seed = min_size, max_size, flip, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.ids)

    def _image_path(self, image_id: str) -> Path:
        for suffix in (".jpg", ".jpeg", ".png", ".JPG"):
            path = self.folder / "JPEGImages" / f"{image_id}{suffix}"
            if path.is_file():
                return path
        raise UserError(
            f"image '{image_id}' listed for {self.domain} is missing: expected {self.folder}/JPEGImages/{image_id}.jpg"
        )

    def __getitem__(self, i: int) -> DetectionSample:
        from PIL import Image, UnidentifiedImageError

        image_id = self.ids[int(i)]
        annotation = parse_voc_xml(self.folder / "Annotations" / f"{image_id}.xml", self.classes)
        path = self._image_path(image_id)
        try:
            with Image.open(path) as handle:
                image = torch.from_numpy(np.asarray(handle.convert("RGB")).copy()).permute(2, 0, 1)
        except (OSError, UnidentifiedImageError) as error:
            raise UserError(f"cannot decode image '{path}': {error}") from None
        height, width = image.shape[-2:]
        boxes = torch.from_numpy(annotation["boxes"])
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        scale = resize_scale(height, width, self.min_size, self.max_size)
        if scale != 1.0:
            new_size = (round(height * scale), round(width * scale))
            image = (
                F.interpolate(image[None].float(), size=new_size, mode="bilinear", align_corners=False, antialias=True)[
                    0
                ]
                .round_()
                .clamp_(0, 255)
                .to(torch.uint8)
            )
            boxes = boxes * torch.tensor([new_size[1] / width, new_size[0] / height] * 2)
        if self.flip and np.random.default_rng([self.seed, int(i), self.epoch, 7]).random() < 0.5:
            image = image.flip(-1)
            boxes = flip_boxes(boxes, image.shape[-1])
        return {
            "image": image.contiguous(),
            "boxes": boxes.float(),
            "labels": torch.from_numpy(annotation["labels"]),
            "difficult": torch.from_numpy(annotation["difficult"]),
            "domain": self.domain,
            "index": int(i),
        }


class DiverseWeather(DetectionDataSource):
    """``dwd``: the Diverse Weather Dataset from a local folder; checks the layout up front with clear errors."""

    classes = DWD_CLASSES

    def __init__(self, options: DWDOptions) -> None:
        self.options = options
        self.root = Path(options.root).expanduser()
        self.domains = tuple(options.domains)
        self.train_domains = tuple(options.train_domains)
        if not self.root.is_dir():
            raise UserError(
                f"DWD root '{self.root}' does not exist; dataset.root must be the Diverse Weather folder laid out "
                f"as {_EXPECTED_LAYOUT} with domains {', '.join(self.domains)}"
            )
        for domain in self.domains:
            folder = self.folder(domain)
            missing = [part for part in ("Annotations", "JPEGImages", "ImageSets/Main") if not (folder / part).is_dir()]
            if missing:
                raise UserError(
                    f"DWD domain '{domain}' is incomplete: {', '.join(str(folder / part) for part in missing)} "
                    f"missing; expected {_EXPECTED_LAYOUT}"
                )

    def folder(self, domain: str) -> Path:
        return self.root / domain / "VOC2007"

    def image_ids(self, domain: str, list_name: str) -> list[str]:
        path = self.folder(domain) / "ImageSets" / "Main" / f"{list_name}.txt"
        if not path.is_file():
            raise UserError(f"DWD image list '{path}' is missing (expected one image id per line); {_EXPECTED_LAYOUT}")
        ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
        if not ids:
            raise UserError(f"DWD image list '{path}' is empty")
        return ids

    def split(self, split: str, domain: str) -> VOCDetectionSplit:
        self.check_split(split, domain)
        options = self.options
        if split == "train":
            ids = self.image_ids(domain, options.train_list)
            if options.max_train_images is not None:
                ids = ids[: options.max_train_images]
        else:
            ids = self.image_ids(domain, options.val_list(domain))
        return VOCDetectionSplit(
            self.folder(domain),
            ids,
            self.classes,
            domain,
            min_size=options.min_size,
            max_size=options.max_size,
            flip=options.flip and split == "train",
        )

    def __repr__(self) -> str:
        return f"DiverseWeather(root={str(self.root)!r}, domains={self.domains}, train_domains={self.train_domains})"


def build_dwd(options: DWDOptions, context: Any = None) -> DiverseWeather:
    """Factory registered as dataset ``dwd``."""
    return DiverseWeather(options)


__all__ = [
    "DetectionDataSource",
    "DetectionSample",
    "DiverseWeather",
    "SyntheticDetection",
    "SyntheticDetectionSplit",
    "VOCDetectionSplit",
    "build_dwd",
    "build_synthetic_detection",
    "collate_detection",
    "flip_boxes",
    "instance_boxes",
    "parse_voc_xml",
    "render_detection_scene",
    "resize_scale",
]
