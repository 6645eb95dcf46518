"""The ``synthetic-captions`` data source: synthetic scenes with generated captions, for ``vltk pretrain``.

Train scenes are layouts ``0..num_train-1`` painted at a free point of the appearance space
(:func:`~.appearance.sample_appearance`), redrawn every epoch together with the caption, so a layout is seen in
many looks and described in many words. Validation scenes are the ``synthetic`` dataset's, painted by the six
named domains' own painters (bit-identical to ``synthetic``): the per-domain zero-shot numbers are measured on
exactly the images the segmentation benchmark evaluates. Every item carries its caption, the index of its
named condition and which countable objects it shows (for zero-shot object classification); no flips, since a
flip would contradict the caption's "on the left".
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from vltk.api import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, IGNORE_INDEX, BuildContext, DenseDataSource
from vltk_plugins.datasets.synthetic.appearance import NAMED_APPEARANCES, paint_appearance, sample_appearance
from vltk_plugins.datasets.synthetic.captioned_options import CaptionedOptions
from vltk_plugins.datasets.synthetic.captions import THINGS, caption, condition_prompts, object_prompts, scene_facts
from vltk_plugins.datasets.synthetic.domains import check_domain, paint_domain
from vltk_plugins.datasets.synthetic.layout import scene_layout
from vltk_plugins.datasets.synthetic.options import SYNTHETIC_DOMAINS, VAL_INDEX_OFFSET

#: The countable classes whose presence every item records, in this order (``objects`` of an item).
OBJECT_CLASSES: tuple[int, ...] = tuple(sorted(THINGS))


class CaptionedSplit(Dataset):
    """``length`` scenes from layout ``offset``: free appearance (``domain=None``) or one named domain's painter."""

    def __init__(
        self, *, seed: int, offset: int, length: int, size: tuple[int, int], domain: str | None, max_objects: int
    ) -> None:
        if domain is not None:
            check_domain(domain)
        self.seed, self.offset, self.length, self.size = seed, offset, length, size
        self.domain, self.max_objects = domain, max_objects
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """A new epoch draws new looks and captions for the same layouts."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, object]:
        if not 0 <= int(i) < self.length:
            raise IndexError(f"index {i} out of range for a split of {self.length} scenes")
        index = self.offset + int(i)
        layout = scene_layout(self.seed, index, self.size)
        words = np.random.default_rng([self.seed, index, self.epoch, 101])
        if self.domain is None:
            look_rng = np.random.default_rng([self.seed, index, self.epoch, 100])
            look = sample_appearance(look_rng)
            image = paint_appearance(layout, look_rng, look)
            facts = scene_facts(layout, look)
            domain = "free"
        else:
            image = paint_domain(layout, self.seed, index, self.domain)
            facts = scene_facts(layout, NAMED_APPEARANCES[self.domain], named=self.domain)
            domain = self.domain
        objects = [1 if facts.counts.get(cls, 0) > 0 else 0 for cls in OBJECT_CLASSES]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "label": torch.from_numpy(layout.label.astype(np.int64)),
            "caption": caption(facts, words, self.max_objects),
            "condition": SYNTHETIC_DOMAINS.index(facts.conditions[0]),
            "objects": torch.tensor(objects, dtype=torch.long),
            "domain": domain,
            "index": index,
        }


class CaptionedScenes(DenseDataSource):
    """``synthetic-captions``: the synthetic layouts with captions; train in the free space, val per named domain."""

    task = "pretrain"
    classes = CITYSCAPES_CLASSES
    palette = CITYSCAPES_PALETTE
    ignore_index = IGNORE_INDEX
    conditions = SYNTHETIC_DOMAINS
    object_classes = tuple(CITYSCAPES_CLASSES[cls] for cls in OBJECT_CLASSES)

    def __init__(self, options: CaptionedOptions | None = None) -> None:
        self.options = options or CaptionedOptions()
        self.domains = tuple(self.options.domains)
        self.train_domains = tuple(self.options.train_domains)
        self.size = self.options.image_size

    def condition_prompts(self, name: str) -> list[str]:
        """Zero-shot prompts of condition ``name`` (one of :attr:`conditions`), for the pretraining metric."""
        return condition_prompts(name)

    def object_prompts(self, i: int, present: bool) -> list[str]:
        """Zero-shot prompts: object class ``object_classes[i]`` is (``present``) or is not in the scene."""
        return object_prompts(OBJECT_CLASSES[i], present)

    def split(self, split: str, domain: str) -> CaptionedSplit:
        self.check_split(split, domain)
        o = self.options
        if split == "train":
            named = None if o.appearance == "free" else domain
            return CaptionedSplit(seed=o.seed, offset=0, length=o.num_train, size=self.size, domain=named,
                                  max_objects=o.max_objects)  # fmt: skip
        return CaptionedSplit(seed=o.seed, offset=VAL_INDEX_OFFSET, length=o.num_val, size=self.size, domain=domain,
                              max_objects=o.max_objects)  # fmt: skip


def build_captioned(options: CaptionedOptions, context: BuildContext | None = None) -> CaptionedScenes:
    """Factory registered as dataset ``synthetic-captions``."""
    return CaptionedScenes(options)


__all__ = ["OBJECT_CLASSES", "CaptionedScenes", "CaptionedSplit", "build_captioned"]
