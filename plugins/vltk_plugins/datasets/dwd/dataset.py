"""``dwd``: the Diverse Weather Dataset (Single-DGOD, Wu & Deng CVPR 2022) read from a local VOC-style folder.

As CLIP the Gap uses it: VOC XML annotations, 7 classes, one folder per weather domain. Images are resized as
detectron2 does (shortest side ``min_size``, longest at most ``max_size``); boxes follow, so the IoU-based metrics
are unchanged. VOC's 1-based inclusive pixel boxes become continuous ones with ``x1 = xmin - 1, x2 = xmax``
(detectron2's reading; the original loader instead rewrites the XML files in place, which vltk never does).
Boxes are continuous ``(x1, y1, x2, y2)`` pixel coordinates in the returned image, labels 0-based indices into
``classes``, ``difficult`` the VOC flag (neither trained on nor counted by the evaluator).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from vltk.api import BuildContext, DetectionDataSource, DetectionSample, UserError
from vltk_plugins.datasets.dwd.options import DWD_CLASSES, DWDOptions
from vltk_plugins.datasets.flips import flip_boxes, flip_coin

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
        except Image.DecompressionBombError as error:  # a header claiming e.g. 40000x40000 pixels
            raise UserError(
                f"image '{path}' claims more pixels than PIL decodes safely ({error}); replace the file or resize it"
            ) from None
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
        if self.flip and flip_coin(self.seed, int(i), self.epoch):
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


def build_dwd(options: DWDOptions, context: BuildContext | None = None) -> DiverseWeather:
    """Factory registered as dataset ``dwd``."""
    return DiverseWeather(options)


__all__ = ["DiverseWeather", "VOCDetectionSplit", "build_dwd", "parse_voc_xml", "resize_scale"]
