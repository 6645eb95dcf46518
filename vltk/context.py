"""BuildContext: what the pipeline knows when it builds a component, grown stage by stage and never mutated.

Components are built in one order — backbone, adapter, prompter and augmenters, decoder — because each needs the
facts of the ones before it: an adapter sizes itself to the backbone's width and depth, a decoder to the pyramid's
channels, the number of classes and the adapter's query width, a prompter reaches the backbone's text tower. The
pipeline hands every factory ``(options, context)``: ``options`` is the component's own validated options object
(validated once, in :func:`vltk.config.resolve`), ``context`` is this frozen dataclass. A factory reads the facts
it needs as attributes and states what it requires with :meth:`BuildContext.require`, which raises one clear
error naming the component and the missing facts; the types were checked when the context was made.

Plain Python (no torch), so ``vltk.api`` can export it to entry-point modules.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from vltk.errors import UserError

#: Fields that must be positive integers when given.
_POSITIVE_INTS = (
    "embed_dim",
    "num_layers",
    "patch_size",
    "text_dim",
    "query_dims",
    "channels_a",
    "channels_b",
    "stride_a",
)


@dataclass(frozen=True)
class BuildContext:
    """Facts handed to component factories; ``None`` means "not known at this stage (or not applicable)".

    Set before anything is built: ``task``, ``class_names`` (or only ``num_classes``) and ``ignore_index``.
    After the backbone: ``backbone`` (the built module: prompters use its text tower, detection decoders its
    ``stage_b``/``pool``), ``embed_dim``, ``num_layers``, ``patch_size``, ``has_cls_token``, ``is_vit``,
    ``text_dim`` (width of the image-text space; None for vision-only backbones), ``in_channels`` (per pyramid
    level; a ViT's are all ``embed_dim``), ``strides`` and, for backbones split for detection, ``channels_a``,
    ``channels_b`` and ``stride_a``. After the adapter: ``query_dims`` (width of the adapter's decoder queries,
    Rein's link). After the prompter: ``in_channels`` widened by the score map (DenseCLIP's concatenation).
    """

    task: str = "segmentation"
    class_names: tuple[str, ...] = ()
    num_classes: int | None = None
    ignore_index: int = 255
    backbone: Any = field(default=None, repr=False, compare=False)
    embed_dim: int | None = None
    num_layers: int | None = None
    patch_size: int | None = None
    has_cls_token: bool = True
    is_vit: bool = True
    text_dim: int | None = None
    in_channels: tuple[int, ...] | None = None
    strides: tuple[int, ...] = (4, 8, 16, 32)
    channels_a: int | None = None
    channels_b: int | None = None
    stride_a: int | None = None
    query_dims: int | None = None

    def __post_init__(self) -> None:
        names = tuple(self.class_names)
        if not all(isinstance(name, str) for name in names):
            raise TypeError(f"BuildContext.class_names must be strings, got {names!r}")
        object.__setattr__(self, "class_names", names)
        if self.num_classes is None and names:
            object.__setattr__(self, "num_classes", len(names))
        elif self.num_classes is not None and names and self.num_classes != len(names):
            raise ValueError(f"BuildContext: num_classes={self.num_classes} but {len(names)} class names")
        for key in (*_POSITIVE_INTS, "num_classes"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise TypeError(f"BuildContext.{key} must be a positive int or None, got {value!r}")
        for key in ("has_cls_token", "is_vit"):
            if not isinstance(getattr(self, key), bool):
                raise TypeError(f"BuildContext.{key} must be a bool, got {getattr(self, key)!r}")
        if self.in_channels is None and self.embed_dim is not None:
            object.__setattr__(self, "in_channels", (self.embed_dim,) * len(self.strides))
        elif isinstance(self.in_channels, int):
            object.__setattr__(self, "in_channels", (int(self.in_channels),) * len(self.strides))
        elif self.in_channels is not None:
            object.__setattr__(self, "in_channels", tuple(int(width) for width in self.in_channels))
        object.__setattr__(self, "strides", tuple(int(stride) for stride in self.strides))

    def evolve(self, **changes: Any) -> BuildContext:
        """A copy with ``changes`` applied (the next stage's context); the original is unchanged."""
        return dataclasses.replace(self, **changes)

    def require(self, *facts: str, component: str, hint: str = "") -> None:
        """Raise one :class:`UserError` naming ``component`` and every fact in ``facts`` that is not known."""
        missing = [fact for fact in facts if getattr(self, fact) in (None, ())]
        if missing:
            extra = f"; {hint}" if hint else ""
            raise UserError(
                f"{component} needs {', '.join(missing)} from the build context, which this run lacks{extra}"
            )

    def with_backbone(self, backbone: Any) -> BuildContext:
        """This context plus the facts of a built backbone (what the pipeline does after building it): the
        :class:`vltk.interfaces.Backbone` facts and, for a split backbone, ``channels_a``, ``channels_b`` and
        ``stride_a``."""
        facts: dict[str, Any] = {
            "backbone": backbone,
            "embed_dim": int(backbone.embed_dim),
            "num_layers": int(backbone.num_layers),
            "patch_size": int(backbone.patch_size),
            "has_cls_token": bool(backbone.has_cls_token),
            "is_vit": bool(backbone.is_vit),
            "text_dim": None if backbone.text_dim is None else int(backbone.text_dim),
            "in_channels": tuple(backbone.pyramid_channels()),
            "strides": tuple(int(stride) for stride in backbone.strides),
        }
        for name in ("channels_a", "channels_b", "stride_a"):
            value = getattr(backbone, name, None)
            if value is not None:
                facts[name] = int(value)
        return self.evolve(**facts)

    @classmethod
    def from_backbone(cls, backbone: Any, **facts: Any) -> BuildContext:
        """A context holding ``facts`` and the facts of ``backbone`` (tests, notebooks, ``vltk.create``)."""
        return cls(**facts).with_backbone(backbone)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(item.name for item in dataclasses.fields(cls))

    @classmethod
    def from_facts(cls, facts: dict[str, Any] | None = None, **more: Any) -> BuildContext:
        """A context from keyword facts (``vltk.create``, tests); an unknown key names the valid ones."""
        values = {**(facts or {}), **more}
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise TypeError(f"unknown build-context facts {unknown}; known: {', '.join(cls.field_names())}")
        return cls(**values)


__all__ = ["BuildContext"]
